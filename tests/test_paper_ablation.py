"""Every row of the paper's ablation gets numbers: all seven variants of paper_ablation.yaml through the CLI.

The space is the shipped one; only its scale is overridden (tiny steps, one seed, one
CPU worker per trial, one probe task) and, since this machine has no hub access, its
towers are swapped for the ones the package ships (``--local-towers``: MiniLM for
MedCPT, the tiny GPT-2 for DistilGPT2). The fusion-off rows (``no_fusion``,
``merl_like``) are probed on z_e, their final representation.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_ablate

pytestmark = [pytest.mark.slow, pytest.mark.integration]

VARIANTS = {"full", "no_decode_t", "no_decode_e", "no_rme", "no_fusion", "merl_like", "with_caption"}
TINY = [
    "trial.workers=1", "trial.gpus_per_worker=0", "trial.cpus_per_worker=0.49", "trial.driver_cpus=0.01",
    "probes.datasets=[ptbxl]", "probes.tasks=[ptbxl_super]", "probes.fractions=[1.0]", "probes.seeds=[0]",
    "probes.epochs=5", "probes.report_epochs=1",
    "model.ecg.num_samples=1000", "optim.batch_size=8", "optim.epochs=1", "max_steps_per_epoch=2", "optim.t0=10000",
]  # fmt: skip


@pytest.fixture(scope="module")
def paper_run(short_caches, tmp_path_factory):
    work = tmp_path_factory.mktemp("paper")
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    sets = [f"--set={s}" for s in TINY]
    args = ["--space", "paper_ablation", "--local-towers", "--seeds", "42", "--out", "run", "--caches", *caches, *sets]
    run = run_ablate(args, work)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return work / "run", run


def test_every_variant_of_the_paper_ablation_has_ok_probe_rows(paper_run):
    run_dir, run = paper_run
    assert "7 trials (0 failed)" in run.stdout
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert set(trials["variant"]) == VARIANTS and (trials["state"] == "COMPLETE").all()
    results = pd.read_parquet(run_dir / "results.parquet")
    probes = results[results["eval"] != "pretrain"]
    assert (probes["status"] == "ok").all(), probes[probes["status"] != "ok"]
    for kind, metric in (("linear_probe", "test_auroc"), ("zero_shot", "zero_shot_auroc"),
                         ("report_generation", "bleu1")):  # fmt: skip
        rows = probes[(probes["eval"] == kind) & (probes["metric"] == metric)]
        assert set(rows["variant"]) >= VARIANTS, (kind, set(rows["variant"]))
        assert rows["value"].between(0, 1).all(), kind
    feature = probes[probes["eval"] == "linear_probe"].groupby("variant")["feature"].unique().map(list).to_dict()
    fused = {"full", "no_decode_e", "no_rme", "with_caption"}  # fusion and decode_t on: m_e; otherwise z_e
    assert feature == {**{v: ["m_e"] for v in fused}, **{v: ["z_e"] for v in VARIANTS - fused},
                       "random_init": ["m_e"]}  # fmt: skip
    cap = results[(results["variant"] == "with_caption") & (results["metric"] == "train_cap")]
    assert len(cap) == 1 and cap["value"].item() > 0  # the caption decoder was trained jointly


def test_the_table_has_the_merl_like_and_fusion_off_rows_and_says_which_towers_ran(paper_run):
    run_dir, _ = paper_run
    table = pd.read_csv(run_dir / "tables" / "comparison.csv", keep_default_na=False)
    run_rows = table[table["source"] == "run"]
    assert set(run_rows["variant"]) == VARIANTS | {"random_init"}
    for variant in ("merl_like", "no_fusion"):
        row = run_rows[run_rows["variant"] == variant].iloc[0]
        assert row["feature"] == "z_e" and 0 <= float(row["mean"]) <= 1
    meta = json.loads((run_dir / "sweep.json").read_text())
    assert meta["towers"] == {"text": ["embedded"], "joint_report_decoder": ["tiny"], "probe_report_decoder": "tiny",
                              "local_towers": True}  # fmt: skip

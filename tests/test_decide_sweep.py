"""A real ``decide`` sweep through the CLI: seeds go only where a comparison is undecided; a killed driver resumes.

Two variants and the baseline, probed on PTB-XL superclasses. ``same`` differs from the
baseline by a weight decay 0.1% larger (of 1e-8): its features, and so its validation AUROC,
follow the baseline's seed by seed, its paired differences sit far inside the margin and it
is declared equivalent at its first look. ``cma4`` weighs the ECG-report contrastive term 4x
(the other terms as they are: a different trajectory), so its differences scatter from seed
to seed: it gets more seeds while undecided, up to ``max_seeds``. (Scaling EVERY term alike
would change nothing under AdamW, which is invariant to the gradient's scale.) The driver is
SIGKILLed once the first look is written, and ``--resume`` finishes the sweep.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_ablate, start_ablate, wait_for

from analysis.decisions import DECISIONS_FILE

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPACE = """\
# decide test space: a near no-op variant (equivalent at once) and a reweighted loss (scattered differences)
search: decide
objective: probe
base:
  model.ecg.num_samples: 1000
  optim.batch_size: 8
  optim.epochs: 1
  optim.t0: 10000
  max_steps_per_epoch: 2
variants:
  full: {}
  same: {optim.weight_decay: 1.001e-8}
  cma4: {model.loss.w_cma: 4.0}
seeds: [42]
baseline: full
scheduler: {type: none}
decide: {margin: 0.002, alpha: 0.05, min_seeds: 2, max_seeds: 3}
trial: {workers: 1, gpus_per_worker: 0, cpus_per_worker: 0.49, driver_cpus: 0.01, in_driver: true}
probes: {datasets: [ptbxl], tasks: [ptbxl_super], fractions: [1.0], seeds: [0], epochs: 3, zero_shot: false,
         random_floor: false}
"""


def test_a_decide_sweep_stops_what_is_decided_and_resumes_after_a_driver_kill(short_caches, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    run_dir = tmp_path / "run"
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    args = ["--space", "space.yaml", "--out", "run", "--concurrency", "2", "--caches", *caches]
    plan = run_ablate([*args, "--dry-run"], tmp_path)
    assert plan.returncode == 0 and "first round (2 seeds)" in plan.stdout and "9 trials at most" in plan.stdout

    log = tmp_path / "first.log"
    driver = start_ablate(args, tmp_path, log)
    try:
        wait_for(lambda: (run_dir / DECISIONS_FILE).exists(), "the first reading", timeout=900, driver=driver, log=log)
    finally:
        driver.kill()  # SIGKILL: no clean-up runs
        driver.wait()
    before = pd.read_parquet(run_dir / DECISIONS_FILE)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "trials").glob("*/probes.parquet")}
    assert len(finished) >= 3

    resumed = run_ablate([*args, "--resume"], tmp_path, timeout=1500)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert (trials["state"] == "COMPLETE").all() and trials["trial_id"].is_unique
    seeds = trials.groupby("variant")["seed"].apply(sorted).to_dict()
    assert seeds["same"] == [42, 43]  # equivalent at its first look: no third seed
    decisions = pd.read_parquet(run_dir / DECISIONS_FILE)
    final = decisions.sort_values("step").groupby("variant").tail(1).set_index("variant")
    assert final.loc["same", "decision"] == "equivalent" and final.loc["same", "n_pairs"] == 2
    assert final.loc["same", "ci_low"] > -0.002 and final.loc["same", "ci_high"] < 0.002
    # cma4 gets a seed after each undecided look, up to max_seeds, and the baseline the seeds it pairs with
    n_cma4 = len(seeds["cma4"])
    assert seeds["cma4"] == [42, 43, 44][:n_cma4] and seeds["full"] == seeds["cma4"]
    assert final.loc["cma4", "n_pairs"] == n_cma4
    if final.loc["cma4", "decision"] == "undecided":
        assert n_cma4 == 3 and final.loc["cma4", "seeds_run"] == 3
    looks = decisions[decisions["variant"] == "cma4"]
    assert looks["n_pairs"].tolist() == list(range(2, n_cma4 + 1))  # one look per new pair
    assert (looks["decision"].iloc[:-1] == "undecided").all()  # a seed was added only while undecided
    # every look taken before the kill is in the resumed sweep's log with the same reading (once per pair count)
    reading = ["variant", "decision", "n_pairs", "delta", "ci_low", "ci_high", "p_value", "p_equiv"]
    assert not decisions.duplicated(["variant", "n_pairs"]).any()
    kept = before[reading].merge(decisions[reading], how="left", indicator=True)
    assert (kept["_merge"] == "both").all(), (before[reading], decisions[reading])
    # every finished trial was reused, not redone
    for trial_id, mtime in finished.items():
        assert (run_dir / "trials" / trial_id / "probes.parquet").stat().st_mtime_ns == mtime
    # the objective is validation-only; the report says why each variant stopped and gives test AUROC after the fact
    objective = {r.variant: r.objective for r in trials.itertuples()}
    assert all(0 < v <= 1 for v in objective.values())
    results = pd.read_parquet(run_dir / "results.parquet")
    probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "best_val_auroc")]
    for row in trials.itertuples():
        vals = probes[probes["trial_id"] == row.trial_id]["value"]
        assert row.objective == pytest.approx(vals.mean())
    html = (run_dir / "report.html").read_text()
    assert "Why we stopped" in html and "decided after 2 pairs" in html
    assert json.loads((run_dir / "sweep.json").read_text())["decide"]["max_seeds"] == 3

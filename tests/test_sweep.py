"""A real local sweep through the CLI: Tune + ASHA over Ray Train trials, probes as tasks, tables, report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_ablate

from deri_sweep.data.cache import SignalCache

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPACE = """\
# test space: two variants; 'heavy' multiplies every loss term by 4, so its validation loss is far worse
search: grid
base:
  model.ecg.num_samples: 1000
  optim.batch_size: 8
  optim.epochs: 3
  optim.t0: 10000
  max_steps_per_epoch: 3
variants:
  full: {}
  heavy: {model.loss.w_cma: 4.0, model.loss.w_mix: 4.0, model.loss.w_uma: 4.0, model.loss.w_dec_e: 4.0}
seeds: [42]
baseline: full
scheduler: {type: asha, grace_period: 1, reduction_factor: 2, allow_varying_metric: true}  # a rigged stop
trial: {workers: 2, gpus_per_worker: 0, cpus_per_worker: 0.49, driver_cpus: 0.01}
probes: {datasets: [ptbxl], fractions: [1.0], seeds: [0], epochs: 5, zero_shot: true, random_floor: true}
"""


@pytest.fixture(scope="module")
def sweep_run(short_caches, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    (work / "space.yaml").write_text(SPACE)
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    args = ["--space", "space.yaml", "--out", "run", "--concurrency", "1", "--caches", *caches]
    # the driver's temp dir (short: W&B puts its service socket there), whatever it and Ray leave in it
    temp = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))
    try:
        # W&B offline: WANDB_MODE unset
        run = run_ablate([*args, "--tracker", "mlflow", "--tracker", "wandb"], work, env={"TMPDIR": str(temp)})
        # Ray's own session folders live there too (``ray/``, ``_ray_lockfiles/``: its logs, as documented)
        run.temp_left = sorted(p.name for p in temp.iterdir() if p.name not in ("ray", "_ray_lockfiles"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return work / "run", run


def test_asha_stops_the_worse_variant_and_the_other_is_probed(sweep_run):
    run_dir, _ = sweep_run
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("variant")
    assert trials.loc["full", "state"] == "COMPLETE" and trials.loc["heavy", "state"] == "PRUNED"
    assert trials.loc["heavy", "epochs"] < 3 <= trials.loc["full", "epochs"]
    assert (trials["hours"] > 0).all()
    results = pd.read_parquet(run_dir / "results.parquet")
    probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert set(probes["variant"]) == {"full", "random_init"}  # the pruned trial never reached its probes
    assert set(probes["task"]) == {"ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm"}
    assert probes["value"].between(0, 1).all() and (probes["status"] == "ok").all()
    zero_shot = results[results["metric"] == "zero_shot_auroc"]
    assert len(zero_shot) == 4 and zero_shot["value"].between(0, 1).all()
    full = results[results["trial_id"] == trials.loc["full", "trial_id"]]
    assert full["checkpoint"].str.len().gt(0).all() and full["config_hash"].nunique() == 1
    assert (full["git_commit"].str.len() > 0).all()
    curves = pd.read_parquet(run_dir / "curves.parquet")
    full_val = curves[(curves["trial_id"] == trials.loc["full", "trial_id"]) & (curves["metric"] == "val_total")]
    assert full_val["epoch"].tolist() == [1.0, 2.0, 3.0]


def test_tables_and_report_are_written_and_rebuild_from_files_alone(sweep_run, tmp_path):
    run_dir, run = sweep_run
    for name in (
        "results.csv",
        "tables/comparison.md",
        "tables/comparison.csv",
        "tables/comparison.html",
        "report.html",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert "report" in run.stdout and "tensorboard --logdir" in run.stdout
    comparison = pd.read_csv(run_dir / "tables" / "comparison.csv")
    assert {"full", "random_init"} <= set(comparison["variant"]) and comparison["source"].str.contains(
        "published"
    ).any()
    # no Ray needed: the report is rebuilt from the run directory's files in a fresh process
    (run_dir / "report.html").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "analysis.report", str(run_dir)], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (run_dir / "report.html").stat().st_size > 100_000  # plotly is inlined: works offline


def test_no_report_text_leaks_into_the_run_directory(sweep_run, short_caches):
    run_dir, run = sweep_run
    texts = SignalCache.open(short_caches["mimic"]).reports()["text"].tolist()
    phrases = {t for t in texts if len(t) > 25}
    assert phrases
    leaked = []
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix not in {".pt", ".npy"}:  # the MLflow store and W&B run files included
            data = path.read_bytes().decode("utf-8", errors="ignore")
            leaked += [(str(path), p) for p in phrases if p in data]
    assert not leaked, leaked[:3]
    assert not any(p in run.stdout + run.stderr for p in phrases)
    meta = json.loads((run_dir / "sweep.json").read_text())
    assert meta["space"] == "space" and meta["baseline_variant"] == "full"


def _trial_ids(run_dir) -> dict[str, str]:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    return dict(zip(trials["variant"], trials["trial_id"], strict=True))


def test_mlflow_holds_one_run_per_trial_with_config_curves_probes_and_tags(sweep_run):
    import mlflow

    run_dir, run = sweep_run
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert f"MLflow          mlflow ui --backend-store-uri {uri}" in run.stdout  # the summary says how to open it
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["deri-sweep"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["full-s42", "heavy-s42"], sorted(by_name)  # one run per trial, named variant-seed
    ids = _trial_ids(run_dir)
    curves = pd.read_parquet(run_dir / "curves.parquet")
    git = json.loads((run_dir / "sweep.json").read_text())["git_commit"]
    for variant, record in ((v, by_name[f"{v}-s42"]) for v in ("full", "heavy")):
        tags, params, metrics = record.data.tags, record.data.params, record.data.metrics
        assert tags["sweep_id"] == "run" and tags["git_commit"] == git and tags["trial_id"] == ids[variant]
        assert params["variant"] == variant and params["seed"] == "42" and params["optim.batch_size"] == "8"
        assert float(params["model.loss.w_cma"]) == (4.0 if variant == "heavy" else 1.0)  # the resolved config
        assert metrics["cpu_hours"] > 0 and "val_total" in metrics
        history = [m.value for m in client.get_metric_history(record.info.run_id, "val_total")]
        curve = curves[(curves["trial_id"] == ids[variant]) & (curves["metric"] == "val_total")]["value"]
        assert len(curve) == int(metrics["epoch"]) and set(history) == set(curve)  # every epoch's point, live
    # the probed trial's probe metrics landed in its pretraining run; ASHA stopped 'heavy' before its probes
    full, heavy = by_name["full-s42"].data.metrics, by_name["heavy-s42"].data.metrics
    results = pd.read_parquet(run_dir / "results.parquet")
    auroc = results[(results["trial_id"] == ids["full"]) & (results["eval"] == "linear_probe")
                    & (results["metric"] == "test_auroc") & (results["variant"] == "full")]  # fmt: skip
    for task, cells in auroc.groupby("task"):
        assert full[f"probe/linear_probe/{task}/1/test_auroc"] == pytest.approx(cells["value"].mean())
    assert any(k.startswith("probe/zero_shot/") for k in full) and not any(k.startswith("probe/") for k in heavy)


def test_wandb_writes_one_offline_run_per_trial_and_sends_nothing(sweep_run):
    run_dir, run = sweep_run
    offline = sorted((run_dir / "tune").glob("*/wandb/offline-run-*"))
    assert len(offline) == 2, offline  # one per trial, offline: nothing was sent
    assert not list((run_dir / "tune").glob("*/wandb/run-*"))  # an online run would be named run-*
    assert "W&B (offline)   wandb sync" in run.stdout
    names, files = [], {}
    for folder in offline:
        files[folder] = data = b"".join(p.read_bytes() for p in folder.glob("*.wandb"))
        assert b"optim.lr" in data and b"sweep_id" in data  # the resolved config and the sweep's tags
        # W&B's own log says the run was written to the end, also for the trial ASHA stopped last (its run is
        # finished after Tune's last sync of the trial folders, and copied into the run directory then)
        assert "stream: all finished" in (folder / "logs" / "debug-internal.log").read_text(), folder
        names += [name for name in (b"full-s42", b"heavy-s42") if name in data]
    assert sorted(names) == [b"full-s42", b"heavy-s42"]  # runs named variant-seed
    probed = [data for data in files.values() if b"probe/linear_probe/" in data]
    assert len(probed) == 1  # the probed trial (the other was stopped by ASHA) ...
    assert b"val_total" in probed[0] and b"cpu_hours" in probed[0]  # ... with its curves in the same run


def test_the_sweep_leaves_nothing_in_the_temp_dir(sweep_run):
    """W&B's temporary folders and socket, Ray's dashboard forkserver folders: all gone when the sweep ends.

    Before: ``tmp*wandb-artifacts``, ``tmp*wandb-media`` and ``wandb-<pid>-<pid>-<n>`` per trial, and a
    ``pymp-*`` folder per Ray start, stayed in /tmp.
    """
    _, run = sweep_run
    assert run.temp_left == [], run.temp_left

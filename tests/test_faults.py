"""Faults on a multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

The cluster mirrors clusters/*.yaml: a head that runs no tasks (0 CPUs) and hosts
the sweep's trial drivers (they are pinned there), plus two 1-CPU worker nodes
that run the Train workers and the probe tasks. Nodes are killed without grace,
as a lost spot instance would be, and a fresh node joins in their place.

1. A worker node dies mid-trial: the trial resumes from its checkpoint and ends
   with the same metrics as an uninterrupted run.
2. A trial's checkpoint is corrupt when its workers restart: a clear error, the
   trial is recorded as failed, the sweep goes on.
3. The ablate driver is SIGKILLed mid-sweep: ``--resume`` finishes it; every
   planned trial appears once, finished trials and probes are not run again, and
   the Optuna study has no dangling trial.
4. A probe task's node dies: the task is retried and its result recorded once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import run_ablate, start_ablate, wait_for

from deri_sweep.pretraining import WorkerInfo, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ray = pytest.importorskip("ray")

BASE = """\
base: {model.ecg.num_samples: 1000, optim.batch_size: 8, optim.epochs: 4, optim.t0: 10000, max_steps_per_epoch: 4}
scheduler: {type: none}
trial: {workers: 1, cpus_per_worker: 0.5, driver_cpus: 0, max_failures: 1}
probes: {datasets: [ptbxl], fractions: [1.0], seeds: [0], epochs: 5, zero_shot: false, random_floor: false}
"""
# two trials of one configuration: seed 42 meets a corrupt checkpoint, seed 43 loses its node
GRID_SPACE = "search: grid\nvariants: {full: {}}\nseeds: [42, 43]\nbaseline: full\n" + BASE
OPTUNA_SPACE = (
    "search: optuna\noptuna: {model.loss.w_uma: {type: float, low: 0.5, high: 1.0}}\nnum_samples: 2\nseeds: [42]\n"
    + BASE
)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    from deri_sweep.orchestration.runtime import ray_env_defaults

    ray_env_defaults()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _node_running(cluster, kind: str, name: str) -> str | None:
    """Node id of a live Train worker (``kind="actor"``) or of a running task named ``name``."""
    from ray.util.state import list_actors, list_tasks

    if kind == "actor":
        found = list_actors(address=cluster.address, filters=[("class_name", "=", name), ("state", "=", "ALIVE")])
    else:
        found = list_tasks(address=cluster.address, filters=[("name", "=", name), ("state", "=", "RUNNING")])
    return found[0].node_id if found else None


def _replace_node(cluster, node_id: str) -> None:
    """Kill a worker node without grace (a lost instance) and let a fresh one join."""
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    cluster.add_node(num_cpus=1)


def _checkpoints(trial_storage: Path) -> list[str]:
    """Checkpoints the Train controller has registered (a folder on disk may still be in flight)."""
    snapshot = trial_storage / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["checkpoint_dir_name"] for r in results]


def _args(space: Path, run_dir: Path, cluster, caches: dict[str, Path]) -> list[str]:
    return ["--space", str(space), "--out", str(run_dir), "--concurrency", "1", "--address", cluster.address,
            "--no-report", "--caches", *[f"{k}={v}" for k, v in caches.items()]]  # fmt: skip


def _reference_run(space_yaml: str, cache: Path, seed: int, tmp: Path) -> tuple[dict, Path]:
    """The trial's pretraining run uninterrupted, in this process: final metrics and checkpoint."""
    import yaml

    from deri_sweep.config import from_dict
    from deri_sweep.orchestration.spaces import SearchSpace

    space = from_dict(SearchSpace, {**yaml.safe_load(space_yaml), "name": "reference"})
    cfg = space.train_config({"data.cache": str(cache)}, seed)
    reports: list[dict] = []
    keep = tmp / "reference-checkpoint"

    def report(metrics: dict, directory: Path | None) -> None:
        reports.append(metrics)
        if directory is not None:
            import shutil

            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(directory, keep)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker holding under one CPU: same summation order, same numbers
    try:
        run_worker(cfg, WorkerInfo(0, 1, torch.device("cpu"), 0.5, "cpu"), report)
    finally:
        torch.set_num_threads(threads)
    return reports[-1], keep


@pytest.fixture(scope="module")
def reference(short_caches, tmp_path_factory):
    return _reference_run(GRID_SPACE, short_caches["mimic"], 43, tmp_path_factory.mktemp("reference"))


def test_node_death_resumes_and_a_corrupt_checkpoint_fails_only_its_trial(cluster, short_caches, reference, tmp_path):
    space, run_dir = tmp_path / "grid.yaml", tmp_path / "run"
    space.write_text(GRID_SPACE)
    train = run_dir / "train"
    log = tmp_path / "ablate.log"
    driver = start_ablate(_args(space, run_dir, cluster, short_caches), tmp_path, log)
    try:  # Cluster changes its nodes from the main thread only: the sweep runs in the background
        first = wait_for(lambda: [t for t in train.glob("trial_*") if _checkpoints(t)],
                         "the first trial's first checkpoint")[0]  # fmt: skip
        _replace_node(cluster, wait_for(lambda: _node_running(cluster, "actor", "RayTrainWorker"), "a Train worker"))
        for state in first.glob("checkpoint_*/state.pt"):  # the restarted group finds them all corrupt
            state.write_bytes(state.read_bytes()[:1000])
        wait_for(lambda: [t for t in train.glob("trial_*") if t != first and _checkpoints(t)],
                 "the second trial's first checkpoint")  # fmt: skip
        _replace_node(cluster, wait_for(lambda: _node_running(cluster, "actor", "RayTrainWorker"), "a Train worker"))
        assert driver.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        driver.kill()
    output = log.read_text()
    assert "2 trials (1 failed)" in output and "failed: " in output

    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("seed")
    assert trials.loc[42, "state"] == "FAILED"
    assert "state.pt" in trials.loc[42, "error"] and "corrupt" in trials.loc[42, "error"].lower()
    assert trials.loc[43, "state"] == "COMPLETE" and trials.loc[43, "epochs"] == 4.0

    # the survivor resumed from its checkpoint: at most the epoch in flight was repeated ...
    curves = pd.read_parquet(run_dir / "curves.parquet")
    epochs = curves[(curves["trial_id"] == trials.loc[43, "trial_id"]) & (curves["metric"] == "val_total")]["epoch"]
    assert epochs.max() == 4.0 and len(epochs) <= 5
    # ... and ended where an uninterrupted run ends
    results = pd.read_parquet(run_dir / "results.parquet")
    final = results[(results["trial_id"] == trials.loc[43, "trial_id"]) & (results["eval"] == "pretrain")]
    final = final.set_index("metric")["value"]
    expected, _ = reference
    for key in ("train_total", "val_total", "step"):
        assert final[key] == pytest.approx(expected[key], rel=1e-4), key
    probes = results[(results["trial_id"] == trials.loc[43, "trial_id"]) & (results["eval"] == "linear_probe")]
    assert len(probes[probes["metric"] == "test_auroc"]) == 4 and (probes["status"] == "ok").all()


def test_resume_after_the_driver_is_killed(cluster, short_caches, tmp_path):
    import optuna

    space, run_dir = tmp_path / "optuna.yaml", tmp_path / "run"
    space.write_text(OPTUNA_SPACE)
    args = _args(space, run_dir, cluster, short_caches)
    driver = start_ablate(args, tmp_path, tmp_path / "first.log")
    try:
        first = wait_for(lambda: list((run_dir / "trials").glob("*/probes.parquet")), "the first trial's probes")[0]
        first_id = first.parent.name
        # kill once the second trial has two checkpoints: a restart from scratch would then show
        train = run_dir / "train"
        first_storage = f"trial_{first_id}"
        wait_for(lambda: [t for t in train.glob("trial_*") if t.name != first_storage and len(_checkpoints(t)) >= 2],
                 "two checkpoints of the second trial")  # fmt: skip
    finally:
        driver.kill()  # SIGKILL: no clean-up runs
        driver.wait()
    assert not (run_dir / "trials.parquet").exists()
    finished = {p: p.stat().st_mtime_ns for p in (first.parent / "probes.parquet", first.parent / "trial.json")}
    features = {p: p.stat().st_mtime_ns for p in (run_dir / "features").rglob("*") if p.is_file()}
    assert features

    resumed = run_ablate([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 trials (0 failed)" in resumed.stdout

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and trials["trial_id"].is_unique and (trials["state"] == "COMPLETE").all()
    # finished work was not redone: the first trial's files and every extracted feature are untouched
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert {p: p.stat().st_mtime_ns for p in features} == features
    results = pd.read_parquet(run_dir / "results.parquet")
    keys = ["trial_id", "variant", "task", "eval", "fraction", "probe_seed", "metric"]
    assert not results.duplicated(keys).any()
    probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert probes.groupby("trial_id").size().tolist() == [4, 4]
    # the second trial went on from its checkpoint, not from scratch (that would repeat two epochs)
    second = trials.loc[trials["trial_id"] != first_id, "trial_id"].item()
    curves = pd.read_parquet(run_dir / "curves.parquet")
    epochs = curves[(curves["trial_id"] == second) & (curves["metric"] == "val_total")]["epoch"].tolist()
    assert max(epochs) == 4.0 and len(epochs) <= 5, epochs
    # Optuna: one study trial per planned trial, all told, none left RUNNING or FAILED
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE"], states


def test_a_probe_task_whose_node_dies_is_retried_and_recorded_once(cluster, short_caches, reference):
    from deri_sweep.orchestration.probe_tasks import collect, probe_suite
    from deri_sweep.orchestration.spaces import ProbePlan

    _, checkpoint = reference
    plan = ProbePlan(datasets=["ptbxl"], fractions=[1.0], seeds=[0, 1], epochs=400, zero_shot=False,
                     random_floor=False)  # fmt: skip
    ray.init(address=cluster.address)
    try:
        pending = probe_suite(checkpoint, plan, short_caches, checkpoint.parent / "features")
        victim = wait_for(lambda: _node_running(cluster, "task", "_linear_probe"), "a running probe task", every=0.1)
        _replace_node(cluster, victim)
        table = collect(pending)
    finally:
        ray.shutdown()
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"]
    auroc = table[table["metric"] == "test_auroc"]
    assert len(auroc) == 8 and not auroc.duplicated(["task", "probe_seed"]).any()
    assert np.isfinite(auroc["value"]).all() and auroc["value"].between(0, 1).all()
    from ray.util.state import list_tasks

    attempts = list_tasks(address=cluster.address, filters=[("name", "=", "_linear_probe")], detail=True, limit=1000)
    assert max(t.attempt_number for t in attempts) >= 1, "no probe task was retried"

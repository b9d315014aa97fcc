"""Faults on a multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

The cluster mirrors clusters/*.yaml: a head that runs no tasks (0 CPUs) and hosts
the sweep's trial drivers (they are pinned there), plus two 1-CPU worker nodes
that run the Train workers and the probe tasks. Nodes are killed without grace,
as a lost spot instance would be, and a fresh node joins in their place.

1. A worker node dies mid-trial: the trial resumes from its checkpoint and ends
   with the same metrics as an uninterrupted run, and no temporary checkpoint copy
   (of the killed worker, or one left by an earlier dead worker) survives the sweep.
2. A trial's checkpoint is corrupt when its workers restart: a clear error, the
   trial is recorded as failed, the sweep goes on.
3. A Tune + ASHA + Optuna (TPE, SQLite) sweep prunes a trial, and its driver is
   SIGKILLed mid-sweep: ``--resume`` finishes it; every planned trial appears once
   with the state it had (PRUNED with its intermediate values, COMPLETE with the
   probe objective), finished trials and probes are not run again.
4. A probe task's node dies: the task is retried and its result recorded once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ray_process_env, run_ablate, start_ablate, wait_for

from deri_sweep.train.recipe import WorkerInfo, run_worker

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
# Optuna TPE (SQLite) + ASHA over the CMA weight, which scales the validation loss: with TPE seed 212 the three
# trials sample w_cma 10.1, 36.6 and 3.0, so ASHA stops the second at its first rung and lets the third finish
ASHA = "scheduler: {type: asha, grace_period: 1, reduction_factor: 2, allow_varying_metric: true}"  # a rigged stop
ASHA_OPTUNA_SPACE = (
    "search: optuna\noptuna: {model.loss.w_cma: {type: float, low: 1.0, high: 40.0}}\nnum_samples: 3\n"
    "seeds: [212]\nobjective: probe\n" + BASE.replace("scheduler: {type: none}", ASHA)
)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    from deri_sweep.orchestration.runtime import ray_env_defaults

    ray_env_defaults()
    with ray_process_env():  # for the whole module: nodes are replaced during the tests
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

    from deri_sweep.common.strict_loader import from_dict
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
    import subprocess
    import sys

    from deri_sweep.train.recipe import CKPT_TMP_PREFIX

    space, run_dir = tmp_path / "grid.yaml", tmp_path / "run"
    space.write_text(GRID_SPACE)
    train = run_dir / "train"
    # the nodes' scratch: the Ray session's temp folder, where an earlier worker that was killed left its copy
    scratch = Path(cluster.head_node.get_session_dir_path())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_over = scratch / f"{CKPT_TMP_PREFIX}{int(dead.stdout)}-earlier"
    (left_over / "checkpoint").mkdir(parents=True)
    (left_over / "checkpoint" / "state.pt").write_bytes(b"x" * 100_000)
    log = tmp_path / "ablate.log"
    driver = start_ablate(_args(space, run_dir, cluster, short_caches), tmp_path, log)
    try:  # Cluster changes its nodes from the main thread only: the sweep runs in the background
        first = wait_for(lambda: [t for t in train.glob("trial_*") if _checkpoints(t)],
                         "the first trial's first checkpoint", driver=driver, log=log)[0]  # fmt: skip
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
    assert not list(scratch.glob(f"{CKPT_TMP_PREFIX}*")), list(scratch.iterdir())  # nothing left on the node disks

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


def _study_states(run_dir: Path) -> dict[int, str]:
    import optuna

    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    return {t.number: t.state.name for t in study.trials}


def test_asha_and_optuna_prune_and_a_killed_driver_resumes_without_redoing_anything(cluster, short_caches, tmp_path):
    """Tune + ASHA + Optuna TPE through the CLI; the driver is SIGKILLed mid-sweep and resumed.

    Afterwards the summary's optuna-dashboard command is run on a loopback port and the
    study is read back over HTTP with its trials' states.
    """
    import optuna

    space, run_dir = tmp_path / "asha_optuna.yaml", tmp_path / "run"
    space.write_text(ASHA_OPTUNA_SPACE)
    args = _args(space, run_dir, cluster, short_caches)
    log = tmp_path / "first.log"
    driver = start_ablate(args, tmp_path, log)
    try:
        # the first trial finished with its probes, the second was pruned at its first rung ...
        probed = lambda: list((run_dir / "trials").glob("*/probes.parquet"))  # noqa: E731
        first = wait_for(probed, "the first trial's probes", driver=driver, log=log)[0]
        wait_for(lambda: (run_dir / "stopped_trials.txt").exists(), "ASHA to stop a trial")
        wait_for(lambda: "PRUNED" in _study_states(run_dir).values(), "Optuna to see the pruned trial")
        # ... and the third has two checkpoints: a restart from scratch would show
        first_storage = f"trial_{first.parent.name}"
        train = run_dir / "train"
        wait_for(lambda: [t for t in train.glob("trial_*") if t.name != first_storage and len(_checkpoints(t)) >= 2],
                 "two checkpoints of the third trial")  # fmt: skip
    finally:
        driver.kill()  # SIGKILL: no clean-up runs
        driver.wait()
    before = _study_states(run_dir)
    assert before[0] == "COMPLETE" and before[1] == "PRUNED" and before[2] == "RUNNING", before
    assert not (run_dir / "trials.parquet").exists()
    finished = {p: p.stat().st_mtime_ns for p in (first.parent / "probes.parquet", first.parent / "trial.json")}
    features = {p: p.stat().st_mtime_ns for p in (run_dir / "features").rglob("*") if p.is_file()}
    assert features

    resumed = run_ablate([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3 trials (0 failed)" in resumed.stdout

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    assert len(by_number) == 3  # no extra Optuna trial was started for the resumed one
    states = {n: t.state.name for n, t in by_number.items()}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE"}, states  # the states from before the kill held
    params = {n: t.params["model.loss.w_cma"] for n, t in by_number.items()}
    assert params[1] > params[0] > params[2], params  # the sampled weights the space was designed on
    weights = trials["param/model.loss.w_cma"]
    trials["number"] = [next(n for n, p in params.items() if p == pytest.approx(w)) for w in weights]
    by_trial = trials.set_index("number")
    assert by_trial.loc[1, "state"] == "PRUNED" and by_trial.loc[1, "epochs"] == 1.0
    assert set(by_number[1].intermediate_values) == {1}  # its validation loss at the rung that stopped it
    for n in (0, 2):  # finished trials: COMPLETE in both, with the probe objective (mean validation AUROC)
        assert by_trial.loc[n, "state"] == "COMPLETE" and by_trial.loc[n, "epochs"] == 4.0
        assert by_number[n].value == pytest.approx(by_trial.loc[n, "objective"]) and 0 < by_number[n].value <= 1
    assert sorted(by_number[0].intermediate_values) == [1, 2, 3, 4]  # one validation loss per epoch
    # the resumed trial: the epochs after its checkpoint reached Optuna; the one in flight at the kill may not have
    assert {3, 4} <= set(by_number[2].intermediate_values) <= {1, 2, 3, 4}, by_number[2].intermediate_values
    # finished work was not redone: the first trial's files and every extracted feature are untouched
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert {p: p.stat().st_mtime_ns for p in features} == features
    results = pd.read_parquet(run_dir / "results.parquet")
    keys = ["trial_id", "variant", "task", "eval", "fraction", "probe_seed", "metric"]
    assert not results.duplicated(keys).any()
    probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert probes.groupby("trial_id").size().tolist() == [4, 4]  # the pruned trial was never probed
    # the third trial went on from its checkpoint, not from scratch (that would repeat two epochs)
    third_id = by_trial.loc[2, "trial_id"]
    curves = pd.read_parquet(run_dir / "curves.parquet")
    epochs = curves[(curves["trial_id"] == third_id) & (curves["metric"] == "val_total")]["epoch"].tolist()
    assert max(epochs) == 4.0 and len(epochs) <= 5, epochs
    _dashboard_shows_the_study(resumed.stdout, run_dir.name, {0: "Complete", 1: "Pruned", 2: "Complete"})


def _dashboard_shows_the_study(summary: str, study_name: str, states: dict[int, str]) -> None:
    """Run the summary's ``optuna-dashboard`` command on a free loopback port; the study and states must show."""
    import socket
    import subprocess
    import sys
    import urllib.request

    line = next(line for line in summary.splitlines() if line.strip().startswith("Optuna "))
    command = line.split(None, 1)[1].split()
    assert command[0] == "optuna-dashboard" and len(command) == 2, line  # installed: no "pip install" first
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executable = str(Path(sys.executable).with_name("optuna-dashboard"))
    server = subprocess.Popen([executable, command[1], "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip

    def get(path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            return None

    try:
        studies = wait_for(lambda: get("/api/studies"), "optuna-dashboard to answer", timeout=60)["study_summaries"]
        study = next(s for s in studies if s["study_name"] == study_name)
        detail = get(f"/api/studies/{study['study_id']}")
        assert {t["number"]: t["state"] for t in detail["trials"]} == states, detail["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_probe_task_whose_node_dies_is_retried_and_recorded_once(cluster, short_caches, reference):
    from deri_sweep.orchestration.probe_jobs import collect, probe_suite
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

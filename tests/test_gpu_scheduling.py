"""GPU scheduling on a simulated GPU cluster: where set-up, training and probing run, and when.

A ``ray.cluster_utils.Cluster`` with a CPU-only head and two nodes declaring 4 GPUs each, under
``DERI_SIMULATED_GPUS=1``: Ray schedules the GPUs as on a real cluster (placement groups, GPU
ids, fractional probe tasks) while the Train workers use gloo and CPU tensors. Every task
records its node (``RUN_DIR/placement/``); the tests read those records, ``trial.json`` and
``placement.csv``, as a user would.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import ray_process_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: 4 trials of 4 workers x 1 GPU, tiny: one step of batch 2 per worker; one probe task pair per trial
SPACE = """\
search: grid
variants: {full: {}}
seeds: [1, 2, 3, 4]
baseline: full
base: {model.ecg.num_samples: 1000, optim.batch_size: 2, optim.epochs: 1, optim.t0: 10000, max_steps_per_epoch: 1}
scheduler: {type: none}
trial: {workers: 4, gpus_per_worker: 1, cpus_per_worker: 0.25, driver_cpus: 0.01, max_failures: 0}
probes: {datasets: [ptbxl], tasks: [ptbxl_super], fractions: [1.0], seeds: [0], epochs: 1, zero_shot: false,
         random_floor: false, gpus: 0.25, cpus: 0.5}
"""


@pytest.fixture()
def fresh_mimic(short_caches, tmp_path) -> Path:
    """A copy of the pretraining cache without text features (the sweep's set-up must build them)."""
    copy = tmp_path / "shared" / "mimic"
    shutil.copytree(short_caches["mimic"], copy, ignore=shutil.ignore_patterns(".*", "text_features"))
    return copy


@pytest.fixture()
def simulated(monkeypatch):
    """The simulated-GPU switch, in this process and every Ray process it starts."""
    from deri_sweep.orchestration.runtime import SIMULATED_GPUS_ENV, ray_env_defaults

    ray_env_defaults()
    monkeypatch.setenv(SIMULATED_GPUS_ENV, "1")
    with ray_process_env():
        yield


def _space(mimic: Path):
    import yaml

    from deri_sweep.common.strict_loader import from_dict
    from deri_sweep.orchestration.spaces import SearchSpace

    data = yaml.safe_load(SPACE)
    data["base"]["data.cache"] = str(mimic)
    return from_dict(SearchSpace, data)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "placement").glob("*.json"))]


def _add_gpu_nodes(cluster, tmp_path: Path) -> list[str]:
    from deri_sweep.data.staging import LOCAL_DISK_ENV

    nodes = [
        cluster.add_node(num_cpus=2, num_gpus=4, env_vars={LOCAL_DISK_ENV: str(tmp_path / f"nvme-{i}")})
        for i in range(2)
    ]
    return [n.node_id for n in nodes]


def test_trials_pack_one_node_setup_and_probes_on_gpu_nodes_next_trial_trains_while_one_probes(
    simulated, fresh_mimic, short_caches, tmp_path
):
    import ray
    from ray.cluster_utils import Cluster

    from deri_sweep.orchestration.results import sweep_gpu_hours, write_placement, write_tables
    from deri_sweep.orchestration.sweep import run_sweep

    space = _space(fresh_mimic)
    caches = {"mimic": fresh_mimic, "ptbxl": short_caches["ptbxl"]}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        gpu_nodes = set(_add_gpu_nodes(cluster, tmp_path))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        grid = run_sweep(space, tmp_path / "run", caches, run_id="run", concurrency=1)  # one trial trains at a time
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not [r.error for r in grid if r.error is not None]
    write_tables(tmp_path / "run", "run")
    run_dir = tmp_path / "run"
    records = _records(run_dir)
    trials = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("trials/*/trial.json")}
    assert len(trials) == 4 and (pd.read_parquet(run_dir / "trials.parquet")["state"] == "COMPLETE").all()

    # every trial's 4 workers share one GPU node (STRICT_PACK), each with its own GPU
    for summary in trials.values():
        workers = summary["placement"]["workers"]
        assert summary["placement_strategy"] == "STRICT_PACK" and len(workers) == 4
        assert len(summary["placement"]["nodes"]) == 1 and summary["placement"]["nodes"][0] in gpu_nodes
        assert len({w["gpu_ids"][0] for w in workers}) == 4

    # the text-feature build and every probe task ran on a GPU node, holding a GPU (fraction)
    builds = [r for r in records if r["kind"] == "build"]
    assert len(builds) == 1 and builds[0]["node_id"] in gpu_nodes and builds[0]["gpu_ids"]
    probes = [r for r in records if r["kind"] == "probe"]
    assert len(probes) == 2 * 4 and all(r["node_id"] in gpu_nodes and r["gpu_ids"] for r in probes)

    # each GPU node was staged once, before the first trial's workers trained there
    stages = [r for r in records if r["kind"] == "stage"]
    assert sorted(r["node_id"] for r in stages) == sorted(gpu_nodes) and all(r["staged"] for r in stages)
    for stage in stages:
        trained = [r["time"] for r in records if r["kind"] == "train_worker" and r["node_id"] == stage["node_id"]]
        assert not trained or stage["time"] < min(trained)

    # one trial trains at a time (--concurrency 1), yet a finished trial probed while the next one trained
    lines = sorted((s["timeline"] for s in trials.values()), key=lambda t: t["fit_start"])
    assert all(a["fit_end"] <= b["fit_start"] for a, b in itertools.pairwise(lines))
    assert any(
        a["probe_start"] < b["fit_end"] and b["fit_start"] < a["probe_end"] for a, b in itertools.pairwise(lines)
    )

    # every probe row is there and ok; GPU-hours and the placement table are where a user looks
    results = pd.read_parquet(run_dir / "results.parquet")
    rows = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert len(rows) == 4 and (rows["status"] == "ok").all() and rows["trial_id"].nunique() == 4
    hours = sweep_gpu_hours(run_dir)  # what ablate writes into sweep.json and its summary
    assert len(hours["per_trial"]) == 4 and all(
        t["training"] > 0 and t["probing"] > 0 for t in hours["per_trial"].values()
    )
    table = pd.read_csv(write_placement(run_dir))
    assert set(table["kind"]) == {"build", "stage", "train_worker", "probe"} and len(table) == len(records)


def test_setup_waits_for_gpu_nodes_instead_of_running_on_the_head(simulated, fresh_mimic, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from deri_sweep.orchestration.sweep import prebuild_text_features, stage_pretraining_caches

    space = _space(fresh_mimic)
    run_dir = tmp_path / "run"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})  # CPUs the build could use
    ray.init(address=cluster.address)
    try:
        done: dict[str, float] = {}

        def set_up() -> None:
            done["build_s"] = prebuild_text_features(space, str(run_dir))
            done["stage_s"] = stage_pretraining_caches(space, str(run_dir))

        worker = threading.Thread(target=set_up, daemon=True)
        worker.start()
        time.sleep(4)  # set-up has begun: its GPU task waits, nothing built or staged on the head meanwhile
        assert worker.is_alive() and not (run_dir / "placement").exists()
        assert not list(fresh_mimic.glob("text_features/*/meta.json"))
        added = time.time()
        gpu_nodes = set(_add_gpu_nodes(cluster, tmp_path))
        worker.join(timeout=120)
        assert not worker.is_alive() and done["build_s"] > 4
    finally:
        ray.shutdown()
        cluster.shutdown()
    records = _records(run_dir)
    builds = [r for r in records if r["kind"] == "build"]
    assert len(builds) == 1 and builds[0]["node_id"] in gpu_nodes and builds[0]["started"] >= added
    stages = [r for r in records if r["kind"] == "stage"]
    assert stages and all(r["node_id"] in gpu_nodes and r["staged"] and r["started"] >= added for r in stages)
    assert len({r["node_id"] for r in stages}) == len(stages)  # once per node
    assert os.listdir(tmp_path / "nvme-0") or os.listdir(tmp_path / "nvme-1")  # a node-local copy exists

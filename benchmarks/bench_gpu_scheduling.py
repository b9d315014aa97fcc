"""Idle-but-held GPU-hours of a sweep on a simulated GPU cluster: today's scheduling vs training slots.

A ``ray.cluster_utils.Cluster`` with a CPU-only head and two nodes declaring 4 GPUs each
(``DERI_SIMULATED_GPUS=1``: Ray schedules the GPUs, workers compute on the CPU), and the same
space twice (4 trials of 4 workers x 1 GPU, text features to build, staging on, probes):

- before (the scheduling this replaces): trials in flight capped at what the GPUs fit
  (``in_flight == concurrency``), so a probing trial keeps its Tune slot, i.e. its GPUs' share,
  and its probes ask for 0.25 CPU and no GPU;
- after: ``concurrency`` trials train at once (training slots), twice as many in flight, probes
  on a 0.25 GPU fraction; a trial's GPUs are held only while it fits.

Both runs use the same ``concurrency`` (what the GPUs fit: 2). Idle-but-held GPU-hours are
``sweep.json``'s definition (:func:`deri_sweep.orchestration.results.trial_gpu_hours`). The
script prints each run's totals and the placement trace of the second run (where each build,
stage, train-worker and probe task ran).

Usage: ``python benchmarks/bench_gpu_scheduling.py [--quick]`` (``--quick``: 2 trials). The last
line is ``ratio: X``: idle-but-held GPU-hours before over after. The machine may be shared:
wall times are noisy, and so are these hours (they are wall spans).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["DERI_SIMULATED_GPUS"] = "1"

import yaml

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


def _caches(root: Path) -> dict[str, Path]:
    from deri_sweep.data.prepare import PrepareOptions, prepare
    from deri_sweep.data.signal import SignalOptions
    from deri_sweep.data.synth import write_all

    write_all(root / "synth", seed=7, sizes={"mimic": 800, "ptbxl": 160, "cpsc2018": 20, "csn": 20}, defect_rate=0.0)
    short = SignalOptions(length=1000, window=1000)
    out = {}
    for name, folder in (("mimic", "mimic-iv-ecg"), ("ptbxl", "ptb-xl")):
        prepare(root / "synth" / folder, root / "caches" / name, PrepareOptions(name, short, shard_size=128,
                                                                                  progress=False))  # fmt: skip
        out[name] = root / "caches" / name
    return out


def _run(label: str, root: Path, caches: dict[str, Path], quick: bool, before: bool) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from deri_sweep.common.strict_loader import from_dict
    from deri_sweep.data.staging import LOCAL_DISK_ENV
    from deri_sweep.orchestration.results import sweep_gpu_hours, write_placement
    from deri_sweep.orchestration.spaces import SearchSpace
    from deri_sweep.orchestration.sweep import run_sweep

    mimic = root / label / "mimic"  # a fresh copy: each run builds its text features and stages
    shutil.copytree(caches["mimic"], mimic, ignore=shutil.ignore_patterns(".*", "text_features"))
    data = yaml.safe_load(SPACE)
    data["base"]["data.cache"] = str(mimic)
    if quick:
        data["seeds"] = [1, 2]
    space = from_dict(SearchSpace, data)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for i in range(2):
        cluster.add_node(num_cpus=2, num_gpus=4, env_vars={LOCAL_DISK_ENV: str(root / label / f"nvme-{i}")})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    started = time.perf_counter()
    try:
        kwargs = {"in_flight": 2, "probe_resources": {"num_cpus": 0.25, "num_gpus": 0.0}} if before else {}
        run_sweep(space, root / label / "run", {**caches, "mimic": mimic}, run_id=label, concurrency=2, **kwargs)
    finally:
        ray.shutdown()
        cluster.shutdown()
    wall = time.perf_counter() - started
    run_dir = root / label / "run"
    write_placement(run_dir)
    hours = sweep_gpu_hours(run_dir)
    print(f"{label}: wall {wall:.0f} s; GPU-hours {hours['total']}")
    for trial, values in hours["per_trial"].items():
        print(f"  {trial}: {values}")
    return {"hours": hours, "run_dir": run_dir}


def main() -> None:
    """Run both schedules and print the ratio of idle-but-held GPU-hours."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 trials instead of 4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-sched-"))
    try:
        caches = _caches(root)
        before = _run("before", root, caches, args.quick, before=True)
        after = _run("after", root, caches, args.quick, before=False)
        print("placement trace (after):")
        import pandas as pd

        table = pd.read_csv(after["run_dir"] / "placement.csv")
        t0 = table["time"].min()
        for row in table.itertuples(index=False):
            what = "/".join(str(x) for x in (row.trial, row.rank, row.eval, row.task) if isinstance(x, str) or x == x)
            print(f"  +{row.time - t0:6.1f}s {row.kind:<12s} node {str(row.node_id)[:8]} gpus [{row.gpu_ids}] {what}")
        idle_before = before["hours"]["total"]["idle_held"]
        idle_after = after["hours"]["total"]["idle_held"]
        print(f"idle-but-held GPU-hours: before {idle_before:.4f}, after {idle_after:.4f}")
        print(f"ratio: {idle_before / max(idle_after, 1e-9):.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

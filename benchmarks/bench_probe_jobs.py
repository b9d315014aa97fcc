"""Probe jobs of one checkpoint as Ray tasks: one task per label set (all its heads together) vs one per head.

A trial's linear probes cover every (label set, training fraction, probe seed). Both paths
run them as Ray tasks on a local Ray (2 CPUs, each task asking for the same 0.25 CPU a
trial's probes ask for), on the same frozen features of the same synthetic PTB-XL cache
(extracted once, before any timing, and passed to every task as one shared object):

- ours (``probe_jobs.probe_suite``): one ``_linear_probe`` task per label set, which trains
  the heads of every fraction and seed together as one batched run
  (``run_linear_probes``: each head gets exactly the batches and updates it would get
  alone);
- baseline, what ``probe_suite`` did before: one ``_linear_probe`` task per (label set,
  fraction, seed), each training one head.

The plan is the default run's (``search_spaces/smoke.yaml``): four label sets, fractions
10% and 100%, three probe seeds, 100 epochs, for the pretrained encoder and its random-init
floor (two feature sets), i.e. 48 heads. Ray's worker processes are started by a warm-up
round before any timing, and the baseline is timed before and after ours (its mean is
used), so that a drift in background load hits both. The script also checks that the two
paths give the same test AUROC for every head.

Usage: ``python benchmarks/bench_probe_jobs.py [--quick] [--records N] [--epochs E]``.
The last line is ``ratio: X``: the baseline's wall time over ours.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import ray

from deri_sweep.common.strict_loader import apply_overrides
from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.synth import write_all
from deri_sweep.evaluate.features import RandomInit, cached_features
from deri_sweep.evaluate.probe_tasks import tasks_of_cache
from deri_sweep.orchestration import probe_jobs
from deri_sweep.orchestration.runtime import init_ray
from deri_sweep.train.train_config import TrainConfig

FRACTIONS = [0.1, 1.0]
SEEDS = [0, 1, 2]
TEXT_HIDDEN = 384  # the embedded MiniLM tower


def build_features(tmp: Path, records: int, length: int) -> tuple[str, list[str], list[np.ndarray]]:
    """A synthetic PTB-XL cache and two feature sets of it (two random-init encoders: the trained one and its floor).

    Returns:
        ``(cache_dir, label_sets, [features (N, D) per encoder])``.
    """
    write_all(tmp / "synth", seed=0, sizes={"ptbxl": records}, datasets=("ptbxl",))
    options = PrepareOptions(
        "ptbxl", signal=SignalOptions(length=length, window=length), shard_size=256, workers=1, progress=False
    )
    prepare(tmp / "synth" / "ptb-xl", tmp / "cache", options)
    cache = SignalCache.open(tmp / "cache")
    config = apply_overrides(TrainConfig(), [f"model.ecg.num_samples={length}"])
    features = [
        cached_features(RandomInit(seed, config, TEXT_HIDDEN), tmp / "cache", "mix", tmp / "features", progress=False)
        for seed in (0, 1)
    ]
    return str(tmp / "cache"), [t.label_set for t in tasks_of_cache(cache)], features


def run(
    refs: list[ray.ObjectRef], cache_dir: str, label_sets: list[str], epochs: int, *, per_head: bool
) -> tuple[float, pd.DataFrame]:
    """Submit every head of the plan, wait for all; ``(wall seconds, headline rows)``."""
    task = ray.remote(probe_jobs._linear_probe).options(num_cpus=probe_jobs.ProbeResources().num_cpus)
    start = time.perf_counter()
    pending = []
    for encoder, features in enumerate(refs):
        for label_set in label_sets:
            groups = [([f], [s]) for f in FRACTIONS for s in SEEDS] if per_head else [(FRACTIONS, SEEDS)]
            for fractions, seeds in groups:
                pending.append((encoder, task.remote(features, cache_dir, label_set, fractions, seeds, epochs)))
    frames = [ray.get(ref).assign(encoder=encoder) for encoder, ref in pending]
    wall = time.perf_counter() - start
    table = pd.concat(frames, ignore_index=True)
    table = table[table["metric"] == "test_auroc"]
    return wall, table.set_index(["encoder", "task", "fraction", "probe_seed"])["value"].sort_index()


def main(argv: list[str] | None = None) -> int:
    """Time both paths on the same features and print ``ratio: X``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 records and 30 epochs (under a minute)")
    parser.add_argument("--records", type=int, default=None, help="PTB-XL records (default 600, the default run's)")
    parser.add_argument("--epochs", type=int, default=None, help="probe epochs (default 100, the reference)")
    parser.add_argument("--length", type=int, default=1000, help="samples per signal (default 1000: 100 Hz x 10 s)")
    args = parser.parse_args(argv)
    records = args.records or (300 if args.quick else 600)
    epochs = args.epochs or (30 if args.quick else 100)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-probe-jobs-") as tmp:
        cache_dir, label_sets, features = build_features(Path(tmp), records, args.length)
        init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            refs = [ray.put(f) for f in features]
            run(refs, cache_dir, label_sets[:1], 1, per_head=True)  # warm-up: Ray starts its worker processes
            base_before, base_values = run(refs, cache_dir, label_sets, epochs, per_head=True)
            ours, our_values = run(refs, cache_dir, label_sets, epochs, per_head=False)
            base_after, _ = run(refs, cache_dir, label_sets, epochs, per_head=True)
        finally:
            ray.shutdown()
    heads = len(our_values)
    baseline = (base_before + base_after) / 2
    diff = float(np.abs(our_values.to_numpy() - base_values.reindex(our_values.index).to_numpy()).max())
    print(f"plan: {len(features)} encoders x {len(label_sets)} label sets x {len(FRACTIONS)} fractions x "
          f"{len(SEEDS)} seeds = {heads} heads, {epochs} epochs, {records} records")  # fmt: skip
    print(f"one task per head (baseline): {base_before:.1f} s before ours, {base_after:.1f} s after "
          f"({heads} tasks)")  # fmt: skip
    print(f"one task per label set (ours): {ours:.1f} s ({len(features) * len(label_sets)} tasks)")
    print(f"same test AUROC for every head: max |difference| {diff:.2e}")
    print(f"ratio: {baseline / ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

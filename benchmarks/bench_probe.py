"""Linear-probe suite of one checkpoint: cached frozen features against the reference protocol.

Both paths probe the same synthetic PTB-XL cache (every label set: super, sub, form,
rhythm) at the same training fractions and probe seeds, with the same head
hyper-parameters (``ProbeConfig``: ``Linear(D, C)``, BCE, batches of 16, AdamW lr 0.01,
weight decay 1e-4, ``--epochs`` epochs, 100 by default as in the spec), on the same
randomly initialised DERI (``random_init``; timing does not depend on the weights):

- ours, measured IN FULL: the frozen features of every record are computed once
  (``cached_features``: encoder forward in eval mode under ``no_grad``, written to the
  on-disk feature store), then ``run_linear_probes`` trains every task's heads on them
  (per-epoch val/test scoring included);
- reference: the frozen encoder (eval mode, ``no_grad``) runs on every training batch
  of every epoch: a ``DataLoader`` over ``CacheDataset`` yields shuffled batches of 16
  signals, the encoder computes their feature, and a ``torch.nn.Linear`` head takes one
  ``torch.optim.AdamW`` step on BCE-with-logits. Running the whole suite this way takes
  hours on a CPU, so ``--ref-epochs`` epochs of the LARGEST head (first task, fraction
  1.0, first seed) are timed and extrapolated linearly to the suite's training work:
  sum over (task, fraction, seed) of ``epochs x batches`` (per-batch cost) or
  ``epochs x records`` (per-record cost). The smaller of the two estimates is the
  reference time (the per-record one is smaller when small fractions have short
  batches). The reference epochs are split before and after our run so that a drift in
  background load hits both paths. Re-embedding val and test after every epoch, which
  the reference protocol would also need to select the epoch, is NOT counted in the
  ratio (it is printed as an extra line), so the ratio is a lower bound.

Both paths use the same torch intra-op threads (``--threads``, default all cores) for
the encoder; the probe heads use ``ProbeConfig.threads`` (1). ``OMP_WAIT_POLICY=PASSIVE``
is set unless already set (spinning OpenMP threads distort timings on a shared machine).

Usage: ``python benchmarks/bench_probe.py [--quick] [--records N] [--length L] [--epochs E]``.
The last line is ``ratio: X``: the reference's extrapolated suite time over ours
(extraction + probes). Target >= 50x.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (see the module docstring); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from deri_sweep.common.strict_loader import apply_overrides
from deri_sweep.data.cache import CacheDataset, SignalCache, keep_batch
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.synth import write_all
from deri_sweep.evaluate.features import RandomInit, cached_features
from deri_sweep.evaluate.linear_probe import ProbeConfig
from deri_sweep.evaluate.pretrained import random_init
from deri_sweep.evaluate.probe_tasks import Task, run_linear_probes, task_rows, tasks_of_cache
from deri_sweep.model.deri import DERI
from deri_sweep.train.train_config import TrainConfig

#: Text hidden size of the features-only DERI (the embedded MiniLM tower).
TEXT_HIDDEN = 384
#: Weight seed of the random-init model.
MODEL_SEED = 0


def build_cache(tmp: Path, records: int, length: int) -> SignalCache:
    """Write a synthetic PTB-XL root of ``records`` records and prepare it with ``length``-sample signals."""
    write_all(tmp / "synth", seed=0, sizes={"ptbxl": records}, datasets=("ptbxl",))
    options = PrepareOptions(
        "ptbxl", signal=SignalOptions(length=length, window=length), shard_size=256, workers=1, progress=False
    )
    prepare(tmp / "synth" / "ptb-xl", tmp / "cache", options)
    return SignalCache.open(tmp / "cache")


def run_ours(
    config: TrainConfig,
    cache: SignalCache,
    tasks: list[Task],
    fractions: list[float],
    seeds: list[int],
    probe: ProbeConfig,
    feature_root: Path,
) -> tuple[float, float, pd.DataFrame]:
    """Features once, then every task's probes; returns (extraction s, probes s, tidy results)."""
    start = time.perf_counter()
    features = cached_features(
        RandomInit(MODEL_SEED, config, TEXT_HIDDEN),
        cache.root,
        config.model.probe.feature,
        feature_root,
        progress=False,
    )
    extract = time.perf_counter() - start
    start = time.perf_counter()
    frames = [run_linear_probes(features, cache, task, fractions, seeds, probe) for task in tasks]
    probes = time.perf_counter() - start
    return extract, probes, pd.concat(frames, ignore_index=True)


def run_reference(
    model: DERI,
    cache: SignalCache,
    task: Task,
    rows: np.ndarray,
    epochs: int,
    probe: ProbeConfig,
    feature: str,
    norm: str,
    seed: int,
) -> tuple[float, int, int]:
    """The reference protocol on one head: encoder forward on every batch of ``epochs`` epochs.

    Returns:
        ``(seconds, batches, records)`` of the timed epochs.
    """
    labels = torch.from_numpy(cache.labels(task.label_set).astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        CacheDataset(cache, rows, norm),
        batch_size=probe.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=keep_batch,
        num_workers=0,
    )
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(model.cfg.token.dim if feature != "resnet" else 512, labels.shape[1])
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=probe.lr, betas=probe.betas, eps=probe.eps, weight_decay=probe.weight_decay
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = records = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            with torch.no_grad():
                x = model.encode_ecg(batch["ecg"], feature)  # (B, D): the frozen encoder, every batch
            loss = loss_fn(head(x), labels[batch["row"]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batches += 1
            records += len(x)
    return time.perf_counter() - start, batches, records


def suite_work(results: pd.DataFrame, epochs: int, batch_size: int) -> tuple[int, int, int, int]:
    """Training batches, training records and val+test records of the whole suite over all epochs.

    Counts come from our run's ``n_train``/``n_val``/``n_test`` rows (one per task, fraction, seed).
    """
    wide = results[results["metric"].isin(["n_train", "n_val", "n_test"])].pivot_table(
        index=["task", "fraction", "probe_seed"], columns="metric", values="value"
    )
    n_train = wide["n_train"].to_numpy(int)
    batches = epochs * sum(math.ceil(n / batch_size) for n in n_train)
    evals = epochs * int((wide["n_val"] + wide["n_test"]).sum())
    return len(wide), batches, epochs * int(n_train.sum()), evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer records and shorter signals (under a minute)")
    parser.add_argument(
        "--records", type=int, default=0, help="synthetic PTB-XL records (default 240 quick, 1000 full)"
    )
    parser.add_argument(
        "--length", type=int, default=0, help="signal samples per record (default 1250 quick, 5000 full)"
    )
    parser.add_argument("--epochs", type=int, default=100, help="probe epochs of the suite (spec: 100)")
    parser.add_argument(
        "--ref-epochs", type=int, default=2, help="reference epochs actually timed (split before and after ours)"
    )
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="training fractions of every task"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="probe seeds of every (task, fraction)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads for the encoder (default: all cores)"
    )
    args = parser.parse_args()
    records = args.records or (240 if args.quick else 1000)
    length = args.length or (1250 if args.quick else 5000)
    ref_epochs = max(1, args.ref_epochs)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    logging.getLogger("deri_sweep").setLevel(logging.ERROR)  # tiny synthetic val splits warn; timing only
    probe = ProbeConfig(epochs=args.epochs)
    config = apply_overrides(TrainConfig(), [f"model.ecg.num_samples={length}"])
    feature = config.model.probe.feature

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = build_cache(tmp, records, length)
        tasks = tasks_of_cache(cache)
        model = random_init(config, TEXT_HIDDEN, MODEL_SEED)

        # the reference's largest head: first task, all training rows (fraction 1.0), first seed
        task, seed = tasks[0], args.seeds[0]
        rows = task_rows(cache.labels(task.label_set), cache.index["split"].to_numpy(str), 1.0, seed)["train"]
        with torch.no_grad():  # warm-up forward, untimed (first-call allocations)
            model.encode_ecg(cache.signals(np.arange(min(len(cache), probe.batch_size))), feature)
        first = ref_epochs // 2
        measured = [
            run_reference(model, cache, task, rows, first, probe, feature, config.data.norm, seed) if first else None
        ]
        extract, probes, results = run_ours(config, cache, tasks, args.fractions, args.seeds, probe, tmp / "features")
        measured.append(
            run_reference(model, cache, task, rows, ref_epochs - first, probe, feature, config.data.norm, seed)
        )
        ref_s, ref_b, ref_r = (sum(m[i] for m in measured if m) for i in range(3))

    heads, suite_batches, suite_records, eval_records = suite_work(results, args.epochs, probe.batch_size)
    per_batch, per_record = ref_s / ref_b, ref_s / ref_r
    by_batch, by_record = per_batch * suite_batches, per_record * suite_records
    reference = min(by_batch, by_record)
    ours = extract + probes
    print(f"records: {len(cache)} ({length} samples each), feature {feature!r}, {threads} torch thread(s)")
    print(
        f"suite: {len(tasks)} tasks x {len(args.fractions)} fractions x {len(args.seeds)} seeds = {heads} heads, "
        f"{args.epochs} epochs, batch {probe.batch_size}: {suite_batches:,} training batches, "
        f"{suite_records:,} training records"
    )
    print(f"{'path':<44}{'seconds':>12}")
    print(f"{'ours: feature extraction (once)':<44}{extract:>12.2f}")
    print(f"{'ours: probes (all heads, all epochs)':<44}{probes:>12.2f}")
    print(f"{'ours: total (measured in full)':<44}{ours:>12.2f}")
    print(
        f"{f'reference: measured ({ref_epochs} ep x {ref_b // ref_epochs} batches)':<44}{ref_s:>12.2f}"
        f"   ({ref_b} batches, {ref_r} records, {task.name} fraction 1.0)"
    )
    print(
        f"{'reference: suite, per-batch extrapolation':<44}{by_batch:>12.1f}"
        f"   ({per_batch * 1e3:.1f} ms/batch x {suite_batches:,} batches)"
    )
    print(
        f"{'reference: suite, per-record extrapolation':<44}{by_record:>12.1f}"
        f"   ({per_record * 1e3:.2f} ms/record x {suite_records:,} records)"
    )
    print(f"{'reference: suite (smaller of the two)':<44}{reference:>12.1f}")
    print(
        f"(not counted: re-embedding val+test after every epoch would add ~{per_record * eval_records:,.0f} s, "
        f"{eval_records:,} records at the per-record cost)"
    )
    print(f"ratio: {reference / ours:.1f}")


if __name__ == "__main__":
    main()

"""Data-layer throughput against the plain WFDB route, measured in the same run.

1. Cache build, records/s in ONE process: our reader + conditioning + shard
   writer against a plain loop of ``wfdb.rdsamp`` over the same records.
2. Training read, samples/s on ONE core: random-access batches of 256 from the
   cache (memmap gather, int16 -> float32, min-max normalisation) against
   reading the WFDB file of every sample (``wfdb.rdsamp``), which is what a
   loader without a cache does.

Usage: ``python benchmarks/bench_data.py [--quick]``. The last line is
``ratio: X``, the training-read speed-up (target >= 20x, and >= 5,000 samples/s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch
import wfdb

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.synth import write_all


def bench_build(root: Path, out: Path, files: list[Path]) -> tuple[float, float]:
    start = time.perf_counter()
    for path in files:
        wfdb.rdsamp(str(path))
    baseline = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    info = prepare(root, out, PrepareOptions("ptbxl", shard_size=128, workers=1, progress=False))
    ours = info["summary"]["records_found"] / (time.perf_counter() - start)
    return ours, baseline


def bench_read(cache: SignalCache, files: list[Path], batches: int, batch_size: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    n = len(cache)
    cache.signals(np.arange(min(n, batch_size)))  # open the memmaps
    start = time.perf_counter()
    for _ in range(batches):
        x = cache.signals(rng.integers(0, n, batch_size))
        assert x.shape[0] == batch_size
    ours = batches * batch_size / (time.perf_counter() - start)
    picks = rng.integers(0, len(files), max(64, batch_size // 2))
    start = time.perf_counter()
    for i in picks:
        signal, _ = wfdb.rdsamp(str(files[i]))
        x = torch.from_numpy(signal.T.astype(np.float32))
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo)
    baseline = len(picks) / (time.perf_counter() - start)
    return ours, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset, a few seconds per measurement")
    parser.add_argument(
        "--records", type=int, default=0, help="synthetic PTB-XL records (default 200 quick, 1000 full)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="training-read batch size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.records or (200 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_all(tmp / "synth", seed=0, sizes={"ptbxl": n}, datasets=("ptbxl",))
        root = tmp / "synth" / "ptb-xl"
        db = pd.read_csv(root / "ptbxl_database.csv")
        files = [root / f for f in db["filename_hr"]]
        build, build_base = bench_build(root, tmp / "cache", files)
        print(
            f"cache build, 1 process: {build:,.0f} records/s; wfdb.rdsamp loop: {build_base:,.0f} records/s "
            f"(x{build / build_base:.2f}, ours also resamples-checks, quantises and writes)"
        )
        read, read_base = bench_read(SignalCache.open(tmp / "cache"), files, 20 if args.quick else 100, args.batch_size)
        print(
            f"training read, 1 core: {read:,.0f} samples/s from the cache; {read_base:,.0f} samples/s from WFDB files"
        )
        print(f"ratio: {read / read_base:.1f}")


if __name__ == "__main__":
    main()

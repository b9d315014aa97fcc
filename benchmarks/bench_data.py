"""Data-layer throughput against the plain WFDB route, measured in the same run.

1. Cache build, records/s in ONE process: our reader + conditioning + shard
   writer against a plain loop of ``wfdb.rdsamp`` over the same records.
2. Training read, samples/s on ONE core: random-access batches of 256 from the
   cache (memmap gather, int16 -> float32, min-max normalisation) against
   reading the WFDB file of every sample (``wfdb.rdsamp``), which is what a
   loader without a cache does.

With ``--cold`` (Linux), also:

3. Cold training read, samples/s/core (one process, one thread), from a cache of
   >= 2 GB (``--quick``: ~300 MB). Before each timed cold pass every shard file is
   dropped from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (the shards
   are fsync'ed when written, so their pages are clean and can be dropped) and the
   fraction still resident is checked with ``mincore``. Two readers, each cold and
   then warm (all shards read into the page cache first), for reference:

   a. random access: ``SignalCache.signals(rows)`` on batches of a random permutation
      of all rows, which is what the training DataLoader does (``DistributedSampler``
      with shuffle + ``CacheDataset.__getitems__``, see ``deri_sweep/train/recipe.py``);
   b. shuffle buffer: shards in a random order, each read sequentially (record by
      record into the free slots of a pre-allocated buffer of ``--shuffle-buffer``
      records), batches drawn at random from the buffer (webdataset-style), then the
      same int16 -> float32 min-max normalisation.

   The big cache is written directly in the cache's real format (int16
   ``shards/shard_NNNNN.npy`` of 256 records, ``index.parquet``, ``reports.parquet``,
   ``cache.json``) by replicating the records of the small prepared synthetic cache
   (each copy offset by a few microvolts so that no two shards hold the same bytes;
   the min-max normalisation is offset-invariant); running the synthetic twin and
   ``prepare`` for ~18k records would take far longer than the measurement. It lives
   in a temporary folder that is deleted at the end.

   The target is the rate 4 GPUs need: the FLOPs of a ResNet18-1D training step
   (``deri_sweep.model.ecg_encoder.ResNet1D18`` forward at (512, 12, 5000), counted by
   ``torch.utils.flop_counter`` on the meta device, times 3 for forward + backward)
   against an assumed sustained GPU throughput (default: H100 dense bf16, 989 TFLOP/s,
   at 40% MFU; ``--gpu-tflops``, ``--mfu``). The ECG encoder is the smallest step a
   trial can take, so this bounds the rate from above; a full DERI step has more FLOPs
   per sample (``benchmarks/bench_gpu.py`` measures one). It prints how many DataLoader
   worker processes (one core each) that rate takes at the measured cold rates.

   "Cold" here is this machine's local disk; a cache on a network file system
   (EFS/Filestore) has other latencies, and the host of a virtual machine may itself
   cache the disk, so the cold figures are indicative, not a property of the code.

Usage: ``python benchmarks/bench_data.py [--quick] [--cold]``. The last line is
``ratio: X``, the training-read speed-up (target >= 20x, and >= 5,000 samples/s);
with ``--cold`` it is cold shuffle-buffer reading over per-record ``wfdb.rdsamp``
(the same baseline, two decimals).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch
import wfdb
from torch.utils import flop_counter

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.synth import write_all
from deri_sweep.model.ecg_encoder import ResNet1D18

#: Records per shard of the big cold-read cache (``prepare``'s default).
COLD_SHARD_SIZE = 256
#: GPUs of one trial, whose data rate the cold reader must sustain.
TARGET_GPUS = 4
#: Per-GPU batch of the target step (spec section 6).
TARGET_BATCH = 512


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


# --- cold reads ---------------------------------------------------------------------------------------------


def build_big_cache(small: SignalCache, out: Path, target_bytes: int) -> SignalCache:
    """Write a cache of at least ``target_bytes`` of shards by replicating ``small``'s records.

    Args:
        small: a prepared cache (its records, index rows and reports are replicated).
        out: new cache folder (created).
        target_bytes: minimum total size of the shard files.

    Returns:
        The opened big cache: ``COLD_SHARD_SIZE`` records per int16 (n, 12, L) shard.
    """
    length = int(small.info["signal"]["length"])
    record_bytes = 12 * length * np.dtype(np.int16).itemsize
    n_shards = max(2, math.ceil(target_bytes / (record_bytes * COLD_SHARD_SIZE)))
    n = n_shards * COLD_SHARD_SIZE
    source = np.arange(n) % len(small)  # (n,) row of ``small`` that each record copies
    copy = np.arange(n) // len(small)  # (n,) which copy it is
    (out / "shards").mkdir(parents=True)
    for number in range(n_shards):
        part = slice(number * COLD_SHARD_SIZE, (number + 1) * COLD_SHARD_SIZE)
        raw = small.raw(source[part]).astype(np.int32)  # (256, 12, L)
        raw += (copy[part] % 97)[:, None, None]  # distinct bytes per copy; min-max invariant
        raw = np.clip(raw, -32768, 32767).astype(np.int16)
        with open(out / "shards" / f"shard_{number:05d}.npy", "wb") as fh:
            np.lib.format.write_array(fh, raw, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())  # clean pages: POSIX_FADV_DONTNEED drops only those
    index = small.index.iloc[source].reset_index(drop=True)
    index["record_id"] = index["record_id"].astype(str) + "-copy" + pd.Series(copy).astype(str)
    index["shard"] = np.arange(n, dtype=np.int64) // COLD_SHARD_SIZE
    index["row"] = np.arange(n, dtype=np.int64) % COLD_SHARD_SIZE
    index.to_parquet(out / "index.parquet", index=False)
    for name in ("reports.parquet", "skipped.csv"):
        shutil.copyfile(small.root / name, out / name)
    # only what a reader needs: anything else of small's (a summary, a file manifest) would describe small's files
    keep = ("signal", "label_sets", "class_descriptions")
    info = {k: small.info[k] for k in keep if k in small.info}
    info.update(
        settings={**small.info["settings"], "shard_size": COLD_SHARD_SIZE},
        complete=True,
        replicated_from=str(small.root),
        summary={"records_found": n},
    )
    (out / "cache.json").write_text(json.dumps(info, indent=2))
    return SignalCache.open(out)


def shard_paths(cache: SignalCache) -> list[Path]:
    """The cache's shard files, in shard-number order."""
    return sorted((cache.root / "shards").glob("shard_*.npy"))


def drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to evict the (clean) page-cache pages of ``paths``."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(paths: list[Path]) -> None:
    """Read ``paths`` once so that their pages sit in the page cache."""
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(16 << 20):
                pass


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the pages of ``paths`` in the page cache (``mincore``), or ``None`` where unavailable."""
    page = mmap.PAGESIZE
    resident = total = 0
    try:
        for path in paths:
            size = path.stat().st_size
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mm:
                view = np.frombuffer(mm, dtype=np.uint8)  # mapping alone faults nothing in
                ok = _LIBC.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
                del view  # the mmap cannot close while a buffer is exported
            if ok != 0:
                return None
            resident += int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
            total += pages
    except (OSError, AttributeError, ValueError):
        return None
    return resident / max(total, 1)


def minmax_record(raw: np.ndarray) -> torch.Tensor:
    """``SignalCache.signals``' ``minmax_record`` normalisation of int16 signals (B, 12, L) -> float32 (B, 12, L)."""
    flat = raw.reshape(len(raw), -1)
    lo = flat.min(axis=1).astype(np.float32)
    scale = 1.0 / np.maximum(flat.max(axis=1).astype(np.float32) - lo, 1.0)
    out = np.multiply(raw, scale[:, None, None], dtype=np.float32)
    out += (-lo * scale)[:, None, None]
    return torch.from_numpy(out)


def open_shard(path: Path, shape: tuple[int, int]) -> tuple[BinaryIO, int]:
    """Open an int16 (n, 12, L) ``.npy`` shard positioned at its first record; returns the file and n."""
    fh = open(path, "rb")  # noqa: SIM115 (the caller reads and closes it)
    version = np.lib.format.read_magic(fh)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    rows, fortran, dtype = reader(fh)
    if fortran or dtype != np.int16 or tuple(rows[1:]) != shape:
        fh.close()
        raise ValueError(f"{path}: expected a C-order int16 (n, {shape[0]}, {shape[1]}) array, got {dtype} {rows}")
    return fh, int(rows[0])


class ShuffleBuffer:
    """A webdataset-style shuffle buffer over whole shards, without copies inside the buffer.

    Records live in fixed slots of one pre-allocated (and pre-faulted, as in a persistent
    DataLoader worker) int16 array; a shard is read sequentially, record by record, into
    free slots; a batch is a random draw of filled slots, gathered into a reused array.

    Args:
        shape: (leads, length) of one record.
        buffer_records: batches are drawn once the buffer holds this many records.
        batch_size: records per batch B.
        rng: draws the records of each batch.
    """

    def __init__(self, shape: tuple[int, int], buffer_records: int, batch_size: int, rng: np.random.Generator) -> None:
        self.shape = shape
        self.buffer_records = max(buffer_records, batch_size)
        capacity = self.buffer_records + COLD_SHARD_SIZE
        self.data = np.zeros((capacity, *shape), dtype=np.int16)  # (capacity, 12, L), zeros fault the pages in
        self.batch = np.zeros((batch_size, *shape), dtype=np.int16)  # (B, 12, L), reused by every draw
        self.free = list(range(capacity))
        self.filled = np.empty(capacity, dtype=np.int64)  # slot numbers holding a record, first ``count``
        self.count = 0
        self.rng = rng

    def add_shard(self, path: Path) -> None:
        """Read every record of shard ``path`` sequentially into free slots."""
        fh, rows = open_shard(path, self.shape)
        with fh:
            if rows > len(self.free):
                raise ValueError(f"{path}: {rows} records but {len(self.free)} free slots (shards of <= 256)")
            for _ in range(rows):
                slot = self.free.pop()
                fh.readinto(memoryview(self.data[slot]).cast("B"))
                self.filled[self.count] = slot
                self.count += 1

    def draw(self) -> np.ndarray:
        """A random batch of buffered records, removed from the buffer.

        Returns:
            (B, 12, L) int16, a view of an array the next draw overwrites.
        """
        size = len(self.batch)
        pick = self.rng.choice(self.count, size, replace=False)  # positions in ``filled``
        slots = self.filled[pick]
        np.take(self.data, np.sort(slots), axis=0, out=self.batch)
        self.free.extend(slots.tolist())
        keep = np.ones(self.count, dtype=bool)
        keep[pick] = False
        rest = self.filled[: self.count][keep]
        self.count = len(rest)
        self.filled[: self.count] = rest
        return self.batch

    def batches(self, paths: list[Path]) -> Iterator[np.ndarray]:
        """Batches of the shards ``paths``, read in the order given (shuffle it for training).

        Yields:
            (B, 12, L) int16 views (see :meth:`draw`); the last partial batch is dropped (``drop_last``).
        """
        for path in paths:
            self.add_shard(path)
            while self.count >= self.buffer_records:
                yield self.draw()
        while self.count >= len(self.batch):
            yield self.draw()


@dataclass
class ColdPass:
    """One timed read pass."""

    samples: int
    seconds: float
    cpu_seconds: float
    kernel_seconds: float
    record_bytes: int

    @property
    def rate(self) -> float:
        """Samples per second (one process, one thread)."""
        return self.samples / self.seconds

    @property
    def mb_per_s(self) -> float:
        """Signal megabytes (int16) per second."""
        return self.rate * self.record_bytes / 1e6

    @property
    def busy(self) -> float:
        """CPU time over wall time of the pass: below 1 means the core waited for the disk."""
        return self.cpu_seconds / self.seconds

    @property
    def kernel(self) -> float:
        """Share of the CPU time spent in the kernel (page cache, page faults, copies)."""
        return self.kernel_seconds / max(self.cpu_seconds, 1e-9)


def timed(fn, record_bytes: int) -> ColdPass:
    """Run ``fn() -> samples`` and time it (wall, process CPU and its kernel part)."""
    wall, before = time.perf_counter(), os.times()
    samples = fn()
    after = os.times()
    user, system = after.user - before.user, after.system - before.system
    return ColdPass(samples, time.perf_counter() - wall, user + system, system, record_bytes)


def read_random_pass(root: Path, rows: np.ndarray, batch_size: int) -> int:
    """Random-access batches of ``rows`` (a random permutation) through a freshly opened cache; returns samples."""
    cache = SignalCache.open(root)  # fresh memmaps: a mapped page is never dropped
    samples = 0
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        samples += len(cache.signals(rows[start : start + batch_size]))  # (B, 12, L) float32
    return samples


def read_shuffle_pass(buffer: ShuffleBuffer, paths: list[Path]) -> int:
    """Shuffle-buffer batches of ``paths`` (already in random order), normalised like the cache; returns samples."""
    samples = 0
    for raw in buffer.batches(paths):
        samples += len(minmax_record(raw))  # (B, 12, L) float32
    return samples


def resnet_step_flops(batch: int, length: int) -> tuple[float, float]:
    """FLOPs of a ResNet18-1D forward at (batch, 12, length), and the counted forward + backward.

    Counted with ``FlopCounterMode`` on the meta device (shapes only, no compute).
    """
    with torch.device("meta"):
        model = ResNet1D18(12)
        x = torch.empty(batch, 12, length)
        forward = flop_counter.FlopCounterMode(display=False)
        with forward:
            model(x)
        both = flop_counter.FlopCounterMode(display=False)
        with both:
            model(x).sum().backward()
    return float(forward.get_total_flops()), float(both.get_total_flops())


def loader_reading() -> str:
    """How the pretraining DataLoader reads the cache, checked against the code."""
    import inspect

    from deri_sweep.train import recipe

    source = inspect.getsource(recipe._loader)
    if "DistributedSampler" in source and "shuffle=shuffle" in source:
        return (
            "random access: deri_sweep.train.recipe._loader uses DistributedSampler(shuffle=True) over all train rows "
            "and CacheDataset.__getitems__, one SignalCache.signals gather per batch"
        )
    return "unknown: deri_sweep.train.recipe._loader changed, read it"


def bench_cold(args: argparse.Namespace, small: SignalCache, tmp: Path, rdsamp_rate: float) -> float:
    """Cold (and warm) random-access and shuffle-buffer reads of a big cache; prints them; returns the ratio."""
    big = build_big_cache(small, tmp / "big", int(args.cold_mb * 1e6))
    paths = shard_paths(big)
    length = int(big.info["signal"]["length"])
    record_bytes = 12 * length * 2
    total_mb = sum(p.stat().st_size for p in paths) / 1e6
    n_pass = min(len(paths), args.pass_shards)  # shards' worth of samples per pass
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(big))[: n_pass * COLD_SHARD_SIZE]
    order = [paths[i] for i in rng.permutation(len(paths))[:n_pass]]
    passes: dict[tuple[str, str], ColdPass] = {}
    resident: list[float | None] = []

    def random_pass() -> int:
        return read_random_pass(big.root, rows, args.batch_size)

    buffer = ShuffleBuffer((12, length), args.shuffle_buffer, args.batch_size, np.random.default_rng(2))

    def shuffle_pass() -> int:
        return read_shuffle_pass(buffer, order)

    for name, fn in (("random", random_pass), ("shuffle", shuffle_pass)):
        drop_page_cache(paths)
        resident.append(resident_fraction(paths))
        passes[name, "cold"] = timed(fn, record_bytes)
    warm_page_cache(paths)
    warm_resident = resident_fraction(paths)
    for name, fn in (("random", random_pass), ("shuffle", shuffle_pass)):
        passes[name, "warm"] = timed(fn, record_bytes)

    known = [r for r in resident if r is not None]
    shown = f"{max(known):.1%}" if known else "unknown (no mincore)"
    warm_shown = f"{warm_resident:.0%}" if warm_resident is not None else "unknown"
    print(
        f"cold-read cache: {total_mb:,.0f} MB, {len(paths)} shards x {COLD_SHARD_SIZE} records of {record_bytes:,} "
        f"bytes (replicated from the {len(small)}-record prepared cache); each pass reads "
        f"{n_pass * COLD_SHARD_SIZE:,} samples in batches of {args.batch_size}"
    )
    print(
        f"page cache before each cold pass (posix_fadvise DONTNEED on every shard): at most {shown} of the shard "
        f"pages resident; before the warm passes: {warm_shown}"
    )
    labels = {
        "random": "random access  (SignalCache.signals, random permutation)",
        "shuffle": f"shuffle buffer (shards in random order, sequential, buffer {args.shuffle_buffer})",
    }
    for name, label in labels.items():
        cold, warm = passes[name, "cold"], passes[name, "warm"]
        print(
            f"{label}: cold {cold.rate:,.0f} samples/s/core ({cold.mb_per_s:,.0f} MB/s, CPU busy {cold.busy:.0%}, "
            f"{cold.kernel:.0%} of it kernel); "
            f"warm {warm.rate:,.0f} samples/s/core ({warm.mb_per_s:,.0f} MB/s)"
        )
    print(f"training DataLoader reads by {loader_reading()}")

    forward, counted = resnet_step_flops(TARGET_BATCH, length)
    step_flops = 3 * forward
    sustained = args.gpu_tflops * 1e12 * args.mfu
    per_gpu = TARGET_BATCH * sustained / step_flops
    target = TARGET_GPUS * per_gpu
    print(
        f"target: ResNet18-1D step at ({TARGET_BATCH}, 12, {length}): forward {forward / TARGET_BATCH / 1e9:.2f} "
        f"GFLOP/sample x 3 = {step_flops / TARGET_BATCH / 1e9:.2f} (FlopCounterMode forward + backward: "
        f"{counted / TARGET_BATCH / 1e9:.2f}); at {args.gpu_tflops:.0f} TFLOP/s x {args.mfu:.0%} MFU = "
        f"{sustained / 1e12:.0f} TFLOP/s sustained per GPU: {per_gpu:,.0f} samples/s per GPU, "
        f"{target:,.0f} samples/s for {TARGET_GPUS} GPUs ({target * record_bytes / 1e9:.1f} GB/s of int16 signals)"
    )
    for name, label in (("random", "random access (the DataLoader's)"), ("shuffle", "shuffle buffer")):
        rate = passes[name, "cold"].rate
        print(
            f"DataLoader workers (one core each) for {target:,.0f} samples/s cold, {label}: "
            f"{math.ceil(target / rate)} at {rate:,.0f} samples/s/core, if the storage delivers "
            f"{target * record_bytes / 1e9:.1f} GB/s to them"
        )
    print(
        "note: the target is an upper bound (the ECG encoder alone; a DERI step has more FLOPs per sample), "
        "and cold here is this machine's disk, not a network file system"
    )
    return passes["shuffle", "cold"].rate / rdsamp_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset, a few seconds per measurement")
    parser.add_argument(
        "--records", type=int, default=0, help="synthetic PTB-XL records (default 200 quick, 1000 full)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="training-read batch size")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also measure cold reads (page cache dropped) of a big cache, random access and shuffle buffer (Linux)",
    )
    parser.add_argument(
        "--cold-mb", type=float, default=0.0, help="size of the --cold cache in MB (default 2100; 280 with --quick)"
    )
    parser.add_argument(
        "--pass-shards",
        type=int,
        default=0,
        help=f"samples per --cold pass, in shards of {COLD_SHARD_SIZE} (default 40, ~1.2 GB; 6 with --quick)",
    )
    parser.add_argument(
        "--shuffle-buffer", type=int, default=1024, help="records in the --cold shuffle buffer (default 1024)"
    )
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=989.0,
        help="--cold target: GPU dense bf16 peak, TFLOP/s (default 989, H100 SXM)",
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="--cold target: sustained fraction of it (default 0.4)")
    args = parser.parse_args()
    args.cold_mb = args.cold_mb or (280.0 if args.quick else 2100.0)
    args.pass_shards = args.pass_shards or (6 if args.quick else 40)
    if args.cold and not hasattr(os, "posix_fadvise"):
        parser.error("--cold needs os.posix_fadvise (Linux)")
    torch.set_num_threads(1)
    n = args.records or (200 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            write_all(tmp / "synth", seed=0, sizes={"ptbxl": n}, datasets=("ptbxl",))
            root = tmp / "synth" / "ptb-xl"
            db = pd.read_csv(root / "ptbxl_database.csv")
            files = [root / f for f in db["filename_hr"]]
            build, build_base = bench_build(root, tmp / "cache", files)
            print(
                f"cache build, 1 process: {build:,.0f} records/s; wfdb.rdsamp loop: {build_base:,.0f} records/s "
                f"(x{build / build_base:.2f}, ours also resamples-checks, quantises and writes)"
            )
            small = SignalCache.open(tmp / "cache")
            read, read_base = bench_read(small, files, 20 if args.quick else 100, args.batch_size)
            print(
                f"training read, 1 core: {read:,.0f} samples/s from the cache; "
                f"{read_base:,.0f} samples/s from WFDB files"
            )
            if not args.cold:
                print(f"ratio: {read / read_base:.1f}")
                return
            ratio = bench_cold(args, small, tmp, read_base)
            print(f"ratio: {ratio:.2f}")
        finally:
            shutil.rmtree(tmp / "big", ignore_errors=True)  # the GB-sized cache goes first, whatever happened


if __name__ == "__main__":
    main()

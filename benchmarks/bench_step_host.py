"""Host time of the training process per step, outside the model: today's in-process text gather vs loader-side.

What is timed, per step, in the training process: from the end of one optimizer step to the
start of the next forward, i.e. receiving the next batch from the recipe's own DataLoader
(``deri_sweep.train.recipe._loader``, one loader worker) and preparing the model's inputs with
the engine's own code (``engine.batch_signals`` + ``TextSource.batch_inputs``). Before each
timed step the script waits until the worker has its prefetched batches queued, so the
figure is the training process's own work when the loader is ahead (loader-worker throughput
on this 2-core machine does not enter it; it is printed separately).

- old (baseline, today's path until issue 24): the worker ships float32 signals and report
  ids; the training process gathers the batch's text features from the memory-mapped fp16
  store into a float32 (B, Nmax, H) array (``TextFeatureStore.batch`` via ``TextSource.inputs``)
  and copies them to the device;
- new: the worker also ships the text features (``TextSource.loader_text``: what the recipe
  passes to ``CacheDataset``), so the training process only receives ready tensors and moves /
  casts them on the device. The device here is the CPU, so the recipe's CPU format is timed
  (float32 from the worker: on the CPU the worker does the device's cast). For a GPU the worker
  ships fp16 features and int16 signals with their normalisation operands (half the bytes;
  ``SignalCache.signals16``); the training process then issues asynchronous copies from pinned
  memory and the casts run as GPU kernels, which cannot be timed without a GPU.

Shapes: batch B = 512, 12 x 5000 int16 signals, text hidden size H = 768 (MedCPT / BERT-base).
Report lengths: token counts (with [CLS] and [SEP]) drawn from a lognormal with median 22 and
sigma 0.45, clipped to [4, 256], i.e. MIMIC-IV-ECG machine reports (a few short statements,
"Sinus rhythm. Left axis deviation. Abnormal ECG", with a long tail); the longest report of a
batch of 512 is then ~80-100 tokens (the issue measured Nmax 89 on the twin). 512 records and
512 unique reports are written into a temporary cache (signals random int16); the dataset
repeats its rows so that every step is a fresh batch of 512.

Also printed: the loader's samples/s per worker core (one ``CacheDataset.__getitems__`` of a
batch, timed in this process on one core) for the CPU format and for the GPU format, and the
worker cores 4 GPUs need to keep up at a GPU step time of 20, 35 and 50 ms per batch of 512.

Usage: ``python benchmarks/bench_step_host.py [--quick] [--steps N]``. The last line is
``ratio: X`` (old host time per step / new). The machine may be shared: both paths run in the
same process, alternating, so that load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deri_sweep.common.strict_loader import apply_overrides
from deri_sweep.data.cache import CacheDataset, SignalCache
from deri_sweep.model.config import ECGConfig, ModelConfig, TextConfig
from deri_sweep.model.deri import DERI
from deri_sweep.model.text_cache import TextFeatureStore
from deri_sweep.train.engine import TextSource, batch_signals
from deri_sweep.train.recipe import WorkerInfo, _loader
from deri_sweep.train.train_config import TrainConfig

BATCH, LEADS, LENGTH, HIDDEN = 512, 12, 5000, 768
#: report token counts: lognormal(log 22, 0.45) clipped to [4, 256] (MIMIC-IV-ECG machine reports)
LEN_MEDIAN, LEN_SIGMA, LEN_MIN, LEN_MAX = 22, 0.45, 4, 256
GPU_STEP_MS = (20.0, 35.0, 50.0)


def write_cache(root: Path, records: int, seed: int = 0) -> tuple[Path, TextFeatureStore]:
    """A signal cache of ``records`` random int16 records and a 768-d fp16 text-feature folder, one report each."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    shard = np.lib.format.open_memmap(root / "shards" / "shard_00000.npy", "w+", np.int16, (records, LEADS, LENGTH))
    for start in range(0, records, 64):
        stop = min(start + 64, records)
        shard[start:stop] = rng.integers(-2000, 2000, size=(stop - start, LEADS, LENGTH), dtype=np.int16)
    shard.flush()
    del shard
    index = pd.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(records)],
            "split": "train",
            "shard": np.zeros(records, np.int64),
            "row": np.arange(records, dtype=np.int64),
            "report_id": np.arange(records, dtype=np.int64),
        }
    )
    index.to_parquet(root / "index.parquet")
    pd.DataFrame({"report_id": np.arange(records), "text": [f"report {i}" for i in range(records)]}).to_parquet(
        root / "reports.parquet"
    )
    info = {"complete": True, "signal": {"length": LENGTH}, "label_sets": {}}
    (root / "cache.json").write_text(json.dumps(info))
    lengths = np.clip(np.round(rng.lognormal(np.log(LEN_MEDIAN), LEN_SIGMA, records)), LEN_MIN, LEN_MAX)
    offsets = np.concatenate([[0], np.cumsum(lengths.astype(np.int64))])
    feats = root / "text_features" / "bench"
    feats.mkdir(parents=True)
    np.save(feats / "pooled.npy", rng.standard_normal((records, HIDDEN), dtype=np.float32).astype(np.float16))
    tokens = np.lib.format.open_memmap(feats / "tokens.npy", "w+", np.float16, (int(offsets[-1]), HIDDEN))
    tokens[:] = rng.standard_normal(tokens.shape, dtype=np.float32).astype(np.float16)
    tokens.flush()
    del tokens
    np.save(feats / "offsets.npy", offsets)
    (feats / "meta.json").write_text(json.dumps({"done": True, "hidden_size": HIDDEN, "count": records}))
    return root, TextFeatureStore(feats)


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of a process (Linux ``/proc``), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _wait_ready(it: object, want: int, timeout: float = 300.0) -> None:
    """Block until the loader has ``want`` batches queued, the first fully sent, and its workers idle.

    ``qsize`` counts a batch when the worker calls ``put``; the worker's feeder thread then still moves
    its tensors to shared memory and writes the message, so this also waits for the pipe to be readable
    and for the workers' CPU time to stop growing (they have nothing left to prepare).
    """
    queue = getattr(it, "_data_queue", None)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    deadline = time.monotonic() + timeout
    if queue is None:
        time.sleep(2.0)
        return
    while time.monotonic() < deadline:
        try:
            queued = queue.qsize() >= want and queue._reader.poll(0)
        except (NotImplementedError, AttributeError):
            time.sleep(2.0)
            return
        if queued:
            before = [_cpu_ticks(p) for p in pids]
            time.sleep(0.05)
            if [_cpu_ticks(p) for p in pids] == before:
                return
        else:
            time.sleep(0.005)


def host_times(
    loader: torch.utils.data.DataLoader, text: TextSource, model: torch.nn.Module, steps: int
) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds per step spent receiving a ready batch and preparing its inputs; the largest Nmax."""
    device = torch.device("cpu")
    it = iter(loader)
    prefetch = loader.prefetch_factor * loader.num_workers
    times, cpu, width = [], [], 0
    for step in range(steps):
        _wait_ready(it, min(prefetch, len(loader) - step))
        start, start_cpu = time.perf_counter(), time.thread_time()
        batch = next(it)
        ecg = batch_signals(batch, device)
        inputs = text.batch_inputs(model, batch, device)
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        width = max(width, inputs["tokens"].shape[1])
        del ecg, inputs, batch
    del it
    return times, cpu, width


def worker_rate(dataset: CacheDataset, repeats: int) -> float:
    """Samples/s of one loader worker core producing a batch of ``BATCH`` (median of ``repeats``)."""
    rng = np.random.default_rng(1)
    times = []
    for _ in range(repeats):
        indices = rng.choice(len(dataset), BATCH, replace=False).tolist()
        start = time.perf_counter()
        dataset.__getitems__(indices)
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def main() -> None:
    """Run both paths and print the figures; last line ``ratio: X``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 timed steps per path (under a minute)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per path (default 3 quick, 8 full)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    steps = args.steps or (3 if args.quick else 8)
    torch.set_num_threads(1)
    cfg = apply_overrides(TrainConfig(), ["data.loader_workers=1", f"optim.batch_size={BATCH}"])
    worker = WorkerInfo()
    with tempfile.TemporaryDirectory(prefix="bench-step-host-") as tmp:
        root, store = write_cache(Path(tmp) / "cache", BATCH)
        cache = SignalCache.open(root)
        rows = np.tile(np.arange(BATCH), steps + 1)  # steps + 1 fresh batches of 512 per epoch
        text = TextSource([""] * BATCH, store)
        model_cfg = ModelConfig(ecg=ECGConfig(num_samples=LENGTH), text=TextConfig(max_length=LEN_MAX))
        model = DERI(model_cfg, text_hidden_size=HIDDEN)  # for TextSource (its decoder: none); never run
        old_set = CacheDataset(cache, rows, cfg.data.norm)
        new_set = CacheDataset(cache, rows, cfg.data.norm, text=text.loader_text(worker.device))
        old_loader = _loader(old_set, BATCH, worker, cfg, shuffle=True)
        new_loader = _loader(new_set, BATCH, worker, cfg, shuffle=True)
        old_s, new_s, old_cpu, new_cpu, widths = [], [], [], [], []
        for round_ in range(2):  # alternate paths so that the machine's load hits both alike
            old_loader.sampler.set_epoch(round_)
            new_loader.sampler.set_epoch(round_)
            n = max(1, steps // 2) if round_ == 0 else steps - steps // 2
            t, c, w = host_times(old_loader, text, model, n)
            old_s, old_cpu, widths = old_s + t, old_cpu + c, [*widths, w]
            t, c, w = host_times(new_loader, text, model, n)
            new_s, new_cpu, widths = new_s + t, new_cpu + c, [*widths, w]
        gpu_set = CacheDataset(
            cache, rows, cfg.data.norm, text=text.loader_text(torch.device("cuda")), wire16=True
        )  # what a GPU worker's loader ships
        cpu_rate = worker_rate(new_set, 2 if args.quick else 4)
        gpu_rate = worker_rate(gpu_set, 2 if args.quick else 4)
        old_only = worker_rate(old_set, 2 if args.quick else 4)
    old_ms, new_ms = statistics.median(old_s) * 1e3, statistics.median(new_s) * 1e3
    print(f"B={BATCH}, {LEADS}x{LENGTH} int16 signals, H={HIDDEN}; report tokens lognormal(median {LEN_MEDIAN}, "
          f"sigma {LEN_SIGMA}) in [{LEN_MIN}, {LEN_MAX}], batch Nmax {min(widths)}-{max(widths)}; {steps} timed steps "
          f"per path, 1 loader worker, batch ready before each step (shared machine: figures are noisy)")  # fmt: skip
    print(f"old host time per step (in-process feature gather + copy): {old_ms:8.1f} ms (median wall; all "
          f"{', '.join(f'{t * 1e3:.0f}' for t in old_s)}; CPU {statistics.median(old_cpu) * 1e3:.1f} ms)")  # fmt: skip
    print(f"new host time per step (features from the loader worker): {new_ms:8.1f} ms (median wall; all "
          f"{', '.join(f'{t * 1e3:.1f}' for t in new_s)}; CPU {statistics.median(new_cpu) * 1e3:.1f} ms)")  # fmt: skip
    print(
        f"loader samples/s per worker core: {old_only:,.0f} signals only (old); {cpu_rate:,.0f} with features "
        f"(CPU format, float32); {gpu_rate:,.0f} with features (GPU format: int16 signals + fp16 features)"
    )
    for ms in GPU_STEP_MS:
        need = 4 * BATCH / (ms / 1e3)
        print(f"4 GPUs at {ms:.0f} ms per step of {BATCH}: {need:,.0f} samples/s -> {need / gpu_rate:.1f} loader "
              f"worker cores ({need / gpu_rate / 4:.1f} per GPU)")  # fmt: skip
    print(f"ratio: {old_ms / max(new_ms, 1e-6):.2f}")


if __name__ == "__main__":
    main()

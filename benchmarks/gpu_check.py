"""One-shot check of what only a GPU can show, for one GPU in under 8 minutes; ``--cpu`` runs the rest in CI.

Checks, in order (each one's failure is recorded and the next runs):

1. ``env``: torch and CUDA versions, CUDA / bf16 / NCCL availability, the device name.
2. ``recipe``: the pretraining recipe (``train.recipe.run_worker``) on a synthetic 12 x 5000 cache at
   batch 512, two short epochs with validation and checkpoints, then a resume from the first
   epoch's checkpoint: the second epoch's losses must repeat (exact, or the difference is shown).
3. ``rows``: one training step (bf16 autocast, AdamW) of every row of every shipped space (every grid
   row; the corners of ``tpe_joint``) at batch 512 and 5000 samples with the cluster towers' sizes:
   768-d text features as MedCPT's (a randomly initialised BERT-base when a row trains the tower)
   and a DistilGPT2-sized GPT-2 (6 x 768, 12 heads; over the BERT vocabulary: the hub is unreachable)
   as the joint decoder, text padded to ``text.max_length``; run under
   ``torch.cuda.set_per_process_memory_fraction`` caps of 24 GB and 40 GB: peak memory, fits or not,
   beside ``ablate --dry-run``'s estimate (which this calibrates).
4. ``breakdown``: the recipe's own loader (4 workers, 16-bit signals, loader-side text features) and
   the engine's step: loader alone (samples/s), host time per step, GPU time per step (CUDA events),
   GPU busy fraction, samples/s, MFU against the device's dense bf16 peak
   (``bench_pretrain.PEAK_BF16_TFLOPS``).
5. ``precision``: the DERI loss of one batch in float32 and under bf16 autocast (eval mode).
6. ``text_build``: the text-feature cache build rate (reports/s) with a BERT-base tower on the GPU.
7. ``probe_features``: probe feature extraction (``evaluate.features.extract_features``) on the GPU vs
   the CPU: records/s each, and the largest difference.
8. ``ray_epoch``: one Ray TorchTrainer epoch with 1 worker and 1 GPU (``orchestration.trainer``).
9. ``bench_gpu``: ``benchmarks/bench_gpu.py --quick``; its figures and ratio.

It prints one table (check, status, figures) and writes one JSON file (``--out``, default
``gpu_check.json``). ``--cpu`` (CI) runs checks 1-7 at tiny sizes (batch 8, 1000 samples, the
embedded MiniLM tower and the tiny GPT-2, rows ``full`` and ``with_caption`` of ``paper_ablation``
only, no memory caps) and lists
what needs CUDA as skipped: the memory caps, CUDA events, MFU, GPU probe features, the Ray GPU epoch
and ``bench_gpu.py`` (whose CPU smoke is ``tests/test_bench_gpu.py``). Ray checks start a local
cluster: run under ``flock /tmp/raylock`` on a shared machine.

Usage: ``python benchmarks/gpu_check.py [--cpu] [--out FILE] [--skip CHECK ...]``. Exit status 1
when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deri_sweep.common.strict_loader import apply_overrides  # noqa: E402
from deri_sweep.data.cache import CacheDataset, SignalCache  # noqa: E402
from deri_sweep.model.config import ReportDecoderConfig, TextConfig  # noqa: E402
from deri_sweep.model.deri import DERI  # noqa: E402
from deri_sweep.model.text_cache import TextFeatureStore, build_text_features, caching_applies  # noqa: E402
from deri_sweep.model.text_tower import TextTower, load_tokenizer  # noqa: E402
from deri_sweep.orchestration.dry_run import estimate_gpu_memory  # noqa: E402
from deri_sweep.orchestration.spaces import SPACES_DIR, DefineByRun, ParamSpec, SearchSpace, load_space  # noqa: E402
from deri_sweep.train.engine import autocast_dtype, batch_signals, build_optimizer  # noqa: E402
from deri_sweep.train.losses import DeriLoss  # noqa: E402
from deri_sweep.train.recipe import WorkerInfo, _loader, _rows, run_worker  # noqa: E402
from deri_sweep.train.train_config import TrainConfig  # noqa: E402

log = logging.getLogger("gpu_check")

STATEMENTS = [
    "Sinus rhythm", "Sinus bradycardia", "Sinus tachycardia", "Atrial fibrillation", "Left axis deviation",
    "Right bundle branch block", "Left ventricular hypertrophy", "Possible inferior infarct - age undetermined",
    "ST depression, consider ischemia", "Prolonged QT interval", "Low QRS voltages in limb leads",
    "Poor R wave progression - probable normal variant", "Borderline ECG", "Abnormal ECG", "Normal ECG",
]  # fmt: skip
CAPS_GB = (24.0, 40.0)
#: rows of paper_ablation stepped under --cpu
CPU_ROWS = ("full", "with_caption")


@dataclass(frozen=True)
class Sizes:
    """What the checks run at."""

    batch: int
    length: int
    records: int
    steps: int
    loader_workers: int
    text_reports: int


GPU_SIZES = Sizes(batch=512, length=5000, records=1400, steps=6, loader_workers=4, text_reports=4096)
CPU_SIZES = Sizes(batch=8, length=1000, records=40, steps=2, loader_workers=0, text_reports=40)


@dataclass
class Report:
    """The table's rows and the JSON document."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, check: str, status: str, detail: str, **figures: Any) -> None:
        """Record one check's row and its figures."""
        self.rows.append((check, status, detail))
        self.data.setdefault(check, {}).update(status=status, detail=detail, **figures)

    def table(self) -> str:
        """The printed table."""
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'check':<{width}}  status   figures", "-" * (width + 80)]
        lines += [f"{c:<{width}}  {s:<7s}  {d}" for c, s, d in self.rows]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- synthetic cache
def write_cache(root: Path, sizes: Sizes, seed: int = 0) -> Path:
    """A complete signal cache: random-walk int16 signals, MIMIC-like machine reports, 80/20 train/val."""
    rng = np.random.default_rng(seed)
    n = sizes.records
    (root / "shards").mkdir(parents=True)
    shard = np.lib.format.open_memmap(root / "shards" / "shard_00000.npy", "w+", np.int16, (n, 12, sizes.length))
    t = np.arange(sizes.length) / 500.0
    for start in range(0, n, 64):
        stop = min(start + 64, n)
        beat = np.sin(2 * np.pi * rng.uniform(0.8, 2.0, (stop - start, 1, 1)) * t)  # (b, 1, L)
        shard[start:stop] = (800 * beat + rng.normal(0, 60, (stop - start, 12, sizes.length))).astype(np.int16)
    shard.flush()
    del shard
    texts = sorted({". ".join(rng.choice(STATEMENTS, size=rng.integers(1, 5), replace=False)) + "." for _ in range(n)})
    split = np.where(np.arange(n) < int(0.8 * n), "train", "val")
    pd.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(n)],
            "subject_id": np.arange(n),
            "split": split,
            "shard": np.zeros(n, np.int64),
            "row": np.arange(n, dtype=np.int64),
            "report_id": rng.integers(0, len(texts), n).astype(np.int64),
        }
    ).to_parquet(root / "index.parquet")
    pd.DataFrame({"report_id": np.arange(len(texts), dtype=np.int64), "text": texts}).to_parquet(
        root / "reports.parquet"
    )
    info = {"complete": True, "signal": {"length": sizes.length, "fs": 500}, "label_sets": {}}
    (root / "cache.json").write_text(json.dumps(info))
    return root


def train_config(cache: Path, sizes: Sizes, **extra: Any) -> TrainConfig:
    """The recipe's config for the synthetic cache."""
    overrides = {
        "data.cache": str(cache),
        "data.loader_workers": sizes.loader_workers,
        "model.ecg.num_samples": sizes.length,
        "optim.batch_size": sizes.batch,
        "optim.epochs": 2,
        "optim.t0": 10000,
        "max_steps_per_epoch": 2,
        **extra,
    }
    return apply_overrides(TrainConfig(), [f"{k}={v}" for k, v in overrides.items()])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bert_base(text: TextConfig) -> TextTower:
    """A randomly initialised BERT-base tower (MedCPT's shape) with the embedded BERT tokenizer."""
    from transformers import BertConfig, BertModel

    return TextTower(text, model=BertModel(BertConfig()), tokenizer=load_tokenizer("embedded"))


# ----------------------------------------------------------------------------- checks
def check_env(report: Report, device: torch.device, sizes: Sizes) -> None:
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    figures = {
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cuda": cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "nccl": bool(dist.is_available() and dist.is_nccl_available()),
        "gpu_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1) if cuda else 0.0,
    }
    detail = ", ".join(f"{k} {v}" for k, v in figures.items())
    ok = device.type == "cpu" or (figures["bf16"] and figures["nccl"])
    report.add("env", "ok" if ok else "FAIL", detail, **figures)


class Collector:
    """Report callback of the recipe: metrics, and a copy of every checkpoint."""

    def __init__(self, keep: Path) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []
        self.keep = keep

    def __call__(self, metrics: dict[str, Any], directory: Path | None) -> None:
        """Keep the metrics and a copy of the checkpoint."""
        self.metrics.append(dict(metrics))
        if directory is not None:
            target = self.keep / f"checkpoint_{len(self.checkpoints):03d}"
            shutil.copytree(directory, target)
            self.checkpoints.append(target)


def check_recipe(report: Report, device: torch.device, sizes: Sizes, cache: Path, tmp: Path) -> None:
    cfg = train_config(cache, sizes)
    kind = "gpu" if device.type == "cuda" else "cpu"
    worker = WorkerInfo(device=device, resource_kind=kind, scratch=tmp)
    started = time.perf_counter()
    full = Collector(tmp / "full")
    last = run_worker(cfg, worker, full)
    seconds = time.perf_counter() - started
    resumed = Collector(tmp / "resumed")
    again = run_worker(cfg, worker, resumed, resume=full.checkpoints[0])
    diffs = {k: abs(again[k] - last[k]) for k in ("train_total", "val_total")}
    exact = all(v == 0.0 for v in diffs.values())
    close = all(abs(again[k] - last[k]) <= 1e-5 * max(1.0, abs(last[k])) for k in diffs)
    status = "ok" if len(full.checkpoints) == 2 and close else "FAIL"
    report.add(
        "recipe",
        status,
        f"2 epochs x 2 steps at batch {sizes.batch}, {seconds:.1f} s; val_total {last['val_total']:.4f}; resume "
        f"{'exact' if exact else 'differs by ' + ', '.join(f'{k} {v:.2e}' for k, v in diffs.items())}; "
        f"{last['samples_per_s']:.0f} samples/s",
        seconds=seconds,
        metrics=last,
        resumed=again,
        resume_exact=exact,
    )


def _corners(params: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """The sampled space's corners: ints at both bounds x every choice; floats at their upper bound."""
    import optuna

    structural = {k: ([int(p.low), int(p.high)] if p.type == "int" else p.choices) for k, p in params.items()
                  if p.type in ("int", "categorical")}  # fmt: skip
    floats = {k: p.high for k, p in params.items() if p.type == "float"}
    corners = []
    for values in itertools.product(*structural.values()):
        trial = optuna.trial.FixedTrial({**dict(zip(structural, values, strict=True)), **floats})
        DefineByRun(params)(trial)
        corners.append(dict(trial.params))
    return corners


def shipped_rows(cpu: bool) -> list[tuple[str, str, dict[str, Any], SearchSpace]]:
    """(space, label, overrides, space) of every grid row and tpe_joint corner (``paper_ablation`` only on CPU)."""
    rows = []
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        if cpu and path.stem != "paper_ablation":  # tests/test_every_row.py steps every row on CPU
            continue
        space = load_space(path)
        if cpu:
            space = space.with_local_towers()
        if space.search == "optuna":
            points = [(",".join(f"{k.split('.')[-1]}={v}" for k, v in c.items()), c) for c in _corners(space.optuna)]
        else:
            points = space.grid_points()
        if cpu:  # the extremes only: the largest model without, and with, the joint decoder
            points = [(label, o) for label, o in points if label in CPU_ROWS]
        rows += [(path.stem, label, overrides, space) for label, overrides in points]
    return rows


def _row_model(cfg: TrainConfig, cpu: bool) -> tuple[DERI, TextTower | None, int]:
    """The row's DERI with the cluster towers' sizes (CPU: the package's local towers)."""
    model_cfg = cfg.model
    if model_cfg.loss.w_cap > 0 and not cpu:
        import dataclasses

        distil = ReportDecoderConfig(name="tiny", tiny_layers=6, tiny_heads=12, tiny_embd=768,
                                     feature=model_cfg.report_decoder.feature,
                                     max_length=model_cfg.report_decoder.max_length)  # fmt: skip
        model_cfg = dataclasses.replace(model_cfg, report_decoder=distil)
    if caching_applies(model_cfg.text):
        hidden = 384 if cpu else 768
        return DERI(model_cfg, text_hidden_size=hidden), None, hidden
    tower = TextTower(model_cfg.text) if cpu else bert_base(model_cfg.text)
    return DERI(model_cfg, text_tower=tower), tower, tower.hidden_size


def _row_step(model: DERI, cfg: TrainConfig, tower: TextTower | None, hidden: int, batch: int, device: torch.device):
    """One bf16 (CPU: fp32) training step at ``batch``, text padded to ``text.max_length``."""
    g = torch.Generator().manual_seed(0)
    n, length = cfg.model.text.max_length, cfg.model.ecg.num_samples
    ecg = torch.randn(batch, 12, length, generator=g).to(device)
    texts = [". ".join(STATEMENTS[(i + j) % len(STATEMENTS)] for j in range(3)) for i in range(batch)]
    if tower is None:
        inputs = {
            "pooled": torch.randn(batch, hidden, generator=g).to(device),
            "tokens": torch.randn(batch, n, hidden, generator=g).to(device),
            "token_mask": torch.ones(batch, n, dtype=torch.bool, device=device),
        }
    else:
        enc = tower.tokenizer(texts, padding="max_length", truncation=True, max_length=n, return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    if model.decoder is not None:
        ids, mask = model.decoder.tokenize(texts)
        inputs.update(caption_ids=ids.to(device), caption_mask=mask.to(device))
    optimizer, _ = build_optimizer(model, cfg.optim)
    dtype = autocast_dtype("auto", device)
    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        terms = DeriLoss(cfg.model.loss)(model(ecg, **inputs))
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    loss = float(terms["total"].detach())
    del optimizer, terms, inputs, ecg
    return loss


def check_rows(report: Report, device: torch.device, sizes: Sizes) -> None:
    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory if cuda else 0
    results, failed = [], 0
    for space_name, label, overrides, space in shipped_rows(cpu=not cuda):
        cfg = space.train_config(overrides, space.seeds[0])
        cfg = apply_overrides(cfg, [f"optim.batch_size={sizes.batch}", f"model.ecg.num_samples={sizes.length}"])
        estimate = estimate_gpu_memory(cfg)["estimate_gb"] if cuda else None
        row: dict[str, Any] = {"space": space_name, "row": label, "estimate_gb": estimate}
        try:
            model, tower, hidden = _row_model(cfg, cpu=not cuda)
            model = model.to(device).train()
            for cap in CAPS_GB if cuda else (None,):
                if cap is not None:
                    torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 1e9 / total), device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                key = f"{cap:g}GB" if cap else "cpu"
                try:
                    loss = _row_step(model, cfg, tower, hidden, sizes.batch, device)
                    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
                    row[key] = {"fits": bool(np.isfinite(loss)), "peak_gb": peak, "loss": loss}
                except torch.cuda.OutOfMemoryError:
                    row[key] = {"fits": False, "peak_gb": None}
                model.zero_grad(set_to_none=True)
            del model, tower
        except Exception as exc:  # a row that cannot build or step: recorded, the others go on
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
                torch.cuda.empty_cache()
        failed += "error" in row or not all(v["fits"] for k, v in row.items() if k.endswith("GB") or k == "cpu")
        results.append(row)
    lines = []
    for r in results:
        cells = []
        for k in [f"{c:g}GB" for c in CAPS_GB] if cuda else ["cpu"]:
            v = r.get(k, {})
            peak = f" {v['peak_gb']:.1f} GB" if v.get("peak_gb") is not None else ""
            cells.append(f"{k}: {'fits' if v.get('fits') else 'NO'}{peak}")
        est = f" est {r['estimate_gb']:.1f} GB" if r["estimate_gb"] is not None else ""
        lines.append(f"{r['space']}:{r['row']}{est} | {' | '.join(cells)}{' | ' + r['error'] if 'error' in r else ''}")
    at_24 = [r for r in results if cuda and not r.get("24GB", {}).get("fits")]
    status = "ok" if not any("error" in r for r in results) and not at_24 else "FAIL"
    detail = f"{len(results)} rows at batch {sizes.batch}, {sizes.length} samples; {failed} not fitting or failing"
    report.add("rows", status, detail + "\n    " + "\n    ".join(lines), rows=results)


def check_breakdown(report: Report, device: torch.device, sizes: Sizes, cache: Path) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device.type == "cuda"
    cfg = train_config(cache, sizes)
    from deri_sweep.train.recipe import prepare_text

    text, tower, hidden = prepare_text(cfg, WorkerInfo(device=device))
    sc = SignalCache.open(cache)
    rows = _rows(sc, "train")
    rows = np.tile(rows, int(np.ceil(sizes.batch * (sizes.steps + 2) / len(rows))))
    dataset = CacheDataset(sc, rows, cfg.data.norm, text=text.loader_text(device), wire16=cuda)
    loader = _loader(dataset, sizes.batch, WorkerInfo(device=device), cfg, shuffle=True)
    started = time.perf_counter()
    count = 0
    for batch in itertools.islice(loader, sizes.steps):
        count += len(batch["report_id"])
    loader_rate = count / (time.perf_counter() - started)

    torch.manual_seed(0)
    model = DERI(cfg.model, text_tower=tower, text_hidden_size=None if tower else hidden).to(device).train()
    loss_fn = DeriLoss(cfg.model.loss)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    dtype = autocast_dtype(cfg.optim.precision, device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    host, gpu_ms, flops = [], [], 0.0
    it = iter(loader)
    # two warm-up steps (cuDNN autotuning, the first step's FLOPs counted), then the timed ones
    for step in range(sizes.steps + 2):
        t0 = time.perf_counter()
        batch = next(it)
        ecg = batch_signals(batch, device)
        inputs = text.batch_inputs(model, batch, device)
        t1 = time.perf_counter()
        if step >= 2:
            host.append(t1 - t0)
        counter = FlopCounterMode(display=False) if step == 0 else contextlib.nullcontext()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        with counter, torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            terms = loss_fn(model(ecg, **inputs))
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
        optimizer.step()
        scheduler.step()
        if cuda:
            end.record()
        if step == 0:
            flops = float(counter.get_total_flops())
        if step == 1:
            _sync(device)
            wall_start = time.perf_counter()
        if step >= 2 and cuda:
            gpu_ms.append((begin, end))
    _sync(device)
    wall = (time.perf_counter() - wall_start) / sizes.steps
    figures: dict[str, Any] = {
        "loader_samples_per_s": loader_rate,
        "loader_workers": sizes.loader_workers,
        "host_ms": statistics.median(host) * 1e3,
        "step_ms": wall * 1e3,
        "samples_per_s": sizes.batch / wall,
        "gflop_per_step": flops / 1e9,
    }
    detail = (
        f"loader alone {loader_rate:,.0f} samples/s ({sizes.loader_workers} workers); host {figures['host_ms']:.1f} "
        f"ms/step; step {wall * 1e3:.1f} ms; {figures['samples_per_s']:,.0f} samples/s"
    )
    if cuda:
        from bench_pretrain import peak_flops

        gpu = statistics.median(b.elapsed_time(e) for b, e in gpu_ms)
        peak, source = peak_flops(device, 0.0)
        figures.update(gpu_ms=gpu, gpu_busy=gpu / (wall * 1e3), mfu=(flops / wall / peak) if peak else None)
        detail += f"; GPU {gpu:.1f} ms/step, busy {figures['gpu_busy']:.0%}"
        detail += f"; MFU {figures['mfu']:.1%} ({source})" if peak else f"; MFU n/a ({source})"
    else:
        detail += "; GPU time, busy fraction, MFU: skipped (CUDA only)"
    report.add("breakdown", "ok", detail, **figures)


def check_precision(report: Report, device: torch.device, sizes: Sizes, cache: Path) -> None:
    cfg = train_config(cache, sizes)
    from deri_sweep.train.recipe import prepare_text

    text, tower, hidden = prepare_text(cfg, WorkerInfo(device=device))
    sc = SignalCache.open(cache)
    batch = CacheDataset(sc, _rows(sc, "train"), cfg.data.norm, text=text.loader_text(device)).__getitems__(
        list(range(sizes.batch))
    )
    torch.manual_seed(0)
    model = DERI(cfg.model, text_tower=tower, text_hidden_size=None if tower else hidden).to(device).eval()
    loss_fn = DeriLoss(cfg.model.loss)
    with torch.no_grad():
        ecg, inputs = batch_signals(batch, device), text.batch_inputs(model, batch, device)
        fp32 = float(loss_fn(model(ecg, **inputs))["total"])
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = float(loss_fn(model(ecg, **inputs))["total"])
    diff = abs(bf16 - fp32)
    status = "ok" if diff <= 0.02 * max(1.0, abs(fp32)) else "FAIL"
    report.add("precision", status, f"loss fp32 {fp32:.5f}, bf16 autocast {bf16:.5f}, |diff| {diff:.2e}",
               fp32=fp32, bf16=bf16)  # fmt: skip


def check_text_build(report: Report, device: torch.device, sizes: Sizes, tmp: Path) -> None:
    root = tmp / "text-build"
    root.mkdir()
    rng = np.random.default_rng(1)
    texts = [". ".join(rng.choice(STATEMENTS, size=rng.integers(1, 6), replace=True)) + f" {i}."
             for i in range(sizes.text_reports)]  # fmt: skip
    pd.DataFrame({"report_id": np.arange(len(texts)), "text": texts}).to_parquet(root / "reports.parquet")
    cuda = device.type == "cuda"
    text_cfg = TextConfig(name="bert-base-random" if cuda else "embedded")
    tower = bert_base(text_cfg) if cuda else TextTower(text_cfg)
    started = time.perf_counter()
    out = build_text_features(root, tower, device=device, progress=False)
    _sync(device)
    rate = len(texts) / (time.perf_counter() - started)
    store = TextFeatureStore(out)
    report.add("text_build", "ok", f"{rate:,.0f} reports/s ({len(texts)} reports, {'BERT-base' if cuda else 'MiniLM'} "
               f"tower, H={store.hidden_size}, on {device.type})", reports_per_s=rate)  # fmt: skip


def check_probe_features(report: Report, device: torch.device, sizes: Sizes, cache: Path) -> None:
    from deri_sweep.evaluate.features import extract_features

    cfg = train_config(cache, sizes)
    torch.manual_seed(0)
    model = DERI(cfg.model, text_hidden_size=384)
    sc = SignalCache.open(cache)
    rates, feats = {}, {}
    for where in ("cpu", "cuda") if device.type == "cuda" else ("cpu",):
        started = time.perf_counter()
        feats[where] = extract_features(model, sc, "mix", batch_size=64, device=where, progress=False)
        rates[where] = len(sc) / (time.perf_counter() - started)
    detail = ", ".join(f"{k} {v:,.0f} records/s" for k, v in rates.items())
    if "cuda" in feats:
        diff = float(np.abs(feats["cuda"] - feats["cpu"]).max())
        detail += f"; max |GPU - CPU| {diff:.2e} (TF32 convolutions allowed)"
    else:
        detail += "; GPU: skipped (CUDA only)"
    report.add("probe_features", "ok", detail, records_per_s=rates)


def check_ray_epoch(report: Report, device: torch.device, sizes: Sizes, cache: Path, tmp: Path) -> None:
    import ray

    from deri_sweep.orchestration.runtime import init_ray
    from deri_sweep.orchestration.trainer import TrialResources, build_trainer

    cfg = train_config(cache, sizes, **{"optim.epochs": 1})
    init_ray(num_cpus=min(8, os.cpu_count() or 1), num_gpus=1)
    try:
        started = time.perf_counter()
        resources = TrialResources(workers=1, gpus_per_worker=1, cpus_per_worker=min(4, os.cpu_count() or 1))
        result = build_trainer(cfg, resources, storage=str(tmp / "ray"), name="gpu-check").fit()
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    metrics = result.metrics or {}
    ok = result.error is None and metrics.get("epoch") == 1.0 and metrics.get("gpu_hours", 0) > 0
    report.add("ray_epoch", "ok" if ok else "FAIL", f"1 worker x 1 GPU, 1 epoch in {seconds:.0f} s; "
               f"val_total {metrics.get('val_total')}; error {result.error}", seconds=seconds)  # fmt: skip


def check_bench_gpu(report: Report, device: torch.device, sizes: Sizes) -> None:
    done = subprocess.run([sys.executable, str(HERE / "bench_gpu.py"), "--quick"], capture_output=True, text=True,
                          timeout=330, check=False)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    status = "ok" if done.returncode == 0 and lines and lines[-1].startswith("ratio:") else "FAIL"
    report.add("bench_gpu", status, "\n    " + "\n    ".join(lines[-12:] or done.stderr.splitlines()[-12:]),
               stdout=done.stdout, stderr=done.stderr[-4000:])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the table, write the JSON; 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CI mode: tiny sizes, CUDA-only checks skipped")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file written")
    parser.add_argument("--skip", nargs="*", default=[], help="checks not to run (by name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu for the CPU checks", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    sizes = CPU_SIZES if args.cpu else GPU_SIZES
    report = Report()
    report.data["mode"] = "cpu" if args.cpu else "cuda"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        cache = write_cache(tmp / "cache", sizes)
        checks: list[tuple[str, bool, Callable[[], None]]] = [
            ("env", False, lambda: check_env(report, device, sizes)),
            ("recipe", False, lambda: check_recipe(report, device, sizes, cache, tmp)),
            ("rows", False, lambda: check_rows(report, device, sizes)),
            ("breakdown", False, lambda: check_breakdown(report, device, sizes, cache)),
            ("precision", False, lambda: check_precision(report, device, sizes, cache)),
            ("text_build", False, lambda: check_text_build(report, device, sizes, tmp)),
            ("probe_features", False, lambda: check_probe_features(report, device, sizes, cache)),
            ("ray_epoch", True, lambda: check_ray_epoch(report, device, sizes, cache, tmp)),
            ("bench_gpu", True, lambda: check_bench_gpu(report, device, sizes)),
        ]
        for name, cuda_only, run in checks:
            if name in args.skip:
                report.add(name, "skipped", "--skip")
            elif cuda_only and args.cpu:
                report.add(name, "skipped", "CUDA only")
            else:
                check_started = time.perf_counter()
                try:
                    run()
                except Exception as exc:  # every check runs; the failure is in the table and the JSON
                    report.add(name, "FAIL", f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                report.data[name]["seconds"] = round(time.perf_counter() - check_started, 1)
    report.data["seconds"] = round(time.perf_counter() - started, 1)
    if args.cpu:
        report.add("memory_caps", "skipped", "CUDA only (set_per_process_memory_fraction at 24 and 40 GB)")
    print(report.table())
    args.out.write_text(json.dumps(report.data, indent=2, default=str))
    print(f"wrote {args.out} ({report.data['seconds']:.0f} s)")
    return 1 if any(status == "FAIL" for _, status, _ in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""One-shot GPU benchmark of the DERI pretraining step at the spec's shapes, against the reference computation.

Both paths run in the same process on the same device, on the same ECG batches, with the
project's own model (``deri_sweep.model.DERI``), loss (``deri_sweep.train.losses.DeriLoss``),
optimiser and schedule (``deri_sweep.train.engine.build_optimizer``: AdamW + per-iteration
cosine warm restarts) and training step (``deri_sweep.train.engine.train_epoch``):

- ours: what pretraining runs on a GPU: bf16 autocast (``optim.precision: auto``), a DERI
  WITHOUT a text tower, text inputs from the fp16 feature cache padded to the longest
  report of the batch (``TextFeatureStore`` via ``engine.TextSource``);
- reference, as the DERI authors train: fp16 autocast with ``torch.amp.GradScaler``, the
  frozen text tower run every step on reports tokenised with ``padding="max_length"`` to
  256 tokens (so decode_e also sees 256 masked tokens).

Shapes on CUDA (spec sections 2 and 6): batch 512 per GPU, 12 leads x 5000 samples, and a
text tower of MedCPT's shape (BERT-base: 12 layers x 768, 12 heads, FFN 3072) built from a
``transformers.BertConfig`` with random weights (the hub is unreachable; timing does not
depend on the weights) and the BERT vocabulary of the embedded tokenizer. ECG signals,
reports and their repetition come from a synthetic MIMIC-IV-ECG root prepared into a
signal cache in a temporary folder; its text features are built once, as pretraining does.
The tower, the batch construction and the timed text sources are those of
``benchmarks/bench_pretrain.py`` (imported from it).

Measured per path:

- samples/s: batch over the median wall time of ``--steps`` engine steps (after one
  untimed FLOP-counted step and ``--warmup`` untimed steps; the paths alternate step by
  step so that drifts hit both alike);
- step-time breakdown: ``--steps`` more steps of an instrumented copy of the engine's step
  with a device synchronisation after each phase: data to device (ECG copy + text inputs:
  feature-cache gather or tokenisation, and their copy), forward (model + loss under
  autocast), backward (zero_grad + backward, scaled for fp16), optimizer (GradScaler
  unscale/step/update or AdamW step, scheduler step, loss read-out); the phases' sum is a
  little above the unsynchronised step;
- model FLOP utilisation: FLOPs of one step (``torch.utils.flop_counter``, forward +
  backward, the frozen tower's forward included for the reference) over the median step
  time, against the device's dense bf16 peak, from ``bench_pretrain.PEAK_BF16_TFLOPS`` by
  device name (NVIDIA datasheets, dense, no sparsity: H100 SXM / H200 989 TFLOP/s, H100
  PCIe 756, A100 312; A10G taken as the A10's 125, NVIDIA publishes no A10G figure; fp16
  has the same dense peak on these parts) or ``--peak-tflops``;
- peak memory: ``torch.cuda.max_memory_allocated`` over the path's steps (both models stay
  resident, so it includes the other path's weights; the part above the memory allocated
  before the step is printed too).

On CPU (no CUDA, or ``--device cpu``) it runs a tiny smoke of itself, so that CI keeps it
working: batch 4, 1000-sample signals (the first 1000 of each record), a 2-layer 64-wide
BERT tower, one or two timed steps per path, fp32 on both paths (CPU bf16/fp16 autocast
ran ~5x slower than fp32 here; the reference keeps its GradScaler, so that code path runs);
its figures are NOT GPU figures and the script says so. ``OMP_WAIT_POLICY`` is
set to ``PASSIVE`` unless already set (see ``bench_pretrain.py``).

Usage: ``python benchmarks/bench_gpu.py [--quick] [--device auto|cpu|cuda] [--steps N]
[--batch-size B] [--peak-tflops T]``. The last line is ``ratio: X``: the reference's median
step time over ours (higher is better for ours).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (see bench_pretrain.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from bench_pretrain import (
    CPU_ATTENTION_FLOPS,
    MAX_LENGTH,
    MaxLengthTextSource,
    PathRun,
    TimedTextSource,
    build_path,
    build_tower,
    make_batches,
    peak_flops,
    resolve_device,
    synchronize,
)
from torch.utils import flop_counter
from transformers import BertConfig, BertModel

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.synth import write_all
from deri_sweep.model.config import ECGConfig, ModelConfig, TextConfig
from deri_sweep.model.text_cache import TextFeatureStore, build_text_features
from deri_sweep.model.text_tower import TextTower, load_tokenizer
from deri_sweep.train.engine import autocast_dtype, train_epoch
from deri_sweep.train.losses import DeriLoss

#: Phases of the instrumented step, in order.
PHASES = ("data to device", "forward", "backward", "optimizer")
#: Distinct ECG batches held in (pinned) host memory; the steps cycle through them.
DISTINCT_BATCHES = 6


@dataclass(frozen=True)
class Shapes:
    """What one run measures at.

    Attributes:
        batch_size: samples per step B (both arms).
        num_samples: signal length L of the ECG batches (B, 12, L).
        records: synthetic MIMIC-IV-ECG records behind the cache.
        steps: timed engine steps per arm, and as many breakdown steps.
        warmup: untimed warm-up steps per arm after the FLOP-counted one.
        smoke: the CPU smoke (tiny shapes, not GPU figures).
    """

    batch_size: int
    num_samples: int
    records: int
    steps: int
    warmup: int
    smoke: bool


@dataclass
class Arm:
    """One arm of the comparison: its engine pieces, autocast recipe and what was measured."""

    run: PathRun
    recipe: str
    precision: str
    scaler: torch.amp.GradScaler | None
    flops: float = 0.0
    steps_s: list[float] = field(default_factory=list)
    phases_s: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    peak_bytes: int = 0
    above_bytes: int = 0

    @property
    def step_s(self) -> float:
        """Median step time of the engine steps."""
        return statistics.median(self.steps_s)


def build_tiny_tower(seed: int) -> TextTower:
    """A randomly initialised 2-layer, 64-wide BERT tower (CPU smoke) with the embedded BERT vocabulary."""
    tokenizer = load_tokenizer("embedded")
    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    cfg = TextConfig(name="bert-tiny-random", max_length=MAX_LENGTH, pooling="pooler")
    return TextTower(cfg, model=BertModel(bert), tokenizer=tokenizer)


def engine_steps(arm: Arm, loss_fn: DeriLoss, batches: list[dict], device: torch.device) -> list[float]:
    """Run the engine's training step on ``batches``; returns each step's wall time (s)."""
    stamps: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    train_epoch(
        arm.run.model,
        loss_fn,
        batches,
        arm.run.text,
        arm.run.optimizer,
        arm.run.scheduler,
        device=device,
        precision=arm.precision,
        scaler=arm.scaler,
        on_step=lambda _step, _terms: stamps.append(time.perf_counter()),  # after the loss read-out (a sync)
    )
    return [float(x) for x in np.diff([start, *stamps])]


def instrumented_step(arm: Arm, loss_fn: DeriLoss, batch: dict, device: torch.device) -> dict[str, float]:
    """One step as ``engine.train_epoch`` takes it, synchronised after each phase; returns seconds per phase."""
    run, model = arm.run, arm.run.model
    dtype = autocast_dtype(arm.precision, device)
    model.train()
    marks = []
    synchronize(device)
    marks.append(time.perf_counter())
    ecg = batch["ecg"].to(device, non_blocking=True)  # (B, 12, L)
    inputs = run.text.inputs(model, batch["report_id"], device)
    synchronize(device)
    marks.append(time.perf_counter())
    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        terms = loss_fn(model(ecg, **inputs))
    synchronize(device)
    marks.append(time.perf_counter())
    run.optimizer.zero_grad(set_to_none=True)
    if arm.scaler is not None:
        arm.scaler.scale(terms["total"]).backward()
    else:
        terms["total"].backward()
    synchronize(device)
    marks.append(time.perf_counter())
    if arm.scaler is not None:
        arm.scaler.unscale_(run.optimizer)
        arm.scaler.step(run.optimizer)
        arm.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    _ = {k: float(v.detach()) for k, v in terms.items()}
    synchronize(device)
    marks.append(time.perf_counter())
    return {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}


def measure(arms: list[Arm], loss_fn: DeriLoss, batches: list[dict], shapes: Shapes, device: torch.device) -> None:
    """FLOP-count, warm up, then time engine steps and instrumented steps, alternating the arms."""
    cuda = device.type == "cuda"
    for arm in arms:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        with counter:
            engine_steps(arm, loss_fn, batches[:1], device)
        arm.flops = float(counter.get_total_flops())
    for i in range(shapes.warmup):
        for arm in arms:
            engine_steps(arm, loss_fn, [batches[(1 + i) % len(batches)]], device)
    for i in range(shapes.steps):
        batch = batches[i % len(batches)]
        for arm in arms:
            if cuda:
                synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            arm.steps_s += engine_steps(arm, loss_fn, [batch], device)
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                arm.peak_bytes = max(arm.peak_bytes, peak)
                arm.above_bytes = max(arm.above_bytes, peak - before)
    for i in range(shapes.steps):
        batch = batches[(i + 1) % len(batches)]
        for arm in arms:
            for phase, seconds in instrumented_step(arm, loss_fn, batch, device).items():
                arm.phases_s[phase].append(seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps (CUDA: 4 timed + 1 warm-up at the full shapes, 400 records; CPU: 1 timed, no warm-up)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where both paths run (auto: cuda if available); cpu runs the tiny smoke, not GPU figures",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed engine steps per path, and as many instrumented breakdown steps (default 10 on CUDA, 2 on CPU; "
        "4 and 1 with --quick)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="samples per step, both paths (default 512 on CUDA, the spec's per-GPU batch; 4 on CPU)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the device's dense bf16 peak in TFLOP/s for the MFU (default: from a table by CUDA device name)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=-1,
        help="untimed warm-up steps per path (default 2 on CUDA, 1 with --quick; 0 on CPU)",
    )
    parser.add_argument(
        "--records", type=int, default=0, help="synthetic MIMIC-IV-ECG records (default 1000; 400 quick; 60 on CPU)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data, weights and batch draw")
    args = parser.parse_args()
    if args.steps < 0 or args.batch_size < 0:
        parser.error("--steps and --batch-size must be >= 1")
    return args


def resolve_shapes(args: argparse.Namespace, device: torch.device) -> Shapes:
    """The run's shapes: the spec's on CUDA, a tiny smoke on CPU."""
    if device.type == "cuda":
        return Shapes(
            batch_size=args.batch_size or 512,
            num_samples=5000,
            records=args.records or (400 if args.quick else 1000),
            steps=args.steps or (4 if args.quick else 10),
            warmup=args.warmup if args.warmup >= 0 else (1 if args.quick else 2),
            smoke=False,
        )
    return Shapes(
        batch_size=args.batch_size or 4,
        num_samples=1000,
        records=args.records or 60,
        steps=args.steps or (1 if args.quick else 2),
        warmup=args.warmup if args.warmup >= 0 else 0,
        smoke=True,
    )


def gib(n: int) -> float:
    """Bytes to GiB."""
    return n / 2**30


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    shapes = resolve_shapes(args, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        write_all(tmp / "synth", seed=args.seed, sizes={"mimic": shapes.records}, datasets=("mimic",))
        workers = max(1, min(8, (os.cpu_count() or 1) // 2))
        prepare(tmp / "synth" / "mimic-iv-ecg", tmp / "cache", PrepareOptions("mimic", workers=workers, progress=False))
        cache = SignalCache.open(tmp / "cache")
        tower = build_tiny_tower(args.seed) if shapes.smoke else build_tower(args.seed)
        features = build_text_features(tmp / "cache", tower, batch_size=128, device=device, progress=False)
        store = TextFeatureStore(features)
        texts = pd.read_parquet(tmp / "cache" / "reports.parquet").sort_values("report_id")["text"].tolist()
        batches, train_reports = make_batches(
            cache, min(DISTINCT_BATCHES, 1 + shapes.warmup + shapes.steps), shapes.batch_size, args.seed, pin=cuda
        )
        if shapes.num_samples < batches[0]["ecg"].shape[-1]:  # smoke: the first samples of each record
            for batch in batches:
                batch["ecg"] = batch["ecg"][..., : shapes.num_samples].contiguous()  # (B, 12, L)
        setup_s = time.perf_counter() - start

        cfg = ModelConfig(ecg=ECGConfig(num_samples=shapes.num_samples), text=tower.cfg)
        loss_fn = DeriLoss(cfg.loss)
        # CPU smoke: fp32 compute (CPU bf16/fp16 autocast is ~5x slower here), the GradScaler path kept
        ours_precision, ref_precision = ("fp32", "fp32") if shapes.smoke else ("bf16", "fp16")
        ours = Arm(
            build_path("ours", cfg, TimedTextSource(texts, store), device, text_hidden_size=tower.hidden_size),
            f"{ours_precision} autocast, cached text features, dynamic padding".replace("fp32 autocast", "fp32"),
            ours_precision,
            None,
        )
        ref = Arm(
            build_path("reference", cfg, MaxLengthTextSource(texts), device, text_tower=tower),
            f"{ref_precision} autocast + GradScaler, text tower every step at {MAX_LENGTH} tokens".replace(
                "fp32 autocast", "fp32"
            ),
            ref_precision,
            torch.amp.GradScaler(device.type),
        )
        arms = [ours, ref]
        measure(arms, loss_fn, batches, shapes, device)

    lengths = store.lengths[train_reports]
    widths = [int(store.lengths[b["report_id"].numpy()].max()) for b in batches]
    if shapes.smoke:
        print(
            "CPU SMOKE RUN (no CUDA): tiny shapes to keep the script working; these are NOT GPU figures "
            f"(CPU, {torch.get_num_threads()} threads)"
        )
        where = f"CPU; batch {shapes.batch_size}, 12 x {shapes.num_samples} samples, 2-layer 64-wide BERT tower"
    else:
        where = (
            f"{torch.cuda.get_device_name(device)}; batch {shapes.batch_size}, 12 x {shapes.num_samples} samples, "
            "BERT-base tower (12 x 768, random weights, MedCPT's shape)"
        )
    print(f"device: {where}; torch {torch.__version__}")
    print(
        f"data: {shapes.records} synthetic MIMIC records, {len(store)} unique reports, report length median "
        f"{np.median(lengths):.0f} / max {lengths.max()} tokens; ours pads batches to {min(widths)}-{max(widths)} "
        f"tokens, the reference to {MAX_LENGTH}; setup {setup_s:.1f} s"
    )
    print(
        f"per path: 1 FLOP-counted + {shapes.warmup} warm-up + {shapes.steps} timed engine steps (median), "
        f"then {shapes.steps} synchronised breakdown steps (median per phase)"
    )
    peak, peak_src = peak_flops(device, args.peak_tflops) if cuda else (None, "")
    for arm in arms:
        achieved = arm.flops / arm.step_s
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        memory = (
            f"{gib(arm.peak_bytes):.2f} GiB ({gib(arm.above_bytes):.2f} GiB above the step's start)"
            if cuda
            else "n/a on CPU"
        )
        print(
            f"{arm.run.name:<9}: {arm.recipe}: step {arm.step_s * 1e3:.1f} ms, "
            f"{shapes.batch_size / arm.step_s:,.2f} samples/s, {arm.flops / shapes.batch_size / 1e9:.2f} "
            f"GFLOP/sample, {achieved / 1e12:.3f} TFLOP/s, MFU {mfu}, peak memory {memory}"
        )
    for arm in arms:
        medians = {phase: statistics.median(s) * 1e3 for phase, s in arm.phases_s.items()}
        parts = " | ".join(f"{phase} {ms:.1f} ms" for phase, ms in medians.items())
        print(f"breakdown {arm.run.name:<9}: {parts} | sum {sum(medians.values()):.1f} ms")
    print(
        "data to device: copy of a batch already in (pinned) host memory + the text inputs (ours: feature-cache "
        f"gather; reference: tokenise to {MAX_LENGTH}); reading the signal cache is bench_data.py's subject"
    )
    if cuda:
        print(f"MFU against {peak / 1e12:.0f} TFLOP/s dense bf16 ({peak_src})" if peak else f"MFU: {peak_src}")
    print(f"FLOP ratio reference/ours per step: {ref.flops / ours.flops:.2f}")
    print(f"ratio: {ref.step_s / ours.step_s:.2f}")


if __name__ == "__main__":
    main()

"""Pretraining step throughput: cached text features + dynamic padding against the reference computation.

Both paths run the same DERI training step (``deri_sweep.train.engine.train_epoch``: forward,
weighted DERI loss, backward, AdamW step, scheduler step) on the same ECG batches, in
the same process and on the same device; only the text side differs:

- ours: a DERI built WITHOUT a text tower (``text_hidden_size=768``); text inputs come
  from the fp16 feature cache (``TextFeatureStore.batch`` via ``engine.TextSource``),
  padded only to the longest report of the batch;
- reference: a DERI WITH the frozen text tower (eval mode, no grad); every step
  tokenises the reports with ``padding="max_length"`` to 256 tokens and runs the tower,
  so decode_e also sees 256 (masked) tokens, as the authors' code does.

The text tower has the shape of the spec's MedCPT / BERT-base (12 layers x 768, 12
heads, FFN 3072) with random weights (timing does not depend on them) and the BERT
vocabulary of the embedded all-MiniLM-L6-v2 tokenizer. Reports, their lengths and their
repetition come from a synthetic MIMIC-IV-ECG root written to a temporary folder and
prepared into a signal cache, whose ECG signals also feed both paths.

Measured, per path: training samples/s from the median step time of ``--steps`` timed
steps (after one untimed FLOP-counted step and ``--warmup`` untimed ones; the two paths'
steps alternate, so a drift in background load hits both alike); the host time of the
text inputs inside the step (cache gather or tokenisation, plus the copy to the device);
and the model FLOPs per sample of one step counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention; forward and
backward). The FLOP ratio bounds the speed-up: the frozen tower is ~75% of a reference
step at 256 tokens (spec section 10), so ~5x at equal FLOP/s. On CUDA both paths are also
timed under bf16 autocast, with the model FLOPs utilisation (achieved FLOP/s over the
device's dense bf16 peak from a table by device name, or ``--peak-tflops``).

On CPU the script sets ``OMP_WAIT_POLICY=PASSIVE`` unless already set: on a shared,
oversubscribed machine spinning OpenMP threads slowed the ECG step's many short
conv/BN parallel regions by up to ~10x and made the ratio meaningless.

Usage: ``python benchmarks/bench_pretrain.py [--quick] [--device auto|cpu|cuda] [--batch-size B]``.
The last line is ``ratio: X``: our samples/s over the reference's samples/s (fp32, the
first table row pair). Target >= 4x on the same device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (see the module docstring); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from torch.utils import flop_counter
from transformers import BertConfig, BertModel

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.synth import write_all
from deri_sweep.model.config import ModelConfig, TextConfig
from deri_sweep.model.deri import DERI
from deri_sweep.model.text_cache import TextFeatureStore, build_text_features
from deri_sweep.model.text_tower import TextTower, load_tokenizer
from deri_sweep.train.engine import TextSource, build_optimizer, train_epoch, unwrap
from deri_sweep.train.losses import DeriLoss
from deri_sweep.train.train_config import OptimConfig

#: Dense bf16 peak (TFLOP/s, no sparsity) by a substring of ``torch.cuda.get_device_name()``; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("A10G", 125.0),
)

#: Reference tokenisation length (spec section 2).
MAX_LENGTH = 256


@dataclass
class TimedTextSource(TextSource):
    """The engine's text source (cache + dynamic padding when ``store`` is set), timing each call."""

    seconds: list[float] = field(default_factory=list)

    def inputs(self, model: torch.nn.Module, report_ids: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Text keyword arguments of ``DERI.forward`` for report ids (B,), on ``device``."""
        start = time.perf_counter()
        out = self.text_inputs(model, report_ids, device)
        self.seconds.append(time.perf_counter() - start)
        return out

    def text_inputs(
        self, model: torch.nn.Module, report_ids: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """The inputs themselves (here: the engine's)."""
        return super().inputs(model, report_ids, device)


class MaxLengthTextSource(TimedTextSource):
    """Raw-text inputs padded to ``max_length`` every step, as the reference tokenises (the tower then runs)."""

    def text_inputs(
        self, model: torch.nn.Module, report_ids: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` (B, 256) for a batch of report ids (B,)."""
        tower = unwrap(model).text
        texts = [self.texts[i] for i in report_ids.tolist()]
        enc = tower.tokenizer(
            texts, padding="max_length", truncation=True, max_length=tower.cfg.max_length, return_tensors="pt"
        )
        return {k: enc[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask")}


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: FlopCounterMode has no formula for the CPU flash-attention kernels (torch 2.13); count them like the CUDA ones.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


@dataclass
class PathRun:
    """One path's model, optimiser and text source."""

    name: str
    model: DERI
    text: TimedTextSource
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Timing:
    """Median step time and the FLOPs of one step of a path at one precision."""

    path: str
    precision: str
    step_s: float
    flops: float
    batch_size: int
    tower_flops: float
    text_s: float

    @property
    def samples_per_s(self) -> float:
        """Training samples per second."""
        return self.batch_size / self.step_s


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False; use --device cpu or auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_tower(seed: int) -> TextTower:
    """A randomly initialised BERT-base-shaped tower with the embedded BERT-vocabulary tokenizer."""
    tokenizer = load_tokenizer("embedded")
    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    cfg = TextConfig(name="bert-base-random", max_length=MAX_LENGTH, pooling="pooler")
    return TextTower(cfg, model=BertModel(bert), tokenizer=tokenizer)


def build_path(name: str, cfg: ModelConfig, text: TimedTextSource, device: torch.device, **model_kwargs) -> PathRun:
    torch.manual_seed(0)  # same ECG-side initial weights on both paths
    model = DERI(cfg, **model_kwargs).to(device)
    optimizer, scheduler = build_optimizer(model, OptimConfig())
    return PathRun(name, model, text, optimizer, scheduler)


def run_steps(
    run: PathRun, loss_fn: DeriLoss, batches: list[dict], device: torch.device, precision: str
) -> list[float]:
    """Train on ``batches`` with the engine's step; returns each step's wall time in seconds."""
    stamps: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    train_epoch(
        run.model,
        loss_fn,
        batches,  # any iterable of {"ecg", "report_id"} batches
        run.text,
        run.optimizer,
        run.scheduler,
        device=device,
        precision=precision,
        on_step=lambda _step, _terms: stamps.append(time.perf_counter()),  # after the loss sync
    )
    return [float(x) for x in np.diff([start, *stamps])]


def measure(
    runs: list[PathRun],
    loss_fn: DeriLoss,
    batches: list[dict],
    *,
    device: torch.device,
    precision: str,
    warmup: int,
) -> list[Timing]:
    """Time the paths step by step, interleaved, so that background load drifts hit both alike.

    Per path: one FLOP-counted step (``batches[0]``, untimed, it also warms up), ``warmup``
    untimed steps, then one timed step per remaining batch; the median step time is kept.
    """
    counters = {}
    for run in runs:
        counters[run.name] = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        with counters[run.name]:
            run_steps(run, loss_fn, batches[:1], device, precision)
    for batch in batches[1 : 1 + warmup]:
        for run in runs:
            run_steps(run, loss_fn, [batch], device, precision)
    times: dict[str, list[float]] = {run.name: [] for run in runs}
    for run in runs:
        run.text.seconds.clear()
    for batch in batches[1 + warmup :]:
        for run in runs:
            times[run.name] += run_steps(run, loss_fn, [batch], device, precision)
    timings = []
    for run in runs:
        counter = counters[run.name]
        tower = next((v for k, v in counter.get_flop_counts().items() if k.split(".")[-1] == "text"), {})
        timings.append(
            Timing(
                run.name,
                precision,
                statistics.median(times[run.name]),
                float(counter.get_total_flops()),
                len(batches[0]["ecg"]),
                float(sum(tower.values())),
                statistics.median(run.text.seconds),
            )
        )
    return timings


def peak_flops(device: torch.device, override: float) -> tuple[float | None, str]:
    """Peak dense bf16 FLOP/s of ``device`` and where the number came from."""
    if override > 0:
        return override * 1e12, "--peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"table ({key})"
    return None, f"unknown device {name!r}: pass --peak-tflops"


def make_batches(
    cache: SignalCache, count: int, batch_size: int, seed: int, pin: bool
) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """``count`` random training batches {"ecg" (B, 12, 5000), "report_id" (B,)}; also the train report ids."""
    rng = np.random.default_rng(seed)
    train = np.flatnonzero((cache.index["split"] == "train").to_numpy() & (cache.index["report_id"] >= 0).to_numpy())
    report_ids = cache.index["report_id"].to_numpy(np.int64)
    batches = []
    for _ in range(count):
        rows = np.sort(rng.choice(train, batch_size, replace=len(train) < batch_size))
        ecg = cache.signals(rows)  # (B, 12, 5000) float32, min-max per record
        batches.append({"ecg": ecg.pin_memory() if pin else ecg, "report_id": torch.from_numpy(report_ids[rows])})
    return batches, report_ids[train]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 120 records, batch 4, no extra warm-up (the FLOP-counted step warms up), 2 timed steps",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where both paths run (auto: cuda if any)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="samples per step, same for both paths (default: 512, the spec's per-worker batch, on CUDA; "
        "8 on CPU; 4 with --quick)",
    )
    parser.add_argument("--steps", type=int, default=0, help="timed steps per path (default 6; 2 with --quick)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=-1,
        help="untimed warm-up steps per path after the first, FLOP-counted (also untimed) step (default 1; 0 quick)",
    )
    parser.add_argument(
        "--records", type=int, default=0, help="synthetic MIMIC-IV-ECG records (default 1000; 120 with --quick)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: all cores)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="device peak dense bf16 TFLOP/s for the MFU (default: from a table by CUDA device name)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the batch draw")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 6)
    args.warmup = args.warmup if args.warmup >= 0 else (0 if args.quick else 1)
    args.records = args.records or (120 if args.quick else 1000)
    if args.steps < 1 or args.batch_size < 0:
        parser.error("--steps must be >= 1 and --batch-size >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch_size = args.batch_size or (4 if args.quick else 512 if device.type == "cuda" else 8)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        write_all(tmp / "synth", seed=args.seed, sizes={"mimic": args.records}, datasets=("mimic",))
        prepare(tmp / "synth" / "mimic-iv-ecg", tmp / "cache", PrepareOptions("mimic", progress=False))
        cache = SignalCache.open(tmp / "cache")
        tower = build_tower(args.seed)
        features = build_text_features(tmp / "cache", tower, batch_size=64, device=device, progress=False)
        store = TextFeatureStore(features)
        texts = pd.read_parquet(tmp / "cache" / "reports.parquet").sort_values("report_id")["text"].tolist()
        batches, train_reports = make_batches(
            cache, 1 + args.warmup + args.steps, batch_size, args.seed, pin=device.type == "cuda"
        )
        setup_s = time.perf_counter() - start

        cfg = ModelConfig(text=tower.cfg)
        loss_fn = DeriLoss(cfg.loss)
        ours = build_path("ours", cfg, TimedTextSource(texts, store), device, text_hidden_size=tower.hidden_size)
        ref = build_path("reference", cfg, MaxLengthTextSource(texts), device, text_tower=tower)

        precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
        timings: list[Timing] = []
        for precision in precisions:
            timings += measure([ours, ref], loss_fn, batches, device=device, precision=precision, warmup=args.warmup)

    widths = [int(store.lengths[b["report_id"].numpy()].max()) for b in batches]
    lengths = store.lengths[train_reports]
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    print(
        f"device: {where}; torch {torch.__version__}; batch {batch_size}; per path 1 FLOP-counted + "
        f"{args.warmup} warm-up + {args.steps} timed steps (median)"
    )
    print(
        f"data: {args.records} synthetic MIMIC records, {len(store)} unique reports; report length (tokens) "
        f"median {np.median(lengths):.0f}, max {lengths.max()}; ours pads batches to {min(widths)}-{max(widths)} "
        f"tokens, the reference to {MAX_LENGTH} (setup {setup_s:.1f} s)"
    )
    peak, peak_src = peak_flops(device, args.peak_tflops) if device.type == "cuda" else (None, "")
    header = f"{'path':<10} {'precision':<9} {'step ms':>9} {'text-in ms':>10} {'samples/s':>10} {'GFLOP/sample':>13}"
    print(header + f" {'TFLOP/s':>8}" + ("  MFU (bf16 rows)" if peak else ""))
    for t in timings:
        achieved = t.flops / t.step_s
        row = (
            f"{t.path:<10} {t.precision:<9} {t.step_s * 1e3:9.1f} {t.text_s * 1e3:10.1f} {t.samples_per_s:10.2f} "
            f"{t.flops / t.batch_size / 1e9:13.2f} {achieved / 1e12:8.3f}"
        )
        print(row + (f"  {achieved / peak:6.1%}" if peak and t.precision == "bf16" else ""))
    print(
        "text-in: host time of the text inputs inside the step (ours: feature-cache gather + copy; "
        f"reference: tokenise to {MAX_LENGTH} + copy); GFLOP from FlopCounterMode, forward + backward"
    )
    if device.type == "cuda":
        print(f"MFU against {peak / 1e12:.0f} TFLOP/s dense bf16 ({peak_src})" if peak else f"MFU: {peak_src}")
    by = {(t.path, t.precision): t for t in timings}
    flop_ratio = by["reference", "fp32"].flops / by["ours", "fp32"].flops
    print(f"FLOP ratio reference/ours per step: {flop_ratio:.2f} (the speed-up if both ran at the same FLOP/s)")
    share = by["reference", "fp32"].tower_flops / by["reference", "fp32"].flops
    print(f"text tower share of a reference step's FLOPs: {share:.1%}")
    for precision in precisions[1:]:
        bf = by["ours", precision].samples_per_s / by["reference", precision].samples_per_s
        print(f"{precision} ratio ours/reference: {bf:.2f}")
    print(f"ratio: {by['ours', 'fp32'].samples_per_s / by['reference', 'fp32'].samples_per_s:.2f}")


if __name__ == "__main__":
    main()

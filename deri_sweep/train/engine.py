"""Training and validation epochs of DERI pretraining, in plain PyTorch.

The orchestration layer (Ray Train) builds the pieces and calls these; nothing
here knows about Ray. Works on one process or under DDP (``torch.distributed``
initialised by the caller): losses are computed on all-gathered embeddings, so
every worker sees the same training loss; validation means are all-reduced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deri_sweep.model.text_cache import TextFeatureStore
from deri_sweep.train.losses import DeriLoss
from deri_sweep.train.train_config import OptimConfig

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_optimizer(
    model: nn.Module, optim: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over trainable parameters and the per-iteration cosine warm-restart schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=optim.t0, eta_min=optim.eta_min)
    return optimizer, scheduler


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision setting: bf16 on CUDA under ``auto``, none (fp32) on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


@dataclass
class TextSource:
    """Text inputs of a batch, from the feature cache or from the raw report texts.

    Attributes:
        texts: report text per report id (needed without a store, and for captions).
        store: cached features of a frozen tower, or ``None`` to run the tower.
    """

    texts: list[str]
    store: TextFeatureStore | None = None

    def inputs(self, model: nn.Module, report_ids: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``DERI.forward`` for a batch of report ids (B,)."""
        core = unwrap(model)
        out: dict[str, torch.Tensor] = {}
        needs_text = self.store is None or core.decoder is not None
        texts = [self.texts[i] for i in report_ids.tolist()] if needs_text else []
        if self.store is not None:
            pooled, tokens, mask = self.store.batch(report_ids)
            out.update(pooled=pooled, tokens=tokens, token_mask=mask)
        else:
            out.update(core.text.tokenize(texts))
        if core.decoder is not None:
            out["caption_ids"], out["caption_mask"] = core.decoder.tokenize(texts)
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}


@dataclass
class EpochStats:
    """Mean loss terms of an epoch and its throughput."""

    losses: dict[str, float]
    samples: int
    steps: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        """Training samples per second on this worker."""
        return self.samples / max(self.seconds, 1e-9)


def _batches(loader: torch.utils.data.DataLoader, max_steps: int) -> Iterator[dict[str, torch.Tensor]]:
    for step, batch in enumerate(loader):
        if max_steps and step >= max_steps:
            return
        yield batch


def train_epoch(
    model: nn.Module,
    loss_fn: DeriLoss,
    loader: torch.utils.data.DataLoader,
    text: TextSource,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    precision: str = "auto",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    max_steps: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> EpochStats:
    """One pass over ``loader``: forward, weighted DERI loss, backward, step.

    Args:
        model: DERI (possibly DDP-wrapped), already on ``device``.
        loss_fn: the weighted objective.
        loader: yields ``{"ecg": (B, 12, L), "report_id": (B,)}``.
        text: where text inputs come from.
        optimizer: AdamW.
        scheduler: stepped every iteration.
        device: compute device.
        precision: ``auto``/``bf16``/``fp16``/``fp32``.
        scaler: gradient scaler (fp16 only).
        grad_clip: max global grad norm (0: off).
        max_steps: stop after this many steps (0: whole loader).
        on_step: called with (step, loss terms) after each step.

    Returns:
        Mean of each loss term over the epoch, samples, steps and seconds.
    """
    model.train()
    dtype = autocast_dtype(precision, device)
    sums: dict[str, float] = defaultdict(float)
    samples = steps = 0
    start = time.perf_counter()
    for batch in _batches(loader, max_steps):
        ecg = batch["ecg"].to(device, non_blocking=True)
        inputs = text.inputs(model, batch["report_id"], device)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            terms = loss_fn(model(ecg, **inputs))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)
        else:
            terms["total"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"training loss became {values['total']} at step {steps}; lower optim.lr")
        for k, v in values.items():
            sums[k] += v
        samples += len(ecg)
        steps += 1
        if on_step is not None:
            on_step(steps, values)
    seconds = time.perf_counter() - start
    return EpochStats({k: v / max(steps, 1) for k, v in sums.items()}, samples, steps, seconds)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: DeriLoss,
    loader: torch.utils.data.DataLoader,
    text: TextSource,
    *,
    device: torch.device,
    precision: str = "auto",
    max_steps: int = 0,
) -> dict[str, float]:
    """Mean validation loss terms (all-reduced across workers when distributed).

    Returns:
        ``{term: mean}``; empty when the loader has no batch.
    """
    model.eval()
    dtype = autocast_dtype(precision, device)
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    for batch in _batches(loader, max_steps):
        ecg = batch["ecg"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            terms = loss_fn(model(ecg, **text.inputs(model, batch["report_id"], device)))
        for k, v in terms.items():
            sums[k] += float(v)
        steps += 1
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [steps], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        totals = totals.to(device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    count = totals[-1].item()
    return {k: totals[i].item() / count for i, k in enumerate(keys)} if count else {}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs of this process."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

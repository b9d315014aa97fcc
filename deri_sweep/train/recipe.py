"""The pretraining recipe: wires cache, text features, model, loss and optimiser, runs the epochs.

This is the only place that knows a whole pretraining run, and it is plain
PyTorch: the caller says which worker this is (rank, world size, device) and
passes a ``report`` callback. Ray Train's worker (``deri_sweep.orchestration
.pretrain``) is a thin shell around :func:`run_worker`; tests may also call it
in one process.

Determinism: every epoch re-seeds each worker from ``(seed, epoch, rank)`` and
the sampler from ``(seed, epoch)``, and checkpoints are taken at epoch ends,
so a run resumed from a checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from deri_sweep.common.storage import remove_orphaned_temp_dirs
from deri_sweep.common.strict_loader import to_dict
from deri_sweep.data.cache import CacheDataset, SignalCache, keep_batch
from deri_sweep.model.deri import DERI
from deri_sweep.model.text_cache import TextFeatureStore, build_text_features, caching_applies, feature_dir
from deri_sweep.model.text_tower import TextTower
from deri_sweep.train.checkpoint import load_checkpoint, rng_state, save_checkpoint
from deri_sweep.train.engine import (
    TextSource,
    autocast_dtype,
    build_optimizer,
    evaluate,
    seed_everything,
    train_epoch,
    unwrap,
)
from deri_sweep.train.losses import DeriLoss
from deri_sweep.train.rung_signals import SIGNAL_METRICS, RungSignalProbe
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

#: loss read-out interval (steps) when ``report_every_steps`` is 0: a non-finite loss is caught within it
SYNC_EVERY = 50

#: ``report(metrics, checkpoint_dir_or_None)``: called by every worker at every report.
Reporter = Callable[[dict[str, Any], Path | None], None]


@dataclass(frozen=True)
class WorkerInfo:
    """Who this process is in the run.

    Attributes:
        rank: global rank (0 writes checkpoints and builds shared files).
        world_size: number of workers.
        device: compute device of this worker.
        resource_per_worker: GPUs (or CPUs when ``resource_kind`` is ``cpu``)
            held by each worker, for compute-hour accounting.
        resource_kind: ``gpu`` or ``cpu``.
        scratch: where temporary checkpoint copies are written (under Ray, the
            session's temp dir); the system temp dir when ``None``.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    resource_per_worker: float = 1.0
    resource_kind: str = "cpu"
    scratch: Path | None = None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def prepare_text(cfg: TrainConfig, worker: WorkerInfo) -> tuple[TextSource, TextTower | None, int]:
    """Text inputs of the run: the feature cache when the tower is frozen, else the tower.

    Rank 0 computes missing features (once per unique report, reused by every
    later run with the same tower and cache); the others wait for it.

    Returns:
        ``(text source, text tower or None, text hidden size)``.
    """
    cache_dir = Path(cfg.data.cache)
    texts = SignalCache.open(cache_dir).reports()["text"].tolist()
    # mask_padding=false reads BERT's padding states, which the feature cache does not keep
    if not caching_applies(cfg.model.text) or not cfg.model.interaction.mask_padding:
        tower = TextTower(cfg.model.text)
        return TextSource(texts), tower, tower.hidden_size
    target = feature_dir(cache_dir, cfg.model.text)
    if worker.rank == 0 and not (target / "meta.json").exists():
        build_text_features(cache_dir, TextTower(cfg.model.text), device=worker.device, progress=False)
    _barrier()
    store = TextFeatureStore.open(cache_dir, cfg.model.text)
    return TextSource(texts, store), None, store.hidden_size


def _loader(dataset: CacheDataset, batch: int, worker: WorkerInfo, cfg: TrainConfig, *, shuffle: bool) -> DataLoader:
    sampler = DistributedSampler(
        dataset, num_replicas=worker.world_size, rank=worker.rank, shuffle=shuffle, seed=cfg.seed, drop_last=True
    )
    workers = cfg.data.loader_workers if cfg.data.loader_workers >= 0 else (4 if worker.device.type == "cuda" else 0)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        collate_fn=keep_batch,
        drop_last=True,
        num_workers=workers,
        pin_memory=worker.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _rows(cache: SignalCache, split: str, limit: int = 0) -> np.ndarray:
    rows = np.flatnonzero((cache.index["split"] == split).to_numpy() & (cache.index["report_id"] >= 0).to_numpy())
    return rows[:limit] if limit else rows


#: temporary checkpoint folders are named ``deri-ckpt-<pid>-<random>`` so that a later worker can tell a dead one's
CKPT_TMP_PREFIX = "deri-ckpt-"


def remove_stale_checkpoint_dirs(root: str | Path | None = None) -> int:
    """Delete the temporary checkpoint folders ``deri-ckpt-<pid>-*`` whose worker died.

    Args:
        root: where the temporary folders live (default: the system temp dir).

    Returns:
        How many folders were removed.
    """
    removed = remove_orphaned_temp_dirs(CKPT_TMP_PREFIX, root)
    if removed:
        log.info("removed %d temporary checkpoint folder(s) left by dead workers", removed)
    return removed


def run_worker(
    cfg: TrainConfig, worker: WorkerInfo, report: Reporter, *, resume: Path | None = None
) -> dict[str, float]:
    """Pretrain DERI on this worker, reporting every epoch (and every N steps).

    Args:
        cfg: the resolved run config.
        worker: rank, world size, device and resources of this process.
        report: callback receiving metrics, plus a checkpoint directory on
            rank 0 at epoch ends (``None`` otherwise).
        resume: a checkpoint directory to continue from.

    Returns:
        The metrics of the last epoch.
    """
    device = worker.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune the 1-D convolutions once
    scratch = worker.scratch or Path(tempfile.gettempdir())
    remove_stale_checkpoint_dirs(scratch)
    cache = SignalCache.open(cfg.data.cache)
    text_started = time.perf_counter()
    text, tower, hidden = prepare_text(cfg, worker)
    text_seconds = time.perf_counter() - text_started  # the tower pass when this run built the feature cache
    seed_everything(cfg.seed)  # identical initial weights on every worker
    model = DERI(cfg.model, text_tower=tower, text_hidden_size=None if tower else hidden).to(device)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        find_unused = bool(cfg.model.unused_parts())
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    loss_fn = DeriLoss(cfg.model.loss, worker.rank, worker.world_size)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.optim.precision == "fp16" else None
    train_rows = _rows(cache, cfg.data.train_split, cfg.data.limit)
    val_rows = _rows(cache, cfg.data.val_split)
    batch = cfg.optim.batch_size
    if len(train_rows) < batch * worker.world_size:
        raise ValueError(
            f"{cfg.data.cache}: {len(train_rows)} training records cannot fill one batch of {batch} x "
            f"{worker.world_size} workers; lower optim.batch_size"
        )
    wire = {"text": text.loader_text(device), "wire16": device.type == "cuda"}  # prepared in the loader workers
    train_loader = _loader(CacheDataset(cache, train_rows, cfg.data.norm, **wire), batch, worker, cfg, shuffle=True)
    val_batch = min(batch, len(val_rows) // worker.world_size)
    val_loader = None
    if val_batch >= 2:
        val_dataset = CacheDataset(cache, val_rows, cfg.data.norm, **wire)
        val_loader = _loader(val_dataset, val_batch, worker, cfg, shuffle=False)
    else:
        raise ValueError(
            f"{cfg.data.cache}: {len(val_rows)} {cfg.data.val_split!r} records cannot give {worker.world_size} "
            "workers 2 each for validation losses; use a larger cache (the MIMIC split keeps 2% of subjects)"
        )

    signal_probe = _signal_probe(cfg, worker)  # rank 0 reads the fixed probe subset once (None: no rung signals)
    start_epoch, step, hours = 0, 0, 0.0
    if resume is not None:
        state, meta = load_checkpoint(resume, map_location=device)
        _load_trainable(unwrap(model), state["model"], resume)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, hours = int(state["epoch"]) + 1, int(state["step"]), float(meta.get("hours", 0.0))
        log.info("resuming from %s at epoch %d", resume, start_epoch)

    steps_per_epoch = (
        len(train_loader) if not cfg.max_steps_per_epoch else min(len(train_loader), cfg.max_steps_per_epoch)
    )
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        seed_everything(cfg.seed + 1000 * (epoch + 1) + worker.rank)
        train_loader.sampler.set_epoch(epoch)
        started = time.perf_counter()

        def on_step(
            i: int, values: dict[str, float], epoch: int = epoch, started: float = started, hours: float = hours,
            step: int = step,
        ) -> None:  # fmt: skip
            if cfg.report_every_steps and i % cfg.report_every_steps == 0 and i < steps_per_epoch:
                used = hours + (time.perf_counter() - started) / 3600 * worker.world_size * worker.resource_per_worker
                step_metrics = {f"train_{k}": v for k, v in values.items()}
                report({**step_metrics, "epoch": epoch + i / steps_per_epoch, "step": step + i, "hours": used}, None)

        stats = train_epoch(
            model, loss_fn, train_loader, text, optimizer, scheduler, device=device, precision=cfg.optim.precision,
            scaler=scaler, grad_clip=cfg.optim.grad_clip, max_steps=cfg.max_steps_per_epoch, on_step=on_step,
            sync_every=cfg.report_every_steps or SYNC_EVERY,
        )  # fmt: skip
        val = {}
        if val_loader is not None:
            val = evaluate(model, loss_fn, val_loader, text, device=device, precision=cfg.optim.precision)
        signals = _rung_signals(signal_probe, model, cfg, epoch + 1, time.perf_counter() - started, device)
        step += stats.steps
        hours += (time.perf_counter() - started) / 3600 * worker.world_size * worker.resource_per_worker
        metrics = {
            **{f"train_{k}": v for k, v in stats.losses.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "epoch": float(epoch + 1),
            "step": float(step),
            "lr": float(scheduler.get_last_lr()[0]),
            "samples_per_s": stats.samples_per_s * worker.world_size,
            "hours": hours,
            f"{worker.resource_kind}_hours": hours,
            "text_features_s": text_seconds,
            **signals,
        }
        if worker.rank == 0:
            with tempfile.TemporaryDirectory(prefix=f"{CKPT_TMP_PREFIX}{os.getpid()}-", dir=scratch) as tmp:
                state = {
                    "model": _trainable_state(unwrap(model), tower is not None),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch,
                    "step": step,
                    "rng": rng_state(),
                }
                meta = {
                    "config": to_dict(cfg),
                    "text_hidden_size": hidden,
                    "epoch": epoch,
                    "seed": cfg.seed,
                    "world_size": worker.world_size,
                    "hours": hours,
                    "metrics": metrics,
                }
                report(metrics, save_checkpoint(tmp, state, meta))
        else:
            report(metrics, None)
    return metrics


def _signal_probe(cfg: TrainConfig, worker: WorkerInfo) -> RungSignalProbe | None:
    """The rung-signal subset of this run on rank 0 (the signals go into rank 0's report); ``None`` when off."""
    if not cfg.signals.enabled or worker.rank != 0:
        return None
    return RungSignalProbe.load(cfg.signals, norm=cfg.data.norm, num_samples=cfg.model.ecg.num_samples)


def _rung_signals(
    probe: RungSignalProbe | None, model: torch.nn.Module, cfg: TrainConfig, epoch: int, epoch_s: float,
    device: torch.device,
) -> dict[str, float]:  # fmt: skip
    """Rung signals after ``epoch`` (1-based) when due, with their cost as a fraction of the epoch's train+val time.

    Between rungs the signals are NaN: Tune wants a scheduler's metric in every report, and neither
    ASHA (which reads only rung epochs) nor the Optuna searcher (which skips non-finite values) uses them.
    """
    if probe is None:
        return {}
    if not cfg.signals.due(epoch, cfg.optim.epochs):
        return dict.fromkeys(SIGNAL_METRICS, math.nan)
    values = probe.compute(unwrap(model), device, autocast_dtype(cfg.optim.precision, device))
    return {**values, "rung_signals_frac": values["rung_signals_s"] / max(epoch_s, 1e-9)}


def _trainable_state(model: DERI, has_tower: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, without the frozen text tower's weights (they come from its package/hub)."""
    state = model.state_dict()
    if has_tower and model.text is not None and model.text.frozen:
        state = {k: v for k, v in state.items() if not k.startswith("text.")}
    return state


def _load_trainable(model: DERI, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a checkpoint's weights; only a frozen tower's weights may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("text.")] + list(unexpected)
    if bad:
        raise ValueError(f"{source}: checkpoint does not match this model config (e.g. {bad[:3]})")

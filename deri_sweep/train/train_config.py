"""The pretraining run's config: model, data, optimisation and bookkeeping sections.

Defaults follow the reference recipe (spec section 6) except where a small
machine needs otherwise; every field can be set in YAML or with ``--set``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deri_sweep.common.strict_loader import ConfigError
from deri_sweep.model.config import ModelConfig
from deri_sweep.train.rung_signals import RungSignalConfig


@dataclass
class DataConfig:
    """Where pretraining data comes from.

    Attributes:
        cache: a prepared MIMIC-IV-ECG (or any report-bearing) cache directory.
        norm: signal normalisation (spec section 1).
        train_split: index split used for training.
        val_split: index split used for validation losses.
        loader_workers: DataLoader processes per training worker; -1 picks 0 on
            CPU and 4 on GPU.
        limit: use only the first N training records (0: all), for quick runs.
    """

    cache: str = "data/caches/mimic"
    norm: Literal["minmax_record", "zscore_lead", "none"] = "minmax_record"
    train_split: str = "train"
    val_split: str = "val"
    loader_workers: int = -1
    limit: int = 0


@dataclass
class OptimConfig:
    """AdamW with per-iteration cosine warm restarts (spec section 6).

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        t0: iterations of the first cosine cycle (CosineAnnealingWarmRestarts T_0).
        eta_min: floor of the learning rate.
        epochs: passes over the training split.
        batch_size: per worker; the contrastive batch is batch_size x workers.
        grad_clip: clip the global gradient norm to this (0: off).
        precision: ``auto`` = bf16 autocast on CUDA, fp32 on CPU.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    t0: int = 5000
    eta_min: float = 1e-8
    epochs: int = 50
    batch_size: int = 512
    grad_clip: float = 0.0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("optim.epochs must be >= 1 and optim.batch_size >= 2 (contrastive batches)")
        if self.lr <= 0 or self.t0 < 1 or len(self.betas) != 2:
            raise ConfigError("optim.lr > 0, optim.t0 >= 1 and two optim.betas are required")


@dataclass
class TrainConfig:
    """One pretraining run.

    Attributes:
        model: the DERI model and its loss weights.
        data: the pretraining cache.
        optim: optimisation.
        seed: global seed (each worker and epoch derives its own from it).
        report_every_steps: also report losses every N steps (0: epochs only).
        max_steps_per_epoch: cut epochs short (0: full epochs), for smoke runs.
        signals: rung signals (probe AUROC, RankMe) on a fixed probe subset; off without ``signals.cache``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 42
    report_every_steps: int = 0
    max_steps_per_epoch: int = 0
    signals: RungSignalConfig = field(default_factory=RungSignalConfig)

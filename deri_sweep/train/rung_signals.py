"""Rung signals: label-cheap numbers that rank pretraining trials as their final probes do.

Early stopping (ASHA, Optuna's pruning) reads one number per epoch. The weighted
validation loss changes with the searched loss weights and enabled terms, so it cannot
rank trials of a space that searches them. These signals are computed from the current
weights on a fixed subset of ONE probe dataset (never its test split):

- ``rung_probe_auroc``: validation macro AUROC of a closed-form ridge probe (one-vs-rest
  regression on 0/1 targets, standardised features, ``lambda = ridge * n_train``) fitted
  on the frozen features of a fixed train subset and scored on a fixed val subset, averaged
  over the dataset's label sets (PTB-XL: super, sub, form, rhythm) as the probe objective is;
  each label set uses only the subset's records with one of its labels;
- ``rankme``: the effective rank of the same features (train and val subsets together),
  ``exp(entropy(sigma / ||sigma||_1))`` over their singular values (Garrido et al., ICML 2023);
- ``rung_signals_s``: the seconds the signals took (the recipe adds ``rung_signals_frac``,
  that cost as a fraction of the epoch).

The subset's signals are read once per run; its features are extracted once per rung on
the worker's device, in eval mode, with the pretraining normalisation.

Example:
    >>> probe = RungSignalProbe.load(RungSignalConfig(cache="data/caches/ptbxl"), norm="minmax_record")
    >>> probe.compute(model, device=torch.device("cpu"))  # {"rung_probe_auroc": ..., "rankme": ..., ...}
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from deri_sweep.common.strict_loader import ConfigError
from deri_sweep.data.cache import SignalCache

log = logging.getLogger(__name__)

#: the per-epoch metrics this module adds to a report (the first two can be a space's ``metric``)
SIGNAL_METRICS: tuple[str, ...] = ("rung_probe_auroc", "rankme")


@dataclass
class RungSignalConfig:
    """Where and when the rung signals are computed (``signals.*`` of a run's config).

    Attributes:
        cache: a prepared probe-dataset cache (e.g. PTB-XL); empty: no rung signals.
        task: one label set (e.g. ``super``); empty: every label set, averaged (as the probe objective).
        feature: the probe feature (``mix``, ``aligned``, ``resnet``), as the final probes read it.
        every: also compute every ``every`` epochs (0: only at ``rungs`` and the last epoch).
        rungs: the epochs (1-based) at which early stopping reads the signals.
        train_records: size of the fixed train subset the ridge probe fits on.
        val_records: size of the fixed validation subset it is scored on.
        ridge: ridge strength per training record (on standardised features).
        seed: seed of the subset draw (the subset is the same for every trial).
        batch_size: records per forward when extracting features.
    """

    cache: str = ""
    task: str = ""
    feature: Literal["mix", "aligned", "resnet"] = "mix"
    every: int = 0
    rungs: list[int] = field(default_factory=list)
    train_records: int = 256
    val_records: int = 256
    ridge: float = 1.0
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.every < 0 or any(int(r) < 1 for r in self.rungs):
            raise ConfigError(f"signals.every={self.every} must be >= 0 and signals.rungs={self.rungs} >= 1")
        if self.train_records < 8 or self.val_records < 8:
            raise ConfigError("signals.train_records and signals.val_records must be >= 8")
        if self.ridge <= 0 or self.batch_size < 1:
            raise ConfigError(f"signals.ridge={self.ridge} must be > 0 and signals.batch_size >= 1")

    @property
    def enabled(self) -> bool:
        """True when a probe cache is set."""
        return bool(self.cache)

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether the signals are computed after ``epoch`` (1-based) of a run of ``last_epoch`` epochs."""
        if not self.enabled:
            return False
        return epoch == last_epoch or epoch in self.rungs or (self.every > 0 and epoch % self.every == 0)


def rankme(features: np.ndarray | torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank of an embedding matrix.

    ``p_k = sigma_k / sum(sigma) + eps`` over the singular values, RankMe = ``exp(-sum p_k log p_k)``:
    ``r`` for ``r`` equal non-zero singular values, 1 for a collapsed (rank-1) embedding.

    Args:
        features: (N, D) embeddings.
        eps: the paper's epsilon (keeps ``log`` finite).

    Returns:
        The effective rank in [1, min(N, D)]; NaN when a feature is not finite.
    """
    z = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if z.ndim != 2 or not torch.isfinite(z).all():
        return math.nan
    sigma = torch.linalg.svdvals(z)  # (min(N, D),)
    total = sigma.sum()
    if total <= 0:
        return math.nan
    p = sigma / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def ridge_scores(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Closed-form one-vs-rest ridge regression on 0/1 targets: the val scores.

    Features are standardised with the train subset's mean and std; the targets are
    centred; ``W = (X^T X + ridge * n I)^-1 X^T Y`` in float64.

    Args:
        x_train: (N, D) train features.
        y_train: (N, C) 0/1 train labels.
        x_val: (M, D) val features.
        ridge: strength per training record.

    Returns:
        (M, C) scores (higher: more likely positive).
    """
    x = np.asarray(x_train, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    x = (x - mean) / std  # (N, D)
    xv = (np.asarray(x_val, dtype=np.float64) - mean) / std  # (M, D)
    y = np.asarray(y_train, dtype=np.float64)
    y = y - y.mean(axis=0)  # (N, C)
    gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])  # (D, D)
    weights = np.linalg.solve(gram, x.T @ y)  # (D, C)
    return xv @ weights  # (M, C)


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro AUROC over the classes with both label values (Mann-Whitney U, average ranks for ties).

    Args:
        y: (N, C) 0/1 labels.
        scores: (N, C) scores.

    Returns:
        The mean over defined classes; NaN when none is defined or a score is not finite.
    """
    from scipy.stats import rankdata  # here: scipy is slow to import and only needed at a rung

    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        return math.nan
    values = []
    for c in range(y.shape[1]):
        n_pos = int(y[:, c].sum())
        n_neg = len(y) - n_pos
        if n_pos and n_neg:
            ranks = rankdata(scores[:, c])
            values.append((ranks[y[:, c]].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(values)) if values else math.nan


def subset_rows(labels: np.ndarray, split: np.ndarray, count: int, name: str, seed: int) -> np.ndarray:
    """A fixed draw of ``count`` rows of split ``name`` among the records with a positive label.

    Args:
        labels: (N, C) 0/1 labels of the task.
        split: (N,) split names.
        count: rows wanted (fewer when the split has fewer).
        name: ``train`` or ``val``.
        seed: seed of the draw.

    Returns:
        Sorted row numbers.
    """
    candidates = np.flatnonzero((np.asarray(split).astype(str) == name) & (np.asarray(labels).sum(axis=1) > 0))
    order = np.random.default_rng(seed).permutation(len(candidates))
    return np.sort(candidates[order[:count]])


@dataclass
class RungSignalProbe:
    """The fixed subset of a run's rung signals, in memory, and how to compute them.

    Attributes:
        config: the signal settings.
        ecg: (N, 12, L) float32 normalised signals, train subset first.
        labels: (N, C) 0/1 labels of the task.
        n_train: how many leading rows form the train subset.
        spans: ``(first, end)`` label columns of each label set (default: one set, every column).
    """

    config: RungSignalConfig
    ecg: torch.Tensor
    labels: np.ndarray
    n_train: int
    spans: list[tuple[int, int]] = field(default_factory=list)

    def probe_auroc(self, x: np.ndarray) -> float:
        """Mean over label sets of the ridge probe's val macro AUROC on features ``x`` (N, D) of the subset.

        Each set is fitted and scored on the subset's records with one of its labels (the form/rhythm rule).
        """
        n, values = self.n_train, []
        for first, end in self.spans or [(0, self.labels.shape[1])]:
            y = self.labels[:, first:end]
            fit = np.flatnonzero(y[:n].sum(axis=1) > 0)
            score = n + np.flatnonzero(y[n:].sum(axis=1) > 0)
            if len(fit) < 2 or len(score) < 2:
                continue
            values.append(macro_auroc(y[score], ridge_scores(x[fit], y[fit], x[score], self.config.ridge)))
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    @classmethod
    def load(cls, config: RungSignalConfig, *, norm: str = "minmax_record", num_samples: int = 0) -> RungSignalProbe:
        """Read the fixed train/val subsets of ``config.cache`` once.

        Args:
            config: enabled signal settings.
            norm: the pretraining normalisation (``data.norm``).
            num_samples: the model's signal length (0: not checked).

        Raises:
            ConfigError: unreadable cache, unknown task, wrong signal length or empty subsets,
                naming ``signals.*`` and the fix.
        """
        try:
            cache = SignalCache.open(config.cache)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"signals.cache={config.cache!r}: not a prepared cache ({exc})") from exc
        sets = list(cache.label_sets)
        if (config.task and config.task not in sets) or not sets:
            raise ConfigError(f"signals.task={config.task!r}: {config.cache} has label sets {sets}")
        tasks = [config.task] if config.task else sets
        length = int(cache.info["signal"]["length"])
        if num_samples and length != num_samples:
            raise ConfigError(
                f"signals.cache={config.cache}: {length}-sample signals, the model takes {num_samples} "
                "(model.ecg.num_samples); prepare the probe cache at the pretraining length"
            )
        labels = np.concatenate([cache.labels(t) for t in tasks], axis=1)  # (N, sum of the sets' classes)
        groups = np.cumsum([0, *(len(cache.label_sets[t]) for t in tasks)])
        split = cache.index["split"].to_numpy()
        train = subset_rows(labels, split, config.train_records, "train", config.seed)
        val = subset_rows(labels, split, config.val_records, "val", config.seed + 1)
        if len(train) < 2 or len(val) < 2:
            raise ConfigError(f"signals.cache={config.cache}: {len(train)} train / {len(val)} val records with a "
                              "label; name a larger cache or another signals.task")  # fmt: skip
        rows = np.concatenate([train, val])
        spans = [(int(a), int(b)) for a, b in itertools.pairwise(groups)]
        return cls(config, cache.signals(rows, norm), labels[rows], len(train), spans)

    @torch.no_grad()
    def features(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> np.ndarray:
        """(N, D) float32 probe features of the subset from the model's current weights (eval mode)."""
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, len(self.ecg), self.config.batch_size):
                ecg = self.ecg[start : start + self.config.batch_size].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    out.append(model.encode_ecg(ecg, self.config.feature).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy()

    def compute(
        self, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None
    ) -> dict[str, float]:  # fmt: skip
        """The rung signals of the model's current weights.

        Args:
            model: a DERI (unwrapped from DDP), on ``device``.
            device: where the encoder runs.
            dtype: autocast dtype of the forward (``None``: float32).

        Returns:
            ``{"rung_probe_auroc", "rankme", "rung_signals_s"}``.
        """
        started = time.perf_counter()
        x = self.features(model, device, dtype)  # (N, D)
        probe = self.probe_auroc(x) if np.isfinite(x).all() else math.nan
        effective = rankme(x)
        return {"rung_probe_auroc": probe, "rankme": effective, "rung_signals_s": time.perf_counter() - started}

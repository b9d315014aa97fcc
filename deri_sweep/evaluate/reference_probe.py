"""The linear probe as the authors ran it for the published numbers (``probes.protocol: reference``).

This is NOT the project's protocol (:mod:`deri_sweep.evaluate.linear_probe`: AdamW at a constant lr on
features frozen in eval mode, the test AUROC at the best-validation epoch). It exists only so a result
can be lined up with the published table (spec sections 8 and 9), and every row it writes says so
(``method = linear_probe_reference``). The authors' ``finetune/main_single.py``, restated:

- head: one ``Linear(D, C)``, BCE-with-logits, batch 16 (shuffled, the last batch may be short);
- optimiser: Adam with COUPLED L2 (``torch.optim.Adam(lr=0.01, weight_decay=1e-4)``: the decay is added
  to the gradient before the moments);
- schedule: ``MultiStepLR(milestones=[50], gamma=0.1)`` stepped after EVERY iteration AND once more after
  every epoch, so the lr is 0.01 until the scheduler's 50th step and 1e-3 after it;
- encoder: frozen (no gradient reaches it) but in TRAIN mode while the head trains, so BatchNorm
  normalises with the statistics of each batch of 16 (and its running statistics drift), dropout and
  DropPath are live: features are recomputed through the encoder for every batch. Val and test are
  scored in eval mode after every epoch, with the running statistics as they drifted;
- result: the MAXIMUM test macro AUROC over epochs (no validation selection).

Left out: the authors' fp16 autocast and GradScaler (CUDA-only; on CPU they are no-ops). The encoder
is deep-copied, so the caller's model (and its BatchNorm statistics) is untouched. Randomness (head
initialisation, shuffling, dropout) comes from the seed, inside :func:`torch.random.fork_rng`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from deri_sweep.evaluate.metrics import auroc_columns, macro_over_defined

log = logging.getLogger(__name__)

#: ``method`` of the tidy rows (``eval`` in ``results.parquet``) written by this protocol.
REFERENCE_METHOD = "linear_probe_reference"
#: How every table of these rows is labelled.
REFERENCE_LABEL = "authors' probe protocol (the published numbers' protocol): max-over-epochs test AUROC"

#: ``(module, signals (B, leads, L)) -> features (B, D)``.
Embed = Callable[[nn.Module, Tensor], Tensor]


@dataclass
class ReferenceProbeConfig:
    """The authors' head hyper-parameters (``finetune/main_single.py``).

    ``milestone``/``gamma``: the ``MultiStepLR`` (one milestone, counted in scheduler steps).
    ``eval_batch_size``: records per forward when scoring val and test (theirs: 256).
    ``threads``: torch intra-op threads while training (restored after; None leaves the setting). One is
    fastest on a shared CPU for these small batches (measured 0.25 s vs 7.8 s for the unit tests' 8 epochs).
    """

    epochs: int = 100
    batch_size: int = 16
    lr: float = 0.01
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    milestone: int = 50
    gamma: float = 0.1
    eval_batch_size: int = 256
    seed: int = 0
    threads: int | None = 1


@dataclass
class ReferenceProbeResult:
    """Outcome of one reference-protocol head.

    Attributes:
        max_test_auroc: HEADLINE of this protocol: max test macro AUROC over epochs.
        max_epoch: 1-based epoch of that maximum (first of equal maxima).
        test_auroc_at_best_val: test macro AUROC at the best-val epoch (for comparison with ours).
        val_curve, test_curve: (epochs,) macro AUROC per epoch.
        lrs: (optimizer steps,) lr each optimiser step used.
        n_train, n_val, n_test: records used.
        seed: seed of the head (initialisation, shuffling, dropout).
        fraction: training-data fraction.
        seconds: wall time.
    """

    max_test_auroc: float
    max_epoch: int
    test_auroc_at_best_val: float
    val_curve: list[float]
    test_curve: list[float]
    lrs: list[float]
    n_train: int
    n_val: int
    n_test: int
    seed: int = 0
    fraction: float = 1.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def head_optimizer(head: nn.Module, config: ReferenceProbeConfig) -> torch.optim.Adam:
    """The authors' optimiser: Adam with coupled L2 (``weight_decay`` added to the gradient)."""
    return torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)


def head_scheduler(
    optimizer: torch.optim.Optimizer, config: ReferenceProbeConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The authors' ``MultiStepLR([milestone], gamma)``; the caller steps it per iteration AND per epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[config.milestone], gamma=config.gamma)


def _embed_default(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _embed_all(module: nn.Module, embed: Embed, signals: Tensor, batch_size: int) -> Tensor:
    """(N, leads, L) -> (N, D) features in eval mode, no gradient."""
    module.eval()
    with torch.no_grad():
        return torch.cat(
            [embed(module, signals[i : i + batch_size]).float() for i in range(0, len(signals), batch_size)]
        )


def _macro(y: np.ndarray, scores: Tensor) -> float:
    return float(macro_over_defined(auroc_columns(y, scores.double().numpy())))


def reference_probe(
    encoder: nn.Module,
    train: tuple[Tensor, np.ndarray],
    val: tuple[Tensor, np.ndarray],
    test: tuple[Tensor, np.ndarray],
    config: ReferenceProbeConfig | None = None,
    embed: Embed = _embed_default,
    fraction: float = 1.0,
) -> ReferenceProbeResult:
    """Train one head by the authors' protocol on a frozen encoder kept in train mode.

    Args:
        encoder: the frozen encoder (deep-copied; the caller's copy and its statistics are untouched).
        train: ``(signals (Ntr, leads, L) float32, labels (Ntr, C) 0/1)``.
        val: ``(signals (Nv, leads, L), labels (Nv, C))``.
        test: ``(signals (Nte, leads, L), labels (Nte, C))``.
        config: hyper-parameters (default: the authors').
        embed: ``(module, signals) -> (B, D)`` features, e.g. ``lambda m, x: m.encode_ecg(x, "mix")``.
        fraction: recorded on the result.

    Returns:
        The result; ``max_test_auroc`` is the protocol's number.

    Raises:
        ValueError: an empty split.
    """
    config, start = config or ReferenceProbeConfig(), time.perf_counter()
    xtr, xv, xte = train[0], val[0], test[0]
    if not (len(xtr) and len(xv) and len(xte)):
        raise ValueError(f"reference probe needs non-empty splits, got {len(xtr)}/{len(xv)}/{len(xte)}")
    model = copy.deepcopy(encoder).cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        curves = _train(model, train, val, test, config, embed)
    finally:
        torch.set_num_threads(threads_before)
    val_curve, test_curve, lrs = curves
    return _result(val_curve, test_curve, lrs, (len(xtr), len(xv), len(xte)), config, fraction, start)


def _train(
    model: nn.Module,
    train: tuple[Tensor, np.ndarray],
    val: tuple[Tensor, np.ndarray],
    test: tuple[Tensor, np.ndarray],
    config: ReferenceProbeConfig,
    embed: Embed,
) -> tuple[list[float], list[float], list[float]]:
    """The training loop; returns the (epochs,) val and test macro AUROC curves and the lr of every step."""
    (xtr, ytr), (xv, yv), (xte, yte) = train, val, test
    ytr_t = torch.as_tensor(np.asarray(ytr, dtype=np.float32))
    val_curve: list[float] = []
    test_curve: list[float] = []
    lrs: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model.eval()
        with torch.no_grad():
            dim = embed(model, xtr[:1]).shape[1]
        head = nn.Linear(dim, ytr_t.shape[1])
        optimizer, criterion = head_optimizer(head, config), nn.BCEWithLogitsLoss()
        scheduler = head_scheduler(optimizer, config)
        for _ in range(config.epochs):
            model.train()  # BatchNorm on batch statistics, dropout and DropPath live
            order = torch.randperm(len(xtr))
            for i in range(0, len(xtr), config.batch_size):
                rows = order[i : i + config.batch_size]
                with torch.no_grad():
                    feats = embed(model, xtr[rows]).float()  # (B, D), no graph into the encoder
                optimizer.zero_grad()
                loss = criterion(head(feats), ytr_t[rows])
                loss.backward()
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()  # per iteration ...
            with torch.no_grad():
                val_curve.append(_macro(yv, head(_embed_all(model, embed, xv, config.eval_batch_size))))
                test_curve.append(_macro(yte, head(_embed_all(model, embed, xte, config.eval_batch_size))))
            scheduler.step()  # ... and once more per epoch
    return val_curve, test_curve, lrs


def _result(
    val_curve: list[float],
    test_curve: list[float],
    lrs: list[float],
    sizes: tuple[int, int, int],
    config: ReferenceProbeConfig,
    fraction: float,
    start: float,
) -> ReferenceProbeResult:
    """Max over epochs of the test curve (and, for comparison, the test value at the best-val epoch)."""
    tc, vc = np.asarray(test_curve), np.asarray(val_curve)
    best_val = len(vc) - 1 if np.isnan(vc).all() else int(np.nanargmax(vc))
    best_test = 0 if np.isnan(tc).all() else int(np.nanargmax(tc))
    return ReferenceProbeResult(
        max_test_auroc=float(tc[best_test]) if not np.isnan(tc).all() else float("nan"),
        max_epoch=best_test + 1,
        test_auroc_at_best_val=float(tc[best_val]),
        val_curve=vc.tolist(),
        test_curve=tc.tolist(),
        lrs=lrs,
        n_train=sizes[0],
        n_val=sizes[1],
        n_test=sizes[2],
        seed=config.seed,
        fraction=fraction,
        seconds=time.perf_counter() - start,
    )


def run_reference_probes(
    model: nn.Module,
    cache: Any,
    task: Any,
    fractions: Sequence[float],
    seeds: Sequence[int],
    feature: str,
    norm: str,
    config: ReferenceProbeConfig | None = None,
) -> pd.DataFrame:
    """Reference-protocol heads of one task at every (fraction, seed), as tidy rows.

    Rows are chosen exactly as the project's probe chooses them (:func:`~deri_sweep.evaluate.probe_tasks.task_rows`:
    seed ``s`` draws the subset and seeds the head).

    Args:
        model: a DERI (its :meth:`encode_ecg` gives the features).
        cache: the task's :class:`~deri_sweep.data.cache.SignalCache`.
        task: the :class:`~deri_sweep.evaluate.probe_tasks.Task`.
        fractions: training-data fractions.
        seeds: probe seeds.
        feature: ``mix``, ``aligned`` or ``resnet``.
        norm: signal normalisation of pretraining (``data.norm``).
        config: head hyper-parameters (``seed`` is replaced by each probe seed).

    Returns:
        Tidy frame (``task, label_set, method, fraction, probe_seed, metric, value``), ``method`` =
        :data:`REFERENCE_METHOD`; metrics ``max_test_auroc`` (the protocol's number), ``max_epoch``,
        ``test_auroc_at_best_val``.
    """
    from deri_sweep.evaluate.probe_tasks import TIDY_COLUMNS, task_rows

    config = config or ReferenceProbeConfig()
    labels = cache.labels(task.label_set)
    split = cache.index["split"].to_numpy(str)
    full = task_rows(labels, split, 1.0, 0)
    val = (cache.signals(full["val"], norm), labels[full["val"]])
    test = (cache.signals(full["test"], norm), labels[full["test"]])
    rows = []
    for fraction in fractions:
        for seed in seeds:
            train_rows = task_rows(labels, split, float(fraction), int(seed))["train"]
            result = reference_probe(
                model,
                (cache.signals(train_rows, norm), labels[train_rows]),
                val,
                test,
                ReferenceProbeConfig(**{**asdict(config), "seed": int(seed)}),
                embed=lambda m, x: m.encode_ecg(x, feature),
                fraction=float(fraction),
            )
            base = {"task": task.name, "label_set": task.label_set, "method": REFERENCE_METHOD,
                    "fraction": float(fraction), "probe_seed": int(seed)}  # fmt: skip
            for metric, value in (
                ("max_test_auroc", result.max_test_auroc),
                ("max_epoch", float(result.max_epoch)),
                ("test_auroc_at_best_val", result.test_auroc_at_best_val),
            ):
                rows.append({**base, "metric": metric, "value": float(value)})
            log.info("%s fraction %.3g seed %d (%s): max test AUROC %.4f", task.name, fraction, seed,
                     REFERENCE_METHOD, result.max_test_auroc)  # fmt: skip
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))

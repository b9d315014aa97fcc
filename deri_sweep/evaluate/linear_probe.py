"""Linear probe on precomputed, frozen features (spec section 8).

One ``Linear(D, C)`` head, BCE-with-logits (mean over batch and classes), shuffled
mini-batches (16), 100 epochs, lr 0.01, weight decay 1e-4. After every epoch the
head scores the full val and test splits; the best VAL macro AUROC picks the
epoch and the TEST macro AUROC there is the headline. The max test AUROC over
epochs is kept too, labelled as such, only to compare with published numbers.

Decisions where the spec is silent: the optimiser is AdamW (decoupled decay on
weight and bias, betas 0.9/0.999, eps 1e-8, constant lr); MERL's public probe uses
Adam (coupled L2, ``optimizer="adam"``) with a per-iteration ``MultiStepLR`` that
is not reproduced. Features are used AS GIVEN (no standardisation), as the
reference head sees them. Heads start as ``nn.Linear`` (uniform +-1/sqrt(D)),
drawn from a ``torch.Generator`` seeded with the head's seed, which then draws one
``randperm`` of the head's training rows per epoch.

Speed: K heads (seeds x training fractions) train at once as one (K, C, D+1)
tensor with closed-form BCE gradients and an in-place Adam(W) update, so the
per-step Python cost is shared. Heads are sorted by batches per epoch, so the
heads still running at a step are a prefix (a slice, not a gather); each head
gets exactly the batches, step counts and updates it would get alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from deri_sweep.evaluate.metrics import auroc_columns, macro_over_defined

log = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Linear-probe hyper-parameters (defaults: the reference, spec section 8).

    ``optimizer``: ``"adamw"`` (decision, decoupled decay) or ``"adam"`` (coupled L2, as MERL's code).
    ``seed``: head initialisation and shuffling (:func:`linear_probe` only). ``threads``: torch intra-op
    threads while training (the matrices are tiny, so 1 is fastest on a shared CPU; None leaves the
    setting). Training also flushes denormals and resets ``torch.set_flush_denormal`` to False afterwards.
    """

    epochs: int = 100
    batch_size: int = 16
    lr: float = 0.01
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "adam"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1


@dataclass
class ProbeResult:
    """Outcome of one probe head.

    Attributes:
        test_auroc_at_best_val: HEADLINE: test macro AUROC at the best-val epoch.
        best_val_auroc: val macro AUROC at that epoch.
        best_epoch: 1-based epoch chosen on val (first of equal maxima).
        max_test_auroc: max test macro AUROC over epochs (for comparison with published numbers only).
        per_class_test_auroc: (C,) test AUROC per class at the chosen epoch, NaN where undefined.
        class_names: (C,) class names.
        n_undefined_classes: test classes with one label value (NaN above).
        n_train, n_val, n_test: records used.
        val_curve, test_curve: (epochs,) macro AUROC per epoch.
        seconds: wall time of the call that trained this head (shared by heads trained together).
        seed: seed of the head (initialisation and shuffling).
        fraction: training-data fraction this head used.
    """

    test_auroc_at_best_val: float
    best_val_auroc: float
    best_epoch: int
    max_test_auroc: float
    per_class_test_auroc: list[float]
    class_names: list[str]
    n_undefined_classes: int
    n_train: int
    n_val: int
    n_test: int
    val_curve: list[float]
    test_curve: list[float]
    seconds: float
    seed: int = 0
    fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN stays float NaN)."""
        return asdict(self)


def init_head(d: int, c: int, generator: torch.Generator) -> torch.Tensor:
    """``nn.Linear(d, c)``-style initial parameters: weight (c, d) then bias (c,), uniform +-1/sqrt(d).

    Returns:
        (c, d + 1) float32: the weight with the bias appended as the last column.
    """
    bound = 1.0 / math.sqrt(d)
    weight = (torch.rand(c, d, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(c, generator=generator) * 2 - 1) * bound
    return torch.cat([weight, bias[:, None]], dim=1)


def _augment(x: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    """(N, D) features -> (N, D + 1) float32 tensor on ``device`` with a trailing column of ones."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    return torch.cat([t, torch.ones(len(t), 1, device=device)], dim=1)


@contextmanager
def _cpu_settings(threads: int | None) -> Iterator[None]:
    """Few intra-op threads (tiny matrices: thread hand-offs cost more than they save) and flushed denormals."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # Adam's second moments of saturated classes underflow otherwise (slow)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def _epoch_batches(
    gens: list[torch.Generator], rows: list[torch.Tensor], n_steps: np.ndarray, bsz: int, c: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of shuffled batches for every head, padded to the longest head.

    Returns:
        ``(idx, weight)``, both (K, S * B): training row per slot (0 in padding) and
        its loss weight 1 / (batch size x C) (0 in padding), so the summed loss of
        a batch is BCE-with-logits averaged over that batch and the classes.
    """
    idx = torch.zeros(len(rows), int(n_steps[0]) * bsz, dtype=torch.int64)
    weight = torch.zeros(idx.shape)
    for j, (g, r) in enumerate(zip(gens, rows, strict=True)):
        n, steps = len(r), int(n_steps[j])
        idx[j, :n] = r[torch.randperm(n, generator=g)]
        counts = torch.full((steps,), float(bsz))
        counts[-1] = n - bsz * (steps - 1)  # the last batch may be short
        weight[j, :n] = 1.0 / (counts.repeat_interleave(bsz)[:n] * c)
    return idx, weight


def fit_heads(
    train_x: np.ndarray,
    train_y: np.ndarray,
    subsets: Sequence[np.ndarray],
    seeds: Sequence[int],
    config: ProbeConfig,
    eval_sets: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Train K independent linear heads at once; score the eval sets after each epoch.

    Args:
        train_x: (Ntr, D) features.
        train_y: (Ntr, C) 0/1 labels.
        subsets: K arrays of row numbers into ``train_x`` (each head's training rows).
        seeds: K seeds (initialisation and per-epoch shuffling of each head).
        config: hyper-parameters; ``config.seed`` is ignored here.
        eval_sets: ``(x (N, D), y (N, C))`` pairs scored per epoch.

    Returns:
        ``(params, curves)``: final (K, C, D + 1) parameters (weight, bias as last
        column) and, per eval set, an (epochs, K, C) array of per-class AUROC.
    """
    if len(subsets) != len(seeds) or not subsets:
        raise ValueError(f"need one seed per subset, got {len(subsets)} subsets and {len(seeds)} seeds")
    if config.optimizer not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adamw or adam")
    dev, bsz, (b1, b2) = config.device, config.batch_size, config.betas
    x = _augment(train_x, dev)
    y = torch.as_tensor(np.asarray(train_y, dtype=np.float32), device=dev)
    d1, c = x.shape[1], y.shape[1]
    sizes = np.array([len(s) for s in subsets])
    if (sizes == 0).any():
        raise ValueError("every head needs at least one training row")
    order = np.argsort(-sizes, kind="stable")  # longest first: the heads still running form a prefix
    n_steps = -(-sizes[order] // bsz)  # batches per epoch, descending
    active = [int((n_steps > s).sum()) for s in range(int(n_steps[0]))]
    gens = [torch.Generator().manual_seed(int(seeds[i])) for i in order]
    rows = [torch.as_tensor(np.asarray(subsets[i], dtype=np.int64)) for i in order]
    params = torch.stack([init_head(d1 - 1, c, g) for g in gens]).to(dev)  # (K, C, D+1)
    m, v = torch.zeros_like(params), torch.zeros_like(params)
    evals = [(_augment(ex, dev).double(), np.asarray(ey)) for ex, ey in eval_sets]  # float64: fewer ties
    curves = [np.empty((config.epochs, len(order), c)) for _ in evals]
    decay = 1.0 - config.lr * config.weight_decay
    with _cpu_settings(config.threads), torch.no_grad():
        for epoch in range(config.epochs):
            idx, weight = (t.to(dev) for t in _epoch_batches(gens, rows, n_steps, bsz, c))
            step = epoch * torch.as_tensor(n_steps, dtype=torch.float64) + torch.arange(1, len(active) + 1)[:, None]
            bc2_sqrt = (1 - b2**step).sqrt()  # (S, K) bias corrections of each head's own step count
            scale = (config.lr / (1 - b1**step) * bc2_sqrt).float().to(dev)[..., None, None]
            eps_hat = (config.eps * bc2_sqrt).float().to(dev)[..., None, None]
            for s, a in enumerate(active):
                bi = idx[:a, s * bsz : (s + 1) * bsz].reshape(-1)
                xb = x.index_select(0, bi).view(a, bsz, d1)
                yb = y.index_select(0, bi).view(a, bsz, c).mT
                p, ma, va = params[:a], m[:a], v[:a]
                resid = torch.bmm(p, xb.mT).sigmoid_().sub_(yb).mul_(weight[:a, None, s * bsz : (s + 1) * bsz])
                grad = torch.bmm(resid, xb)  # (a, C, D+1): gradient of each head's mean BCE
                if config.optimizer == "adam":
                    grad.add_(p, alpha=config.weight_decay)  # coupled L2, as torch.optim.Adam
                else:
                    p.mul_(decay)  # decoupled, as torch.optim.AdamW
                ma.lerp_(grad, 1 - b1)
                va.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                # lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == (lr/bc1*sqrt(bc2)) * m / (sqrt(v) + eps*sqrt(bc2))
                p.addcdiv_(ma * scale[s, :a], va.sqrt().add_(eps_hat[s, :a]), value=-1.0)
            for (ex, ey), curve in zip(evals, curves, strict=True):
                curve[epoch] = auroc_columns(ey, torch.matmul(ex, params.mT.double()).cpu().numpy())
    back = torch.as_tensor(np.argsort(order))  # sorted position of each original head
    return params[back].cpu(), [cv[:, back.numpy()] for cv in curves]


def linear_probe_many(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    subsets: Sequence[np.ndarray] | None,
    seeds: Sequence[int],
    config: ProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> list[ProbeResult]:
    """K independent probes (own training rows and seed each) trained together.

    Same results, within float tolerance, as K :func:`linear_probe` calls on
    ``train_x[subsets[k]]`` with ``config.seed = seeds[k]``.

    Args:
        train_x: (Ntr, D) float32 features.
        train_y: (Ntr, C) 0/1 labels.
        val_x: (Nv, D) features.
        val_y: (Nv, C) labels.
        test_x: (Nte, D) features.
        test_y: (Nte, C) labels.
        subsets: K arrays of row numbers into ``train_x``; None: all rows for every head.
        seeds: K seeds.
        config: hyper-parameters (``config.seed`` unused here).
        class_names: (C,) names; default ``class_0..``.

    Returns:
        K :class:`ProbeResult`, in the order of ``seeds``.
    """
    config, start = config or ProbeConfig(), time.perf_counter()
    n_classes = {np.shape(train_y)[1], np.shape(val_y)[1], np.shape(test_y)[1]}
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(np.shape(train_y)[1])]
    if len(n_classes) != 1 or len(names) not in n_classes:
        raise ValueError(f"{len(names)} class names but train/val/test labels have {sorted(n_classes)} columns")
    subsets = [np.arange(len(train_x))] * len(seeds) if subsets is None else subsets
    _, (val_pc, test_pc) = fit_heads(train_x, train_y, subsets, seeds, config, [(val_x, val_y), (test_x, test_y)])
    val_curves, test_curves = macro_over_defined(val_pc), macro_over_defined(test_pc)  # (E, K)
    seconds, results = time.perf_counter() - start, []
    for j, seed in enumerate(seeds):
        vc, tc = val_curves[:, j], test_curves[:, j]
        if np.isnan(vc).all():
            log.warning("val macro AUROC undefined at every epoch (seed %d): choosing the last epoch", seed)
        best = len(vc) - 1 if np.isnan(vc).all() else int(np.nanargmax(vc))
        per_class = test_pc[best, j]
        results.append(
            ProbeResult(
                test_auroc_at_best_val=float(tc[best]),
                best_val_auroc=float(vc[best]),
                best_epoch=best + 1,
                max_test_auroc=float(np.nanmax(tc)) if not np.isnan(tc).all() else float("nan"),
                per_class_test_auroc=per_class.tolist(),
                class_names=names,
                n_undefined_classes=int(np.isnan(per_class).sum()),
                n_train=len(subsets[j]),
                n_val=len(val_x),
                n_test=len(test_x),
                val_curve=vc.tolist(),
                test_curve=tc.tolist(),
                seconds=seconds,
                seed=int(seed),
                fraction=len(subsets[j]) / len(train_x),
            )
        )
    log.info("trained %d probe head(s) in %.1f s", len(seeds), seconds)
    return results


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    config: ProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> ProbeResult:
    """The spec's linear probe: one head on all of ``train_x`` (features as given), selected on val.

    Args and shapes as :func:`linear_probe_many`; ``config.seed`` seeds initialisation and shuffling.
    """
    config = config or ProbeConfig()
    return linear_probe_many(train_x, train_y, val_x, val_y, test_x, test_y, None, [config.seed], config, class_names)[
        0
    ]

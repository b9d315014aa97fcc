"""Downstream metrics: rank-based AUROC (spec section 8) and report-generation text metrics (section 7).

AUROC is computed from average ranks (Mann-Whitney U), so tied scores count
one half, exactly as a brute-force count over positive/negative pairs would.
A class whose labels take one value in a split has no AUROC: it is reported as
NaN and counted, never crashed on, and the macro average is taken over the
remaining classes.

Text metrics follow the spec: sentence-level BLEU-1..4 (cumulative n-gram
weights, whitespace tokens, nltk smoothing method 1) and ROUGE-L F1 from
Google's ``rouge-score`` with the SAME whitespace tokens (its default
tokenizer would lower-case and strip every non-alphanumeric character, so
``"rhythm."`` would match ``"rhythm"`` for ROUGE but not for BLEU). Both are
averaged over sentence pairs and returned as fractions in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger(__name__)

BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu1": (1.0,),
    "bleu2": (0.5, 0.5),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


@dataclass
class MacroAuroc:
    """Macro AUROC over classes, with the classes it could not score.

    Attributes:
        macro: mean AUROC over the defined classes; NaN when no class is defined.
        per_class: (C,) AUROC per class, NaN where the class has one label value.
        n_undefined: number of NaN classes.
        undefined: their column indices.
    """

    macro: float
    per_class: np.ndarray
    n_undefined: int = 0
    undefined: list[int] = field(default_factory=list)


def _positive_rank_sums(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Sum of the average ranks (1-based, ties share their mean rank) of the positives, per column.

    Equal to ``(rankdata(scores, axis=-2) * y).sum(-2)``, but several times faster
    for the (K heads, N, C) blocks the probe scores every epoch: columns without
    ties take plain positions; only columns with ties get the run bookkeeping.

    Args:
        y: (N, C) bool labels.
        scores: (..., N, C) scores without NaN.

    Returns:
        (..., C) float64 rank sums.
    """
    s = np.ascontiguousarray(np.moveaxis(scores, -2, -1))  # (..., C, N): sort along a contiguous axis
    n = s.shape[-1]
    order = np.argsort(s, axis=-1)
    s = np.take_along_axis(s, order, axis=-1)
    pos = np.take_along_axis(np.broadcast_to(y.T, s.shape), order, axis=-1).astype(np.float64)
    out = pos @ np.arange(1.0, n + 1)
    first = np.ones(s.shape, dtype=bool)  # True where a run of equal scores starts
    first[..., 1:] = s[..., 1:] != s[..., :-1]
    tied = ~first.all(axis=-1)
    if tied.any():
        first, pos = first[tied], pos[tied]  # (T, N): only the columns with ties
        last = np.ones(first.shape, dtype=bool)  # True where a run ends
        last[:, :-1] = first[:, 1:]
        at = np.arange(n)
        start = np.maximum.accumulate(np.where(first, at, 0), axis=-1)
        end = np.minimum.accumulate(np.where(last, at, n - 1)[:, ::-1], axis=-1)[:, ::-1]
        out[tied] = (((start + end) / 2 + 1) * pos).sum(-1)
    return out


def auroc_columns(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every score column against the matching label column, vectorised.

    AUROC = (R+ - n+(n+ + 1)/2) / (n+ n-), with R+ the sum of the positives'
    average ranks (Mann-Whitney U; a tie between a positive and a negative counts 1/2).

    Args:
        y: (N, C) 0/1 labels (bool or numeric).
        scores: (..., N, C) scores; leading dimensions (e.g. K probe heads) share ``y``.

    Returns:
        (..., C) float64 AUROC; NaN for a class with one label value or a NaN score.
    """
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if y.ndim != 2 or scores.shape[-2:] != y.shape:
        raise ValueError(f"labels {y.shape} and scores {scores.shape} must be (N, C) and (..., N, C)")
    n_pos = y.sum(axis=0).astype(np.float64)  # (C,)
    n_neg = y.shape[0] - n_pos
    u = _positive_rank_sums(y, scores) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0) & ~np.isnan(scores).any(axis=-2), out, np.nan)


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one binary task (Mann-Whitney U with average ranks).

    Args:
        y_true: (N,) 0/1 labels.
        scores: (N,) scores, higher meaning more likely positive.

    Returns:
        AUROC in [0, 1]; NaN when ``y_true`` holds one value (or a score is NaN).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    ranks = rankdata(np.asarray(scores, dtype=np.float64).ravel())  # average ranks for ties; NaN propagates
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_over_defined(per_class: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN classes; NaN where no class is defined (no warning).

    Args:
        per_class: (..., C) AUROC per class.

    Returns:
        (...) float64 macro AUROC.
    """
    per_class = np.asarray(per_class, dtype=np.float64)
    defined = ~np.isnan(per_class)
    count = defined.sum(-1)
    total = np.where(defined, per_class, 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarise_auroc(per_class: np.ndarray) -> MacroAuroc:
    """Wrap per-class AUROCs (NaN = undefined) into a :class:`MacroAuroc`.

    Args:
        per_class: (C,) AUROC per class.

    Returns:
        The macro summary; ``macro`` is NaN only when every class is NaN.
    """
    per_class = np.asarray(per_class, dtype=np.float64)
    undefined = np.flatnonzero(np.isnan(per_class)).tolist()
    return MacroAuroc(
        macro=float(macro_over_defined(per_class)), per_class=per_class, n_undefined=len(undefined), undefined=undefined
    )


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> MacroAuroc:
    """Macro AUROC over classes, skipping (and reporting) classes with one label value.

    Args:
        y: (N, C) 0/1 labels.
        scores: (N, C) scores.

    Returns:
        :class:`MacroAuroc` with the mean over defined classes and the per-class values.
    """
    result = summarise_auroc(auroc_columns(y, scores))
    if result.n_undefined:
        log.debug("AUROC undefined for %d of %d classes: %s", result.n_undefined, y.shape[1], result.undefined)
    return result


def _rouge_scorer() -> Any:
    """A ROUGE-L scorer tokenising on whitespace, no stemming (imported lazily)."""
    from rouge_score import rouge_scorer, tokenizers

    class WhitespaceTokenizer(tokenizers.Tokenizer):
        """Split on whitespace only, as the BLEU tokens."""

        def tokenize(self, text: str) -> list[str]:
            return text.split()

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=WhitespaceTokenizer())


def report_metrics(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Sentence-level BLEU-1..4 and ROUGE-L F1, averaged over report pairs.

    Args:
        references: (M,) ground-truth reports.
        hypotheses: (M,) generated reports, paired with ``references``.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "rougeL"}`` as fractions in [0, 1]
        (NaN for every key when there are no pairs).

    Raises:
        ValueError: the two lists differ in length.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    keys = [*BLEU_WEIGHTS, "rougeL"]
    if not references:
        return dict.fromkeys(keys, float("nan"))
    smooth = SmoothingFunction().method1
    scorer = _rouge_scorer()
    totals = dict.fromkeys(keys, 0.0)
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_tokens, hyp_tokens = ref.split(), hyp.split()
        for key, weights in BLEU_WEIGHTS.items():
            totals[key] += float(sentence_bleu([ref_tokens], hyp_tokens, weights=weights, smoothing_function=smooth))
        totals["rougeL"] += float(scorer.score(ref, hyp)["rougeL"].fmeasure)
    return {k: v / len(references) for k, v in totals.items()}

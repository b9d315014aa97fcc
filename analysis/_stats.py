"""Small statistics helpers: mean with a t confidence interval, paired t-test, Holm correction."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "PairedTest", "holm", "mean_ci", "paired_test"]


class MeanCI(NamedTuple):
    """Mean of independent replicates with a two-sided t confidence interval.

    Attributes:
        mean: sample mean (NaN when there are no values).
        ci_low: lower bound; NaN with fewer than two values.
        ci_high: upper bound; NaN with fewer than two values.
        n: number of finite values used.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int


class PairedTest(NamedTuple):
    """Paired comparison of a variant against a baseline, matched by seed.

    Attributes:
        delta: mean of the paired differences (variant - baseline); NaN without pairs.
        p_value: two-sided paired t-test p-value; NaN with fewer than two pairs.
        n_pairs: number of seeds present in both.
        ci_low: lower bound of the Student-t confidence interval of the mean paired difference;
            NaN with fewer than two pairs, equal to ``delta`` when every difference is the same.
        ci_high: upper bound of that interval (same rules).
    """

    delta: float
    p_value: float
    n_pairs: int
    ci_low: float = math.nan
    ci_high: float = math.nan


def mean_ci(values: np.ndarray | list[float], *, confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t confidence interval over replicates (e.g. pretraining seeds).

    Matches ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=sem)``.
    With zero spread the interval collapses to the mean.

    Args:
        values: one value per replicate; non-finite values are dropped.
        confidence: coverage of the interval.

    Returns:
        The mean, the interval (NaN bounds with fewer than two values) and the count.
    """
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, n)
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return MeanCI(mean, mean - half, mean + half, n)


def paired_test(variant: dict[int, float], baseline: dict[int, float], *, confidence: float = 0.95) -> PairedTest:
    """Paired t-test of per-seed values, matched by seed.

    Args:
        variant: seed -> value of the variant.
        baseline: seed -> value of the baseline.
        confidence: coverage of the interval of the mean paired difference.

    Returns:
        The mean paired difference, ``scipy.stats.ttest_rel``'s two-sided p-value
        (NaN with fewer than two pairs or when every difference is zero and the test
        is undefined), the number of pairs and the Student-t interval of the mean
        difference (``scipy.stats.t.interval(confidence, n - 1, loc=delta, scale=sem)``
        of the differences; NaN bounds with fewer than two pairs, both equal to the delta when every
        difference is the same up to float rounding).
    """
    seeds = sorted(
        s for s in variant.keys() & baseline.keys() if math.isfinite(variant[s]) and math.isfinite(baseline[s])
    )
    if not seeds:
        return PairedTest(math.nan, math.nan, 0)
    a = np.array([variant[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    diff = mean_ci(a - b, confidence=confidence)
    if len(seeds) < 2:
        return PairedTest(diff.mean, math.nan, len(seeds))
    if np.allclose(a - b, (a - b)[0], rtol=1e-12, atol=1e-12):  # equal differences (up to float rounding)
        diff = diff._replace(ci_low=diff.mean, ci_high=diff.mean)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return PairedTest(diff.mean, p_value, len(seeds), diff.ci_low, diff.ci_high)


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the
    adjusted value of the i-th is ``min(1, max_{j <= i} (m - j + 1) * p_(j))``:
    rejecting where the adjusted p-value is below ``alpha`` controls the
    family-wise error rate at ``alpha``. Equals statsmodels'
    ``multipletests(p, method="holm")[1]`` on the finite values.

    Args:
        p_values: raw p-values; NaN (untested) entries stay NaN and do not count
            toward the number of comparisons ``m``.

    Returns:
        Adjusted p-values in the input order (float array, same length).
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out

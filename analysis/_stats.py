"""Small statistics helpers: mean with a t confidence interval, paired t-test."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "PairedTest", "mean_ci", "paired_test"]


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
    """

    delta: float
    p_value: float
    n_pairs: int


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


def paired_test(variant: dict[int, float], baseline: dict[int, float]) -> PairedTest:
    """Paired t-test of per-seed values, matched by seed.

    Args:
        variant: seed -> value of the variant.
        baseline: seed -> value of the baseline.

    Returns:
        The mean paired difference, ``scipy.stats.ttest_rel``'s two-sided p-value
        (NaN with fewer than two pairs or when every difference is identical and
        the test is undefined) and the number of pairs.
    """
    seeds = sorted(
        s for s in variant.keys() & baseline.keys() if math.isfinite(variant[s]) and math.isfinite(baseline[s])
    )
    if not seeds:
        return PairedTest(math.nan, math.nan, 0)
    a = np.array([variant[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    delta = float(np.mean(a - b))
    if len(seeds) < 2:
        return PairedTest(delta, math.nan, len(seeds))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return PairedTest(delta, p_value, len(seeds))

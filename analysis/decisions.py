"""Sequential ablation decisions: does a variant help, hurt, or not matter, and is it decided yet?

The ``decide`` search mode runs every variant and the baseline on a few seeds, then adds
seeds only where the comparison is still undecided. This module is the statistics of that
loop, plain numpy/scipy so the searcher, the benchmark and the report share one definition.

For each variant, the paired differences ``d_s = variant_s - baseline_s`` over the seeds
both have give a Student-t reading at the current number of pairs ``n``:

- **helps / hurts**: the paired t-test rejects ``delta = 0`` (Holm-corrected over the
  variants), the sign of the mean difference telling which (for a metric to minimise the
  sign is flipped, so "helps" always means "better").
- **equivalent**: the two one-sided tests (TOST) reject ``delta <= -margin`` and
  ``delta >= +margin`` (Holm-corrected over the variants): the ``1 - 2 alpha_n`` interval
  lies inside ``[-margin, +margin]``.
- **undecided** otherwise; it gets another seed until ``max_seeds``.

Looking again after every seed would inflate the error rates, so the alpha is *spent* over
the looks ``n = min_seeds .. max_seeds`` with group-sequential boundaries
(:func:`look_alphas`, O'Brien-Fleming shape calibrated on the paired t statistic): the
chance that a variant without effect is EVER declared to matter is ``alpha``, and so is the
chance that one at the margin is ever declared equivalent. Early looks are strict; the
last look is close to the fixed-sample threshold, so a decision that needs every seed
loses little power against a fixed grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis._stats import holm

__all__ = ["DECISIONS", "DECISIONS_FILE", "DecideRule", "Decision", "decide", "look_alphas", "why_we_stopped"]

#: the file a ``decide`` sweep writes its readings to, in the run directory
DECISIONS_FILE = "decisions.parquet"
#: the decisions a variant can be in
DECISIONS = ("helps", "hurts", "equivalent", "undecided")


@dataclass(frozen=True)
class DecideRule:
    """The decision rule of a ``decide`` sweep (the space's ``decide:`` section).

    Attributes:
        margin: equivalence margin on the objective (0.005 = half a point of AUROC).
        alpha: error rate spent over all looks, per family of variants.
        min_seeds: seeds every variant and the baseline run before the first look (>= 2).
        max_seeds: seeds after which an undecided variant stops undecided.
        maximize: the objective is better when larger (validation AUROC); ``False`` for a loss.
    """

    margin: float = 0.005
    alpha: float = 0.05
    min_seeds: int = 2
    max_seeds: int = 8
    maximize: bool = True

    def __post_init__(self) -> None:
        if not (self.margin > 0 and math.isfinite(self.margin)):
            raise ValueError(f"decide.margin must be a positive number, got {self.margin}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"decide.alpha must lie in (0, 0.5), got {self.alpha}")
        if self.min_seeds < 2:
            raise ValueError(f"decide.min_seeds must be at least 2 (a paired test needs 2 pairs), got {self.min_seeds}")
        if self.max_seeds < self.min_seeds:
            raise ValueError(f"decide.max_seeds ({self.max_seeds}) must be >= decide.min_seeds ({self.min_seeds})")


@functools.lru_cache(maxsize=32)
def look_alphas(rule: DecideRule) -> tuple[dict[int, float], dict[int, float]]:
    """Nominal p-value thresholds at each look (by number of pairs), spending ``alpha`` over the looks.

    Group-sequential boundaries with the O'Brien-Fleming shape (in z units, ``c * sqrt(max / n)``:
    strict early, close to the fixed-sample threshold at the last look), for the paired t
    statistic at ``n - 1`` degrees of freedom. The paired t statistic's null distribution does
    not depend on the noise level, so ``c`` is calibrated once by simulating it (200,000
    sequences of standard normal differences, a fixed seed): the chance that a variant without
    effect crosses the boundary at ANY look is ``alpha`` (two-sided), and the chance that one
    with ``|delta| = margin`` is ever declared equivalent is ``alpha`` (each one-sided test of TOST).

    Returns:
        ``(two_sided, one_sided)``: look -> nominal threshold for the p-value of the difference
        test, and for each one-sided test of the equivalence (TOST) reading.
    """
    looks = np.arange(rule.min_seeds, rule.max_seeds + 1)
    rng = np.random.default_rng(20261203)
    x = rng.standard_normal((200_000, rule.max_seeds))
    count = np.arange(1, rule.max_seeds + 1)
    mean = np.cumsum(x, axis=1) / count
    var = (np.cumsum(x**2, axis=1) - count * mean**2) / np.maximum(count - 1, 1)
    n = looks[None, :]
    t_stat = mean[:, looks - 1] / np.sqrt(var[:, looks - 1] / n)
    shape = np.sqrt(rule.max_seeds / looks)
    z_two = stats.norm.isf(stats.t.sf(np.abs(t_stat), n - 1))  # |z| with the same two-sided p
    z_one = stats.norm.isf(stats.t.sf(t_stat, n - 1))  # signed z with the same one-sided p
    c_two = float(np.quantile((z_two / shape).max(axis=1), 1 - rule.alpha))
    c_one = float(np.quantile((z_one / shape).max(axis=1), 1 - rule.alpha))
    two = {int(k): float(2 * stats.norm.sf(c_two * f)) for k, f in zip(looks, shape, strict=True)}
    one = {int(k): float(stats.norm.sf(c_one * f)) for k, f in zip(looks, shape, strict=True)}
    return two, one


@dataclass(frozen=True)
class Decision:
    """Where one variant stands against the baseline.

    Attributes:
        variant: the variant's name.
        decision: one of :data:`DECISIONS`.
        n_pairs: seeds with a value for both the variant and the baseline.
        delta: mean paired difference, variant - baseline (NaN without pairs).
        ci_low: lower bound of the 95% Student-t interval of ``delta`` (NaN with < 2 pairs).
        ci_high: upper bound of that interval.
        p_value: paired t-test of ``delta = 0``, two-sided.
        p_holm: ``p_value`` Holm-corrected over the variants.
        p_equiv: TOST p-value of ``|delta| >= margin``.
        p_equiv_holm: ``p_equiv`` Holm-corrected over the variants.
        alpha_look: the two-sided threshold of ``p_holm`` at this look (``n_pairs``); see :func:`look_alphas`.
    """

    variant: str
    decision: str
    n_pairs: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    p_equiv: float
    p_equiv_holm: float
    alpha_look: float


def _reading(diffs: np.ndarray, margin: float) -> tuple[float, float, float, float, float]:
    """(delta, 95% CI low, high, two-sided p, TOST p) of paired differences (NaN where undefined)."""
    n = diffs.size
    if n == 0:
        return (math.nan,) * 5
    delta = float(diffs.mean())
    if n < 2:
        return delta, math.nan, math.nan, math.nan, math.nan
    sd = float(diffs.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(delta)):  # identical differences: the sign (or the margin) is certain
        p = 0.0 if abs(delta) > 1e-12 else 1.0
        return delta, delta, delta, p, 0.0 if abs(delta) < margin else 1.0
    se = sd / math.sqrt(n)
    df = n - 1
    half = float(stats.t.ppf(0.975, df)) * se
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    p_lower = float(stats.t.sf((delta + margin) / se, df))  # H0: delta <= -margin
    p_upper = float(stats.t.cdf((delta - margin) / se, df))  # H0: delta >= +margin
    return delta, delta - half, delta + half, p, max(p_lower, p_upper)


def decide(
    values: Mapping[str, Mapping[int, float]],
    baseline: str,
    rule: DecideRule,
    decided: Mapping[str, Decision] | None = None,
) -> dict[str, Decision]:
    """Read every variant against the baseline at its current number of paired seeds.

    Args:
        values: variant -> seed -> objective value (the baseline included); NaN values
            (a failed trial) do not pair.
        baseline: the baseline variant's name.
        rule: margin, alpha and seed limits.
        decided: earlier decisions; a variant decided before keeps its decision (a
            decision, once taken, is final: no more seeds were run for it).

    Returns:
        variant -> :class:`Decision`, for every variant except the baseline.
    """
    decided = dict(decided or {})
    base = {s: v for s, v in values.get(baseline, {}).items() if math.isfinite(v)}
    two_sided, one_sided = look_alphas(rule)
    names = sorted(v for v in values if v != baseline)
    readings = {}
    for name in names:
        seeds = sorted(s for s, v in values[name].items() if math.isfinite(v) and s in base)
        diffs = np.array([values[name][s] - base[s] for s in seeds], dtype=float)
        readings[name] = (len(seeds), *_reading(diffs, rule.margin))
    p_holm = dict(zip(names, holm([readings[n][4] for n in names]), strict=True))
    p_equiv_holm = dict(zip(names, holm([readings[n][5] for n in names]), strict=True))
    out = {}
    for name in names:
        n, delta, low, high, p, p_equiv = readings[name]
        look = min(n, rule.max_seeds)
        alpha, alpha_equiv = (two_sided[look], one_sided[look]) if n >= rule.min_seeds else (0.0, 0.0)
        if name in decided and decided[name].decision != "undecided":
            out[name] = decided[name]
            continue
        verdict = "undecided"
        if n >= rule.min_seeds and p_holm[name] < alpha:
            better = delta > 0 if rule.maximize else delta < 0
            verdict = "helps" if better else "hurts"
        elif n >= rule.min_seeds and p_equiv_holm[name] < alpha_equiv:
            verdict = "equivalent"
        out[name] = Decision(name, verdict, n, delta, low, high, p, p_holm[name], p_equiv, p_equiv_holm[name], alpha)
    return out


def why_we_stopped(
    decisions: pd.DataFrame,
    trials: pd.DataFrame | None,
    results: pd.DataFrame | None,
    *,
    baseline: str,
    max_seeds: int,
) -> pd.DataFrame:
    """One row per variant of a ``decide`` sweep: its final decision, why it stopped and what it cost.

    Args:
        decisions: ``decisions.parquet`` (one row per reading that changed, in order).
        trials: ``trials.parquet`` (``variant``, ``hours``), for the compute each variant used.
        results: ``results.parquet``, for the test AUROC reported beside the (validation) decision.
        baseline: the baseline variant.
        max_seeds: the sweep's ``decide.max_seeds``.

    Returns:
        Columns ``variant, decision, n_pairs, seeds_run, delta, ci_low, ci_high, p_holm,
        p_equiv_holm, alpha_look, why, gpu_hours, test_auroc``; the baseline comes first.
    """
    last = decisions.sort_values("step").groupby("variant", sort=False).tail(1).set_index("variant")
    hours = trials.groupby("variant")["hours"].sum() if trials is not None and "hours" in trials else pd.Series()
    test = pd.Series(dtype=float)
    if results is not None and len(results):
        probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
        test = probes.groupby("variant")["value"].mean()
    rows = [{"variant": baseline, "decision": "baseline", "seeds_run": int((trials["variant"] == baseline).sum())
             if trials is not None else 0, "why": "every variant is read against it"}]  # fmt: skip
    for name, row in last.iterrows():
        if row["decision"] != "undecided":
            why = f"decided after {int(row['n_pairs'])} pairs"
        elif int(row["seeds_run"]) >= max_seeds:
            why = f"max_seeds ({max_seeds}) reached"
        else:
            why = "stopped by the GPU-hour budget (or the sweep was ended)"
        rows.append({"variant": name, **{k: row[k] for k in _TABLE_READING}, "why": why})
    table = pd.DataFrame(rows)
    table["gpu_hours"] = table["variant"].map(hours).astype(float)
    table["test_auroc"] = table["variant"].map(test).astype(float)
    columns = ["variant", "decision", *_TABLE_READING, "why", "gpu_hours", "test_auroc"]
    return table.reindex(columns=columns)


_TABLE_READING = ("n_pairs", "seeds_run", "delta", "ci_low", "ci_high", "p_holm", "p_equiv_holm", "alpha_look")

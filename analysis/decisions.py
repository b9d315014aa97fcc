"""Sequential ablation decisions: does a variant help, hurt, or not matter, and is it decided yet?

The ``decide`` search mode runs every variant and the baseline on a few seeds, then adds
seeds only where the comparison is still undecided. This module is the statistics of that
loop, plain numpy/scipy so the searcher, the benchmark and the report share one definition
(the array functions :func:`look_scores`, :func:`repeated_p`, :func:`holm_reject` and
:func:`decision_probability` are what both :func:`decide` and ``benchmarks/bench_decide.py`` call).

For each variant, the paired differences ``d_s = variant_s - baseline_s`` over the seeds
both have give a Student-t reading at the current number of pairs ``n``:

- **helps / hurts**: "no difference" is rejected, the sign of the mean difference telling
  which (for a metric to minimise the sign is flipped, so "helps" always means "better").
- **equivalent**: both one-sided tests (TOST) reject ``delta <= -margin`` and ``delta >= +margin``.
- **undecided** otherwise: it gets another seed until ``max_seeds``, unless the futility rule
  finds a decision by ``max_seeds`` unlikely (**undecidable within budget**, below).

Error control over the looks (repeated p-values). At every look ``n = min_seeds .. max_seeds``
the t statistic is turned into the normal score with the same p-value and divided by the
Wang-Tsiatis boundary shape ``(max_seeds / n) ** 0.4`` (between O'Brien-Fleming's 0.5 and
Pocock's 0: strict early; with looks 2..12 the nominal two-sided p a single variant needs is
8e-6 at 2 pairs and 0.029 at the last look). A variant's repeated p-value ``p*`` is the
chance, for a variant without effect, that the running maximum of that scaled score over ALL
looks reaches the variant's running maximum so far. The paired t statistic is pivotal, so this null
distribution is simulated once (:func:`null_maxima`: 200,000 standard normal sequences, a
fixed seed); with a single look it is the t distribution itself, and ``p*`` is the plain
paired t p-value (exactly). ``p*`` only falls as pairs are added, and under the null
``P(p* <= u) <= u`` at any stopping time. Holm over the variants is applied to ``p*`` at
``alpha``: a variant is declared to matter when its Holm-adjusted ``p*`` is ``<= alpha``
(the equivalence reading likewise, with ``p*`` of each one-sided test and the larger of the
two). Since every ``p*`` only falls, what Holm rejects at any look is also rejected by Holm on
the final ``p*`` values (a variant that stopped keeps its last ``p*``, never below the one it
would have reached at ``max_seeds``), so the family-wise error over all looks and variants is
at most ``alpha`` (the variants share one baseline: Holm needs no independence).

Futility (stopping only, never the tests): from ``n >= 3`` pairs, a still-open variant's
probability of a decision by ``max_seeds`` is predicted from its mean difference and the
seed standard deviation of the paired differences pooled over every variant (the predictive
distribution of the final mean under a flat prior on the effect, the final look's thresholds
at the variant's next Holm level ``alpha / k``). Below ``futility`` the variant stops as
"undecidable within budget"; that probability is kept in ``decisions.parquet``. Stopping
early can only remove rejections, so the error control above is untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "DECISIONS",
    "DECISIONS_FILE",
    "DecideRule",
    "Decision",
    "decide",
    "decision_probability",
    "holm_adjust",
    "holm_reject",
    "look_scores",
    "null_maxima",
    "pooled_sd",
    "repeated_p",
    "why_we_stopped",
]

#: the file a ``decide`` sweep writes its readings to, in the run directory
DECISIONS_FILE = "decisions.parquet"
#: the decisions a variant can be in
DECISIONS = ("helps", "hurts", "equivalent", "undecided")
#: null sequences simulated for the running maximum's distribution, and their seed
NULL_SEQUENCES = 200_000
_CALIBRATION_SEED = 20261203
#: the boundary shape's exponent, ``(max_seeds / n) ** SHAPE_EXPONENT`` (0.5: O'Brien-Fleming, 0: Pocock); 0.4
#: spends a little more early than O'Brien-Fleming (``bench_decide.py``'s frontier: more decisions per GPU-hour)
SHAPE_EXPONENT = 0.4
#: the first number of pairs at which the futility rule may stop a variant
FUTILITY_FROM = 3


@dataclass(frozen=True)
class DecideRule:
    """The decision rule of a ``decide`` sweep (the space's ``decide:`` section).

    Attributes:
        margin: equivalence margin on the objective (0.005 = half a point of AUROC).
        alpha: family-wise error rate over all looks and variants (each of the two families:
            "matters" and "equivalent").
        min_seeds: seeds every variant and the baseline run before the first look (>= 2).
        max_seeds: seeds after which an undecided variant stops undecided (independent of any
            grid it is compared with).
        maximize: the objective is better when larger (validation AUROC); ``False`` for a loss.
        futility: a variant whose predicted probability of a decision by ``max_seeds`` falls
            below this stops as "undecidable within budget" (0 turns the rule off).
    """

    margin: float = 0.005
    alpha: float = 0.05
    min_seeds: int = 2
    max_seeds: int = 12
    maximize: bool = True
    futility: float = 0.05

    def __post_init__(self) -> None:
        if not (self.margin > 0 and math.isfinite(self.margin)):
            raise ValueError(f"decide.margin must be a positive number, got {self.margin}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"decide.alpha must lie in (0, 0.5), got {self.alpha}")
        if self.min_seeds < 2:
            raise ValueError(f"decide.min_seeds must be at least 2 (a paired test needs 2 pairs), got {self.min_seeds}")
        if self.max_seeds < self.min_seeds:
            raise ValueError(f"decide.max_seeds ({self.max_seeds}) must be >= decide.min_seeds ({self.min_seeds})")
        if not 0 <= self.futility < 1:
            raise ValueError(f"decide.futility must lie in [0, 1) (0 = never stop for futility), got {self.futility}")

    @property
    def single_look(self) -> bool:
        """One look only (``min_seeds == max_seeds``): a fixed-sample test."""
        return self.min_seeds == self.max_seeds


def _shape(n: np.ndarray | int, max_seeds: int) -> np.ndarray:
    """The boundary shape at ``n`` pairs, in normal-score units: ``(max_seeds / n) ** SHAPE_EXPONENT``."""
    return (max_seeds / np.asarray(n, dtype=float)) ** SHAPE_EXPONENT


def _scores(t_stat: np.ndarray, df: np.ndarray) -> np.ndarray:
    """The normal score with the same upper-tail probability as ``t_stat`` at ``df`` degrees of freedom."""
    p = np.clip(special.stdtr(df, -t_stat), 1e-300, 1.0)  # the t upper tail (scipy.stats' is far slower)
    return -special.ndtri(p)


def look_scores(
    mean: np.ndarray, sd: np.ndarray, n: np.ndarray, margin: float, max_seeds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scaled look statistics of paired differences (arrays broadcast together).

    Args:
        mean: mean paired difference (any shape).
        sd: its standard deviation over pairs (``ddof=1``).
        n: number of pairs (>= 2).
        margin: the equivalence margin.
        max_seeds: the last look (the boundary shape's reference).

    Returns:
        ``(two_sided, lower, upper)``, each the normal score of a test divided by the boundary
        shape: the two-sided test of ``delta = 0`` (score of ``|t|``), and the one-sided tests of
        ``delta <= -margin`` and of ``delta >= +margin``. Large means evidence against the null.
    """
    mean, sd, n = np.broadcast_arrays(np.asarray(mean, float), np.asarray(sd, float), np.asarray(n, float))
    se = sd / np.sqrt(n)
    df = np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_two = np.where(se > 0, np.abs(mean) / se, np.where(np.abs(mean) > 0, np.inf, 0.0))
        t_low = np.where(se > 0, (mean + margin) / se, np.where(mean + margin > 0, np.inf, -np.inf))
        t_up = np.where(se > 0, (margin - mean) / se, np.where(margin - mean > 0, np.inf, -np.inf))
    shape = _shape(n, max_seeds)
    return _scores(t_two, df) / shape, _scores(t_low, df) / shape, _scores(t_up, df) / shape


@functools.lru_cache(maxsize=16)
def null_maxima(min_seeds: int, max_seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted null distribution of the running maximum of the scaled look statistic at the last look.

    Simulates :data:`NULL_SEQUENCES` sequences of ``max_seeds`` standard normal paired
    differences (the t statistic does not depend on the noise level) with a fixed seed, scores
    every look ``min_seeds .. max_seeds`` with :func:`look_scores` and keeps each sequence's maximum.

    Returns:
        ``(two_sided, one_sided)``: sorted maxima, shape ``(NULL_SEQUENCES,)`` each.
    """
    rng = np.random.default_rng(_CALIBRATION_SEED)
    x = rng.standard_normal((NULL_SEQUENCES, max_seeds))
    count = np.arange(1, max_seeds + 1)
    mean = np.cumsum(x, axis=1) / count
    var = (np.cumsum(x**2, axis=1) - count * mean**2) / np.maximum(count - 1, 1)
    looks = np.arange(min_seeds, max_seeds + 1)
    m, s = mean[:, looks - 1], np.sqrt(np.maximum(var[:, looks - 1], 0.0))
    # one-sided null at the boundary: (delta + margin) / se with delta = -margin; margin 0 gives that statistic
    two, _, upper = look_scores(m, s, looks[None, :], 0.0, max_seeds)
    return np.sort(two.max(axis=1)), np.sort(upper.max(axis=1))


def repeated_p(running_max: np.ndarray, rule: DecideRule, *, two_sided: bool) -> np.ndarray:
    """The repeated p-value ``p*``: the null tail probability of a running maximum of scaled look statistics.

    With one look (``min_seeds == max_seeds``) this is the exact t p-value; otherwise the
    fraction (plus one, over ``NULL_SEQUENCES + 1``: never below its Monte-Carlo value) of
    simulated null maxima at or above it.

    Args:
        running_max: maxima so far of :func:`look_scores` output (any shape; NaN stays NaN).
        rule: the rule (its seed limits pick the null distribution).
        two_sided: the two-sided test of no difference (else one one-sided test of TOST).

    Returns:
        ``p*``, the shape of ``running_max``.
    """
    m = np.asarray(running_max, dtype=float)
    if rule.single_look:  # shape 1 at the only look: the score's tail is the t tail itself
        return (2 if two_sided else 1) * stats.norm.sf(m)
    null = null_maxima(rule.min_seeds, rule.max_seeds)[0 if two_sided else 1]
    count = null.size - np.searchsorted(null, np.nan_to_num(m, nan=np.inf), side="left")
    return np.where(np.isnan(m), np.nan, (count + 1) / (null.size + 1))


def _threshold(level: np.ndarray, rule: DecideRule, *, two_sided: bool) -> np.ndarray:
    """The |t| (or one-sided t) a variant needs at the last look alone to reach ``p* <= level``."""
    level = np.asarray(level, dtype=float)
    if rule.single_look:
        c = stats.norm.isf(level / 2 if two_sided else level)
    else:
        null = null_maxima(rule.min_seeds, rule.max_seeds)[0 if two_sided else 1]
        c = np.quantile(null, np.clip(1 - level, 0, 1))
    return stats.t.isf(stats.norm.sf(c), rule.max_seeds - 1)  # shape 1 at the last look


def holm_reject(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down at ``alpha`` over the last axis: which hypotheses are rejected.

    Args:
        p: p-values, shape ``(..., m)``; NaN (not testable yet) counts as 1.
        alpha: the family-wise error rate.

    Returns:
        Boolean array of ``p``'s shape: the Holm-adjusted p-value is ``<= alpha``.
    """
    return holm_adjust(p) <= alpha


def holm_adjust(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values over the last axis (NaN counts as 1: an untested member of the family)."""
    p = np.nan_to_num(np.asarray(p, dtype=float), nan=1.0)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * np.arange(m, 0, -1)
    adjusted = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def decision_probability(
    delta: np.ndarray, n: np.ndarray, sigma: np.ndarray, k_two: np.ndarray, k_equiv: np.ndarray, rule: DecideRule
) -> np.ndarray:
    """Predicted probability that an open variant is decided by ``max_seeds`` (drives the futility stop only).

    The final mean difference is predicted as normal with mean ``delta`` and variance
    ``sigma^2 (N - n) / (n N)`` (``N = max_seeds``; a flat prior on the effect); a decision is
    "matters" when ``|mean| >= t2 sigma / sqrt(N)`` or "equivalent" when ``|mean| <= margin -
    t1 sigma / sqrt(N)``, ``t2``/``t1`` the last look's thresholds at the Holm level ``alpha / k``.

    Args:
        delta: current mean paired difference (any shape; arrays broadcast).
        n: current pairs (``< max_seeds``).
        sigma: the pooled seed standard deviation of the paired differences.
        k_two: members of the "matters" family not yet declared to matter (>= 1).
        k_equiv: members of the equivalence family not yet declared equivalent (>= 1).
        rule: the rule.

    Returns:
        The probability, in [0, 1].
    """
    delta, n, sigma = (np.asarray(a, dtype=float) for a in (delta, n, sigma))
    big_n = rule.max_seeds
    tau = sigma * np.sqrt(np.maximum(big_n - n, 0) / (n * big_n))
    se_final = sigma / math.sqrt(big_n)
    a = _threshold(rule.alpha / np.maximum(k_two, 1), rule, two_sided=True) * se_final
    b = rule.margin - _threshold(rule.alpha / np.maximum(k_equiv, 1), rule, two_sided=False) * se_final
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.maximum(tau, 1e-300)
        matters = stats.norm.sf((a - delta) / tau) + stats.norm.cdf((-a - delta) / tau)
        equiv = np.where(b > 0, stats.norm.cdf((b - delta) / tau) - stats.norm.cdf((-b - delta) / tau), 0.0)
    return np.clip(matters + equiv, 0.0, 1.0)


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
        p_value: paired t-test of ``delta = 0`` at this look alone, two-sided (for reading, not deciding).
        p_star: repeated p-value of ``delta = 0`` over the looks so far (see the module docstring).
        p_holm: ``p_star`` Holm-adjusted over the variants; "matters" when ``<= alpha``.
        p_equiv: TOST p-value of ``|delta| >= margin`` at this look alone.
        p_equiv_star: repeated p-value of the equivalence reading (the larger one-sided ``p*``).
        p_equiv_holm: ``p_equiv_star`` Holm-adjusted over the variants; "equivalent" when ``<= alpha``.
        p_decision: predicted probability of a decision by ``max_seeds`` (NaN where not computed:
            before ``FUTILITY_FROM`` pairs, once decided, or with the futility rule off).
        futile: the variant stopped undecided because ``p_decision < futility`` ("undecidable within budget").
    """

    variant: str
    decision: str
    n_pairs: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_star: float
    p_holm: float
    p_equiv: float
    p_equiv_star: float
    p_equiv_holm: float
    p_decision: float = math.nan
    futile: bool = False

    @property
    def final(self) -> bool:
        """No more seeds: decided, or stopped for futility."""
        return self.decision != "undecided" or self.futile


def _reading(diffs: np.ndarray, rule: DecideRule) -> tuple[float, ...]:
    """(delta, 95% CI low, high, two-sided p, TOST p, p*, TOST p*) of paired differences (NaN where undefined)."""
    n = diffs.size
    if n == 0:
        return (math.nan,) * 7
    delta = float(diffs.mean())
    if n < 2:
        return delta, *(math.nan,) * 6
    sd = float(diffs.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(delta)):
        sd = 0.0  # identical differences: the sign (or the margin) is certain
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    two, low, up = look_scores(np.array(delta), np.array(sd), np.array(n), rule.margin, n)  # shape 1: this look alone
    p, p_equiv = float(2 * stats.norm.sf(two)), float(max(stats.norm.sf(low), stats.norm.sf(up)))
    p_star = p_equiv_star = math.nan
    if n >= rule.min_seeds:  # the running maxima over the looks min_seeds .. n (in the order the seeds were run)
        looks = np.arange(rule.min_seeds, min(n, rule.max_seeds) + 1)
        count = np.arange(1, diffs.size + 1)
        means = np.cumsum(diffs) / count
        sds = np.sqrt(np.maximum((np.cumsum(diffs**2) - count * means**2) / np.maximum(count - 1, 1), 0.0))
        means, sds = means[looks - 1], sds[looks - 1]
        sds = np.where(sds <= 1e-12 * np.maximum(1.0, np.abs(means)), 0.0, sds)
        two, low, up = look_scores(means, sds, looks, rule.margin, rule.max_seeds)
        p_star = float(repeated_p(two.max(), rule, two_sided=True))
        p_equiv_star = float(
            max(repeated_p(low.max(), rule, two_sided=False), repeated_p(up.max(), rule, two_sided=False))
        )
    return delta, delta - half, delta + half, p, p_equiv, p_star, p_equiv_star


def pooled_sd(diffs: Sequence[np.ndarray]) -> float:
    """Standard deviation of paired differences pooled over variants (each about its own mean); NaN without df."""
    df = sum(d.size - 1 for d in diffs if d.size >= 2)
    if df == 0:
        return math.nan
    return math.sqrt(sum(float(((d - d.mean()) ** 2).sum()) for d in diffs if d.size >= 2) / df)


def decide(
    values: Mapping[str, Mapping[int, float]],
    baseline: str,
    rule: DecideRule,
    decided: Mapping[str, Decision] | None = None,
    seed_order: Sequence[int] | None = None,
) -> dict[str, Decision]:
    """Read every variant against the baseline at its current number of paired seeds.

    Args:
        values: variant -> seed -> objective value (the baseline included); NaN values
            (a failed trial) do not pair.
        baseline: the baseline variant's name.
        rule: margin, alpha, seed limits and futility threshold.
        decided: earlier readings; a variant decided (or stopped for futility) before keeps
            that reading: no more seeds were run for it, and its ``p*`` stays in the Holm family.
        seed_order: the order seeds are run in (the running maxima follow it); default ascending.

    Returns:
        variant -> :class:`Decision`, for every variant except the baseline.
    """
    decided = dict(decided or {})
    base = {s: v for s, v in values.get(baseline, {}).items() if math.isfinite(v)}
    rank = {s: i for i, s in enumerate(seed_order)} if seed_order is not None else {}
    names = sorted(v for v in values if v != baseline)
    diffs, readings = {}, {}
    for name in names:
        seeds = sorted((s for s, v in values[name].items() if math.isfinite(v) and s in base),
                       key=lambda s: (rank.get(s, len(rank)), s))  # fmt: skip
        diffs[name] = np.array([values[name][s] - base[s] for s in seeds], dtype=float)
        if name in decided and decided[name].final:
            old = decided[name]
            readings[name] = (old.n_pairs, old.delta, old.ci_low, old.ci_high, old.p_value, old.p_equiv,
                              old.p_star, old.p_equiv_star)  # fmt: skip
        else:
            readings[name] = (diffs[name].size, *_reading(diffs[name], rule))
    p_holm = dict(zip(names, holm_adjust([readings[n][6] for n in names]), strict=True)) if names else {}
    p_equiv_holm = dict(zip(names, holm_adjust([readings[n][7] for n in names]), strict=True)) if names else {}
    out: dict[str, Decision] = {}
    for name in names:
        if name in decided and decided[name].final:
            out[name] = decided[name]
            continue
        n, delta, low, high, p, p_equiv, p_star, p_equiv_star = readings[name]
        verdict = "undecided"
        if n >= rule.min_seeds and p_holm[name] <= rule.alpha:
            better = delta > 0 if rule.maximize else delta < 0
            verdict = "helps" if better else "hurts"
        elif n >= rule.min_seeds and p_equiv_holm[name] <= rule.alpha:
            verdict = "equivalent"
        out[name] = Decision(name, verdict, n, delta, low, high, p, p_star, float(p_holm[name]), p_equiv, p_equiv_star,
                             float(p_equiv_holm[name]))  # fmt: skip
    if rule.futility > 0:
        sigma = pooled_sd(list(diffs.values()))
        k_two = sum(d.decision not in ("helps", "hurts") for d in out.values())
        k_equiv = sum(d.decision != "equivalent" for d in out.values())
        for name, d in out.items():
            if d.final or not max(FUTILITY_FROM, rule.min_seeds) <= d.n_pairs < rule.max_seeds or not sigma > 0:
                continue
            prob = float(decision_probability(d.delta, d.n_pairs, sigma, k_two, k_equiv, rule))
            out[name] = dataclasses.replace(d, p_decision=prob, futile=prob < rule.futility)
    return out


def why_we_stopped(
    decisions: pd.DataFrame,
    trials: pd.DataFrame | None,
    results: pd.DataFrame | None,
    *,
    baseline: str,
    max_seeds: int,
    failed: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """One row per variant of a ``decide`` sweep: its final decision, why it stopped and what it cost.

    Args:
        decisions: ``decisions.parquet`` (one row per reading that changed, in order).
        trials: ``trials.parquet`` (``variant``, ``hours``), for the compute each variant used.
        results: ``results.parquet``, for the test AUROC reported beside the (validation) decision.
        baseline: the baseline variant.
        max_seeds: the sweep's ``decide.max_seeds``.
        failed: variant -> seeds whose trial failed on every try (excluded from pairing); default
            read from the ``failed_seeds`` column of ``decisions``.

    Returns:
        Columns ``variant, decision, n_pairs, seeds_run, delta, ci_low, ci_high, p_holm,
        p_equiv_holm, p_decision, why, gpu_hours, test_auroc``; the baseline comes first.
    """
    last = decisions.sort_values("step").groupby("variant", sort=False).tail(1).set_index("variant")
    hours = trials.groupby("variant")["hours"].sum() if trials is not None and "hours" in trials else pd.Series()
    test = pd.Series(dtype=float)
    if results is not None and len(results):
        probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
        test = probes.groupby("variant")["value"].mean()
    if failed is None:
        failed = {}
        ordered = decisions.sort_values("step")
        if "failed_seeds" in ordered:
            for name, seeds in ordered.groupby("variant")["failed_seeds"].last().items():
                failed[name] = _seed_list(seeds)
        if "baseline_failed_seeds" in ordered and len(ordered):
            failed[baseline] = _seed_list(ordered["baseline_failed_seeds"].iloc[-1])

    def lost(name: str) -> str:
        seeds = list(failed.get(name, []))
        return f"; failed, not paired: seed {', '.join(map(str, seeds))}" if seeds else ""

    base_seeds = int((trials["variant"] == baseline).sum()) if trials is not None else 0
    rows = [{"variant": baseline, "decision": "baseline", "seeds_run": base_seeds,
             "why": "every variant is read against it" + lost(baseline)}]  # fmt: skip
    for name, row in last.iterrows():
        pairs = int(row["n_pairs"])
        if row["decision"] != "undecided":
            why = f"decided after {pairs} pairs"
        elif bool(row.get("futile", False)):
            why = (f"undecidable within budget: P(decision by {max_seeds} pairs) = {float(row['p_decision']):.2f}"
                   f" after {pairs} pairs")  # fmt: skip
        elif pairs >= max_seeds:
            why = f"max_seeds ({max_seeds}) reached"
        else:
            why = f"stopped undecided after {pairs} pairs (GPU-hour budget, failed trials, or the sweep was ended)"
        rows.append({"variant": name, **{k: row.get(k, math.nan) for k in _TABLE_READING}, "why": why + lost(name)})
    table = pd.DataFrame(rows)
    table["gpu_hours"] = table["variant"].map(hours).astype(float)
    table["test_auroc"] = table["variant"].map(test).astype(float)
    columns = ["variant", "decision", *_TABLE_READING, "why", "gpu_hours", "test_auroc"]
    return table.reindex(columns=columns)


def _seed_list(text: object) -> list[int]:
    """Seeds from a comma-separated ``failed_seeds`` cell (empty or missing: none)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    return [int(s) for s in str(text).split(",") if s.strip()]


_TABLE_READING = ("n_pairs", "seeds_run", "delta", "ci_low", "ci_high", "p_holm", "p_equiv_holm", "p_decision")

"""The ``decide`` search mode against fixed grids: decisions right for the GPU-hours, and the error rates held.

Both procedures read the very same simulated trial values (a paired comparison), with the
rule's own array functions (:func:`analysis.decisions.look_scores`, ``repeated_p``,
``holm_adjust``, ``decision_probability``: the functions :func:`analysis.decisions.decide`
calls), vectorised over studies.

- A fixed-N grid (N = 4, 8, 12) runs every variant and the baseline on N seeds and reads each
  comparison once: paired t-test with Holm over the variants at ``alpha`` for "helps"/"hurts",
  TOST with Holm at ``alpha`` for "equivalent" (the rule with one look, ``min_seeds = max_seeds = N``).
- ``decide`` runs ``min_seeds`` seeds, then a seed per round to each variant still open (and
  to the baseline the seed its pairs need), reading after every round: repeated p-values
  with Holm at ``alpha``, ``max_seeds`` (12 by default: it is not the grid's N) and the futility
  stop (``--futility``). The searcher does the same trial by trial.

Simulated studies (the distribution, stated): ``--variants`` variants (default 6) whose true
effects on validation AUROC are drawn uniformly from {0, +-0.5, +-1, +-3} percentage points;
a variant's standard deviation over pretraining seeds drawn per study uniformly in [0.5, 1]
point (``--noise``); two variants' values at one seed correlate with ``--rho`` 0.5 (a shared
seed effect, what pairing removes). Margin 0.5 point, alpha 0.05.

Scoring: ``|effect| > margin`` must be "helps"/"hurts" with the right sign, ``effect = 0``
"equivalent", and on the boundary (``|effect| = margin``) the right sign or "equivalent".
"undecided" (at max_seeds or for futility) is never right. GPU-hours are counted in trials
(every trial costs the same). Standard errors are over studies (a paired difference's over
the per-study differences).

Error rates: the per-variant false "matters" rate is over the zero-effect variants of the
mixed studies; the all-null family-wise rate is P(any of 6 null variants, one shared baseline,
declared to help or hurt) over ``--null-studies`` (20,000 by default) all-null studies; a
single null variant alone over as many. ``--quick`` runs fewer studies: its error figures
are then indicative only (their standard errors are printed).

Usage: ``python benchmarks/bench_decide.py [--quick] [--studies N] [--seed S]``. The last line
is ``ratio: X``: decisions right by decide / by the 8-seed grid, for decide's shipped rule at
mean GPU-hours no higher than the grid's (if it cost more, the best frontier point that does not).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np

from analysis.decisions import (
    FUTILITY_FROM,
    DecideRule,
    decide,
    decision_probability,
    holm_adjust,
    look_scores,
    repeated_p,
)

EFFECTS_POINTS = (0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0)
UNDECIDED, HELPS, HURTS, EQUIVALENT = 0, 1, 2, 3
NAMES = ("undecided", "helps", "hurts", "equivalent")
GRIDS = (4, 8, 12)


def simulate(
    rng: np.random.Generator,
    studies: int,
    variants: int,
    seeds: int,
    noise: tuple[float, float],
    rho: float,
    effects_points: tuple[float, ...] = EFFECTS_POINTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Studies' true effects and every trial value a ``seeds``-seed grid would produce.

    Returns:
        ``effects`` (S, V) and ``values`` (S, V + 1, seeds), the baseline in row 0 of each study.
    """
    effects = rng.choice(np.array(effects_points) / 100, size=(studies, variants))
    sd = rng.uniform(*noise, size=(studies, 1, 1))
    seed_effect = rng.normal(0, 1, size=(studies, 1, seeds)) * sd * math.sqrt(rho)
    own = rng.normal(0, 1, size=(studies, variants + 1, seeds)) * sd * math.sqrt(1 - rho)
    means = 0.85 + np.concatenate([np.zeros((studies, 1)), effects], axis=1)
    return effects, means[:, :, None] + seed_effect + own


def _prefix_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof 1) of the paired differences over the first n seeds, for every n: (S, V, seeds) each."""
    diffs = values[:, 1:, :] - values[:, :1, :]
    count = np.arange(1, diffs.shape[2] + 1)
    mean = np.cumsum(diffs, axis=2) / count
    var = (np.cumsum(diffs**2, axis=2) - count * mean**2) / np.maximum(count - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0.0))


def _verdicts(mean: np.ndarray, adj_two: np.ndarray, adj_equiv: np.ndarray, rule: DecideRule) -> np.ndarray:
    """Decision codes from Holm-adjusted p-values (matters first, then equivalence)."""
    better = mean > 0 if rule.maximize else mean < 0
    out = np.where(adj_equiv <= rule.alpha, EQUIVALENT, UNDECIDED)
    return np.where(adj_two <= rule.alpha, np.where(better, HELPS, HURTS), out)


def run_grid(values: np.ndarray, n: int, rule: DecideRule) -> tuple[np.ndarray, np.ndarray]:
    """One look at ``n`` pairs at the full alpha. Returns decision codes (S, V) and trials per study (S,)."""
    single = dataclasses.replace(rule, min_seeds=n, max_seeds=n, futility=0.0)
    mean, sd = _prefix_stats(values[:, :, :n])
    two, low, up = look_scores(mean[:, :, -1], sd[:, :, -1], n, rule.margin, n)
    p_two = repeated_p(two, single, two_sided=True)
    p_eq = np.maximum(repeated_p(low, single, two_sided=False), repeated_p(up, single, two_sided=False))
    codes = _verdicts(mean[:, :, -1], holm_adjust(p_two), holm_adjust(p_eq), rule)
    return codes, np.full(values.shape[0], values.shape[1] * n)


def run_decide(values: np.ndarray, rule: DecideRule) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The decide loop over all studies at once (synchronous rounds: one more seed per open variant per look).

    Args:
        values: (S, V + 1, >= max_seeds) trial values, the baseline in row 0.
        rule: the rule.

    Returns:
        ``(codes, pairs, futile, trials)``: decision codes (S, V), pairs each variant ran (S, V),
        whether it stopped for futility (S, V), trials per study (S,).
    """
    mean_all, sd_all = _prefix_stats(values[:, :, : rule.max_seeds])
    shape = mean_all.shape[:2]
    codes = np.zeros(shape, dtype=int)
    final = np.zeros(shape, dtype=bool)
    futile = np.zeros(shape, dtype=bool)
    pairs = np.full(shape, rule.min_seeds)
    run_max = np.full((3, *shape), -np.inf)
    mean_now, sd_now = mean_all[:, :, rule.min_seeds - 1].copy(), sd_all[:, :, rule.min_seeds - 1].copy()
    for look in range(rule.min_seeds, rule.max_seeds + 1):
        open_ = ~final
        pairs[open_] = look
        mean_now[open_], sd_now[open_] = mean_all[:, :, look - 1][open_], sd_all[:, :, look - 1][open_]
        scores = look_scores(mean_now, sd_now, pairs, rule.margin, rule.max_seeds)
        for i, score in enumerate(scores):
            run_max[i] = np.where(open_, np.maximum(run_max[i], score), run_max[i])
        p_two = repeated_p(run_max[0], rule, two_sided=True)
        p_eq = np.maximum(repeated_p(run_max[1], rule, two_sided=False), repeated_p(run_max[2], rule, two_sided=False))
        new = _verdicts(mean_now, holm_adjust(p_two), holm_adjust(p_eq), rule)
        codes = np.where(open_, new, codes)
        final |= codes != UNDECIDED
        if rule.futility > 0 and max(FUTILITY_FROM, rule.min_seeds) <= look < rule.max_seeds:
            df = np.maximum(pairs - 1, 0)
            sigma = np.sqrt((df * sd_now**2).sum(axis=1, keepdims=True) / df.sum(axis=1, keepdims=True))
            k_two = (~np.isin(codes, (HELPS, HURTS))).sum(axis=1, keepdims=True)
            k_eq = (codes != EQUIVALENT).sum(axis=1, keepdims=True)
            prob = decision_probability(mean_now, pairs, sigma, k_two, k_eq, rule)
            stop = ~final & (prob < rule.futility)
            futile |= stop
            final |= stop
        if final.all():
            break
    trials = pairs.sum(axis=1) + pairs.max(axis=1)  # the baseline runs the seeds its longest comparison needs
    return codes, pairs, futile, trials


def run_decide_scalar(values: np.ndarray, rule: DecideRule) -> tuple[list[str], list[int]]:
    """The same loop for one study through :func:`analysis.decisions.decide` (the reference the tests compare with).

    Returns:
        (decision per variant, pairs per variant).
    """
    rows = values.shape[0]
    counts = [rule.min_seeds] * rows
    decided: dict = {}
    while True:
        names = ["base", *(f"v{i}" for i in range(1, rows))]
        table = {name: {s: float(values[i, s]) for s in range(counts[i])} for i, name in enumerate(names)}
        decided = decide(table, "base", rule, decided)
        open_ = [i for i in range(1, rows) if not decided[f"v{i}"].final and counts[i] < rule.max_seeds]
        if not open_:
            break
        for i in open_:
            counts[i] += 1
        counts[0] = max(counts[0], max(counts[i] for i in open_))
    return [decided[f"v{i}"].decision for i in range(1, rows)], [decided[f"v{i}"].n_pairs for i in range(1, rows)]


def correct(codes: np.ndarray, effects: np.ndarray, margin: float) -> np.ndarray:
    """Whether each decision matches its true effect (see the module docstring)."""
    sign = np.where(effects > 0, HELPS, HURTS)
    big = np.abs(effects) > margin + 1e-12
    small = np.abs(effects) < margin - 1e-12
    return np.where(big, codes == sign, np.where(small, codes == EQUIVALENT, (codes == sign) | (codes == EQUIVALENT)))


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def _null_rates(rng: np.random.Generator, studies: int, variants: int, args: argparse.Namespace, rule: DecideRule):
    """All-null studies: (family-wise rate, per-variant rates) for decide and the 8-seed grid."""
    out = {}
    chunks = [min(5000, studies - i) for i in range(0, studies, 5000)]
    hits = {"decide": [], "grid 8": []}
    for size in chunks:
        _, values = simulate(rng, size, variants, max(rule.max_seeds, 8), tuple(args.noise), args.rho, (0.0,))
        hits["decide"].append(np.isin(run_decide(values, rule)[0], (HELPS, HURTS)))
        hits["grid 8"].append(np.isin(run_grid(values, 8, rule)[0], (HELPS, HURTS)))
    for name, parts in hits.items():
        matters = np.concatenate(parts)
        out[name] = (matters.any(axis=1), matters.mean(axis=0))
    return out


def _line(label: str, mean: float, se: float, unit: str = "%", scale: float = 100.0, digits: int = 1) -> str:
    return f"{label} {scale * mean:.{digits}f} +- {scale * se:.{digits}f}{unit}"


def main(argv: list[str] | None = None) -> int:
    """Simulate the studies, run decide and the grids on each, print the figures and ``ratio: X``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 studies and 4,000 null studies (indicative)")
    parser.add_argument("--studies", type=int, default=None, help="mixed-effect studies (default 4000)")
    parser.add_argument("--null-studies", type=int, default=None, help="all-null studies (default 20000)")
    parser.add_argument("--variants", type=int, default=6, help="variants per study (plus the baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--margin", type=float, default=0.005, help="equivalence margin (0.005 = half a point)")
    parser.add_argument("--noise", type=float, nargs=2, default=(0.005, 0.01), metavar=("LOW", "HIGH"),
                        help="range of a variant's seed sd, drawn per study (0.005 0.01 = 0.5 to 1 point)")  # fmt: skip
    parser.add_argument("--rho", type=float, default=0.5, help="correlation of two variants' values at one seed")
    parser.add_argument("--max-seeds", type=int, default=None, help="decide's max_seeds (default: the rule's)")
    parser.add_argument(
        "--futility", type=float, default=None, help="decide's futility threshold (default: the rule's)"
    )
    args = parser.parse_args(argv)
    studies = args.studies or (500 if args.quick else 4000)
    null_studies = args.null_studies or (4000 if args.quick else 20000)
    shipped = DecideRule(margin=args.margin)
    rule = dataclasses.replace(shipped, max_seeds=args.max_seeds or shipped.max_seeds,
                               futility=shipped.futility if args.futility is None else args.futility)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    seeds = max(rule.max_seeds, *GRIDS)
    effects, values = simulate(rng, studies, args.variants, seeds, tuple(args.noise), args.rho)
    null = effects == 0
    results = {}
    for n in GRIDS:
        codes, trials = run_grid(values, n, rule)
        results[f"grid {n}"] = (codes, trials, None)
    codes, pairs, futile, trials = run_decide(values, rule)
    results["decide"] = (codes, trials, pairs)
    frontier = []
    for fut in sorted({0.0, 0.05, 0.1, 0.2, 0.3, 0.4, rule.futility}):
        other = dataclasses.replace(rule, futility=fut)
        c, _, _, t = run_decide(values, other)
        frontier.append((fut, t, correct(c, effects, rule.margin).mean(axis=1), (c == UNDECIDED).mean(axis=1)))
    null_rates = _null_rates(rng, null_studies, args.variants, args, rule)
    single = _null_rates(rng, null_studies, 1, args, rule)
    elapsed = time.perf_counter() - started

    print(f"{studies} simulated studies x {args.variants} variants + baseline; effects {EFFECTS_POINTS} points,")
    low, high = (100 * v for v in args.noise)
    print(f"  seed sd {low:g}-{high:g} points, same-seed correlation {args.rho}; margin {rule.margin}, alpha "
          f"{rule.alpha}; decide: seeds {rule.min_seeds}..{rule.max_seeds}, futility {rule.futility}; "
          f"{null_studies} all-null studies; simulated in {elapsed:.1f} s")  # fmt: skip
    if args.quick:
        print("  --quick: error figures are indicative only (see their standard errors)")
    right, undecided = {}, {}
    for name, (codes, trials, _) in results.items():
        right[name] = correct(codes, effects, rule.margin).mean(axis=1)
        undecided[name] = (codes == UNDECIDED).mean(axis=1)
        fm = np.isin(codes, (HELPS, HURTS))[null]
        print(f"{name:8s} " + "   ".join([
            _line("GPU-hours (trials)/study", *_mean_se(trials), unit="", scale=1.0, digits=2),
            _line("right", *_mean_se(right[name])), _line("undecided", *_mean_se(undecided[name])),
            _line("false 'matters' at effect 0", *_mean_se(fm), digits=2),
        ]))  # fmt: skip
    grid_cost = results["grid 8"][1].mean()
    d_right = _mean_se(right["decide"] - right["grid 8"])
    d_und = _mean_se(undecided["decide"] - undecided["grid 8"])
    d_cost = results["decide"][1].mean() / grid_cost
    gains = f"{_line('right', *d_right, unit=' points')}, {_line('undecided', *d_und, unit=' points')}"
    print(f"decide - grid 8: {gains}, GPU-hours x{d_cost:.3f}")
    print(f"frontier of decide (max_seeds {rule.max_seeds}) over the futility threshold:")
    for fut, t, r, u in frontier:
        print(f"  futility {fut:4.2f}: GPU-hours/study {t.mean():6.2f} (grid 8: {grid_cost:.0f})   "
              f"{_line('right', *_mean_se(r))}   {_line('undecided', *_mean_se(u))}")  # fmt: skip
    print("grids: " + ", ".join(f"N={n}: {results[f'grid {n}'][1].mean():.0f} GPU-hours, "
                                f"{_line('right', *_mean_se(right[f'grid {n}']))}" for n in GRIDS))  # fmt: skip
    pairs = results["decide"][2]
    used = ", ".join(f"{e:g}: {pairs[np.isclose(np.abs(effects) * 100, e)].mean():.1f}" for e in (0, 0.5, 1, 3))
    print(f"decide's pairs per variant by |effect| in points: {used}; stopped for futility "
          f"{futile.mean():.1%}")  # fmt: skip
    for label, rates in (("6 null variants, one baseline", null_rates), ("one null variant alone", single)):
        for name, (any_, per) in rates.items():
            fwer = _mean_se(any_)
            print(f"all-null ({label}), {name:6s}: {_line('P(any declared to matter)', *fwer, digits=2)}; "
                  f"per variant max {per.max():.2%} (alpha {rule.alpha})")  # fmt: skip
    cost = results["decide"][1].mean()
    ratio_right, note = right["decide"].mean(), "the shipped rule"
    if cost > grid_cost:
        under = [(r.mean(), fut) for fut, t, r, _ in frontier if t.mean() <= grid_cost]
        ratio_right, fut = max(under) if under else (math.nan, math.nan)
        note = f"the frontier point at futility {fut} (the shipped rule cost more than the grid)"
    print(f"ratio: decisions right by decide / by the 8-seed grid at no more GPU-hours ({note})")
    print(f"ratio: {ratio_right / right['grid 8'].mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

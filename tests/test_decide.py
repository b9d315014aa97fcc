"""The ``decide`` search mode's statistics and scheduling (no Ray cluster: the searcher is driven directly)."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.decisions import DecideRule, decide, holm_adjust, look_scores, repeated_p, why_we_stopped
from deri_sweep.common.strict_loader import ConfigError, from_dict
from deri_sweep.orchestration.decide_searcher import DecideSearcher
from deri_sweep.orchestration.spaces import SearchSpace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_decide  # noqa: E402  (the benchmark's vectorised loop, checked here against decide())

RULE = DecideRule(margin=0.005, alpha=0.05, min_seeds=2, max_seeds=8, futility=0.0)


def test_a_single_look_is_exactly_the_paired_t_test_at_alpha():
    # min_seeds == max_seeds: p* is the t p-value itself, so the threshold is alpha exactly (no simulation)
    rule = DecideRule(min_seeds=8, max_seeds=8, futility=0.0)
    diffs = np.random.default_rng(0).normal(0.002, 0.01, size=(500, 8))
    two, low, up = look_scores(diffs.mean(1), diffs.std(1, ddof=1), 8, 0.005, 8)
    p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert repeated_p(two, rule, two_sided=True) == pytest.approx(p, rel=1e-9, abs=1e-15)
    tost = np.maximum(stats.ttest_1samp(diffs, -0.005, axis=1, alternative="greater").pvalue,
                      stats.ttest_1samp(diffs, 0.005, axis=1, alternative="less").pvalue)  # fmt: skip
    p_eq = np.maximum(repeated_p(low, rule, two_sided=False), repeated_p(up, rule, two_sided=False))
    assert p_eq == pytest.approx(tost, rel=1e-9, abs=1e-15)
    # at the t quantile itself: p* = alpha to rounding, one side declares, the other does not
    edge = stats.t.isf(0.025, 7)
    at_edge = repeated_p(look_scores(edge, math.sqrt(8), 8, 1.0, 8)[0], rule, two_sided=True)
    assert at_edge == pytest.approx(0.05, rel=1e-9)


def test_repeated_p_values_hold_alpha_per_variant_and_per_family():
    # fresh null studies (not the calibration's seed), the rule of the benchmark: 2..12 looks, futility on.
    # 4,000 studies: a rate at 0.05 has a Monte-Carlo standard error of 0.0034 (the benchmark runs 20,000)
    rule = DecideRule()
    rng = np.random.default_rng(11)
    _, values = bench_decide.simulate(rng, 4000, 1, 12, (0.005, 0.01), 0.5, (0.0,))
    codes, pairs, _, _ = bench_decide.run_decide(values, dataclasses.replace(rule, futility=0.0))
    single = np.isin(codes, (bench_decide.HELPS, bench_decide.HURTS)).mean()
    assert 0.035 < single <= 0.05 + 2 * 0.0034, single  # one variant, every look to 12: about alpha, not above
    _, values = bench_decide.simulate(rng, 4000, 6, 12, (0.005, 0.01), 0.5, (0.0,))
    codes, pairs, futile, _ = bench_decide.run_decide(values, rule)
    family = np.isin(codes, (bench_decide.HELPS, bench_decide.HURTS)).any(axis=1).mean()
    assert family <= 0.05 and futile.any() and (pairs > 2).any(), family  # 6 nulls, one baseline: Holm on p*
    # looking after every seed at a fixed 0.05 (what repeated p-values replace) would be far above alpha
    naive = np.zeros(len(values), dtype=bool)
    for n in range(2, 13):
        naive |= stats.ttest_1samp(values[:, 1, :n] - values[:, 0, :n], 0.0, axis=1).pvalue < 0.05
    assert naive.mean() > 0.15


def test_the_benchmark_loop_is_decide_itself():
    # the vectorised loop the benchmark measures gives decide()'s decisions and pairs, study by study
    rule = DecideRule()  # the shipped rule: 2..12 looks, futility on
    _, values = bench_decide.simulate(np.random.default_rng(4), 8, 4, 12, (0.005, 0.01), 0.5)
    codes, pairs, _, _ = bench_decide.run_decide(values, rule)
    for i in range(len(values)):
        decisions, n = bench_decide.run_decide_scalar(values[i], rule)
        assert decisions == [bench_decide.NAMES[c] for c in codes[i]] and n == list(pairs[i])


def _values(rows: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    return {name: dict(enumerate(vals)) for name, vals in rows.items()}


def test_readings_match_scipy_and_decide_helps_hurts_equivalent():
    rng = np.random.default_rng(0)
    base = 0.80 + rng.normal(0, 0.01, 8)
    values = _values({
        "base": list(base),
        "better": list(base + 0.05 + rng.normal(0, 0.003, 8)),
        "worse": list(base - 0.05 + rng.normal(0, 0.003, 8)),
        "same": list(base + rng.normal(0, 0.0005, 8)),
        "noisy": list(base + rng.normal(0, 0.02, 8)),
    })  # fmt: skip
    out = decide(values, "base", RULE)
    assert {k: d.decision for k, d in out.items()} == {
        "better": "helps", "worse": "hurts", "same": "equivalent", "noisy": "undecided"
    }  # fmt: skip
    diffs = np.array(list(values["noisy"].values())) - base
    assert out["noisy"].p_value == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    upper = stats.ttest_1samp(diffs, 0.005, alternative="less").pvalue
    lower = stats.ttest_1samp(diffs, -0.005, alternative="greater").pvalue
    assert out["noisy"].p_equiv == pytest.approx(max(upper, lower))
    ci = stats.t.interval(0.95, 7, loc=diffs.mean(), scale=stats.sem(diffs))
    assert (out["noisy"].ci_low, out["noisy"].ci_high) == pytest.approx(ci)
    assert out["noisy"].p_star >= out["noisy"].p_value  # the looks before cost: p* is never below this look's p
    p_star = [out[k].p_star for k in sorted(out)]
    assert [out[k].p_holm for k in sorted(out)] == pytest.approx(list(np.minimum(1, _holm_reference(p_star))))
    assert list(holm_adjust(p_star)) == pytest.approx(list(np.minimum(1, _holm_reference(p_star))))
    # a loss to minimise: the same numbers read the other way round
    flipped = decide(values, "base", dataclasses.replace(RULE, maximize=False))
    assert flipped["better"].decision == "hurts" and flipped["worse"].decision == "helps"


def _holm_reference(p: list[float]) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = running
    return adjusted


def test_a_decision_is_final_and_failed_trials_do_not_pair():
    rule = DecideRule(min_seeds=2, max_seeds=4, futility=0.0)
    values = _values({"base": [0.8, 0.81, 0.79, 0.80], "v": [0.9, 0.91, 0.89, 0.90]})
    first = decide(values, "base", rule)
    assert first["v"].decision == "helps" and first["v"].n_pairs == 4
    values["v"][4], values["base"][4] = 0.5, 0.9  # a later seed that would argue otherwise: not read again
    assert decide(values, "base", rule, first)["v"] == first["v"]
    failed = _values({"base": [0.8, math.nan, 0.79], "v": [0.81, 0.82, math.nan]})
    reading = decide(failed, "base", RULE)["v"]
    assert reading.n_pairs == 1 and reading.decision == "undecided" and math.isnan(reading.p_value)


Value = Callable[[str, int], float]


def drive(searcher: DecideSearcher, value: Value, stop_after: int | None = None) -> list[tuple[str, int]]:
    """Run the searcher as Tune would with one trial at a time; returns the (variant, seed) trials run."""
    ran = []
    number = len(searcher.assigned)
    while stop_after is None or len(ran) < stop_after:
        config = searcher.suggest(f"t{number}")
        if config == DecideSearcher.FINISHED:
            break
        assert config is not None  # one trial at a time: nothing running, so never "ask later"
        ran.append((config["variant"], config["seed"]))
        result = value(config["variant"], config["seed"])
        searcher.on_trial_complete(f"t{number}", {"objective": result, "hours": 1.0})
        number += 1
    return ran


def _study(margin: float = 0.001, futility: float = 0.0, max_seeds: int = 8):
    rng = np.random.default_rng(3)
    seed_effect = {s: rng.normal(0, 0.01) for s in range(100, 116)}
    noise = {(v, s): rng.normal(0, 0.002) for v in ("base", "big", "null") for s in seed_effect}
    effect = {"base": 0.0, "big": 0.05, "null": 0.0}

    def value(variant: str, seed: int) -> float:
        return 0.8 + effect[variant] + seed_effect[seed] + noise[(variant, seed)]

    variants = {"base": {}, "big": {"optim.lr": 0.01}, "null": {"optim.lr": 0.0011}}
    rule = DecideRule(margin=margin, alpha=0.05, min_seeds=2, max_seeds=max_seeds, futility=futility)
    return variants, rule, list(seed_effect)[:max_seeds], value


def test_the_searcher_adds_seeds_only_where_undecided(tmp_path):
    variants, rule, seeds, value = _study()  # margin below the noise, no futility stop: null stays open
    searcher = DecideSearcher(variants, "base", seeds, rule, tmp_path)
    ran = drive(searcher, value)
    got = {v: [s for name, s in ran if name == v] for v in variants}
    assert got["base"] == got["null"] == list(range(100, 108))  # undecided: every seed, paired
    assert 2 < len(got["big"]) < 8 and got["big"] == list(range(100, 100 + len(got["big"])))
    assert ran[:6] == [("base", 100), ("big", 100), ("null", 100), ("base", 101), ("big", 101), ("null", 101)]
    log = pd.read_parquet(tmp_path / "decisions.parquet")
    final = log.sort_values("step").groupby("variant").tail(1).set_index("variant")
    assert final.loc["big", "decision"] == "helps" and final.loc["big", "n_pairs"] == len(got["big"])
    assert final.loc["null", "decision"] == "undecided" and final.loc["null", "seeds_run"] == 8
    assert (log["gpu_hours"].diff().dropna() >= 0).all() and log["gpu_hours"].max() <= len(ran)
    # the report's table: why each stopped, what it cost
    trials = pd.DataFrame({"variant": [v for v, _ in ran], "hours": 1.0})
    table = why_we_stopped(log, trials, None, baseline="base", max_seeds=8).set_index("variant")
    assert table.loc["big", "why"] == f"decided after {len(got['big'])} pairs"
    assert table.loc["null", "why"] == "max_seeds (8) reached" and table.loc["null", "gpu_hours"] == 8
    assert table.loc["base", "decision"] == "baseline" and table.index[0] == "base"

    # interrupted after 7 trials, saved and restored (as Tune does on --resume): the same trials and decisions
    again = DecideSearcher(variants, "base", seeds, rule, tmp_path / "again")
    (tmp_path / "again").mkdir()
    first = drive(again, value, stop_after=7)
    again.save(str(tmp_path / "state.pkl"))
    restored = DecideSearcher(variants, "base", seeds, rule, tmp_path / "again")
    restored.restore(str(tmp_path / "state.pkl"))
    assert first + drive(restored, value) == ran
    assert restored.decisions == searcher.decisions


def test_a_variant_that_cannot_be_decided_in_budget_stops_early_and_says_so(tmp_path):
    # the null variant's difference is ~0.2 points against a 0.1-point margin and 0.3-point seed noise:
    # neither "matters" nor "equivalent" is reachable by 8 pairs, and futility stops it before
    variants, rule, seeds, value = _study(futility=0.2)
    ran = drive(DecideSearcher(variants, "base", seeds, rule, tmp_path), value)
    log = pd.read_parquet(tmp_path / "decisions.parquet")
    last = log.sort_values("step").groupby("variant").tail(1).set_index("variant")
    null = last.loc["null"]
    assert null["futile"] and null["decision"] == "undecided" and 3 <= null["n_pairs"] < 8
    assert null["p_decision"] < 0.2 and sum(v == "null" for v, _ in ran) == null["n_pairs"]
    table = why_we_stopped(log, None, None, baseline="base", max_seeds=8).set_index("variant")
    assert table.loc["null", "why"].startswith("undecidable within budget: P(decision by 8 pairs) = ")
    assert table.loc["null", "p_decision"] == pytest.approx(null["p_decision"])


def test_a_queued_seed_of_a_variant_just_decided_is_cancelled(tmp_path):
    # b's two pairs give p* = 0.031: undecided while Holm needs 0.025 (two variants), so its third seed is
    # queued; a's third pair then makes a "helps", Holm's next step needs only 0.05 and b is decided on the
    # pairs it has: its queued seed must not run
    base = [0.80, 0.81, 0.79]
    diff = {"base": [0.0, 0.0, 0.0], "a": [0.02, 0.022, 0.0205], "b": [0.01, 0.01025, 0.0]}
    rule = DecideRule(margin=0.001, alpha=0.05, min_seeds=2, max_seeds=3, futility=0.0)
    searcher = DecideSearcher({"base": {}, "a": {}, "b": {}}, "base", [0, 1, 2], rule, tmp_path)
    first = [searcher.suggest(f"t{i}") for i in range(6)]
    assert searcher.suggest("t6") is None  # the first round is running: ask again later
    for i, config in enumerate(first):
        objective = base[config["seed"]] + diff[config["variant"]][config["seed"]]
        searcher.on_trial_complete(f"t{i}", {"objective": objective})
    assert searcher.queue == [("base", 2), ("a", 2), ("b", 2)] and searcher.decisions["b"].decision == "undecided"
    for i in (7, 8):
        config = searcher.suggest(f"t{i}")
        assert (config["variant"], config["seed"]) == (("base", 2), ("a", 2))[i - 7]
    for i in (7, 8):
        variant, seed = searcher.assigned[f"t{i}"]
        searcher.on_trial_complete(f"t{i}", {"objective": base[seed] + diff[variant][seed]})
    assert searcher.decisions["a"].decision == "helps" and searcher.decisions["b"].decision == "helps"
    assert searcher.cancelled == [("b", 2)] and searcher.queue == [] and searcher.requested["b"] == [0, 1]
    assert searcher.suggest("t9") == DecideSearcher.FINISHED
    log = pd.read_parquet(tmp_path / "decisions.parquet")
    b = log[log["variant"] == "b"].iloc[-1]
    assert b["decision"] == "helps" and b["n_pairs"] == 2 and b["seeds_run"] == 2


def test_a_failed_trial_is_retried_and_one_that_keeps_failing_is_named_not_paired(tmp_path):
    variants, rule, seeds, value = _study(max_seeds=4)
    rule = dataclasses.replace(rule, margin=0.0001)  # nothing is equivalent: null runs to max_seeds
    tries: dict[tuple[str, int], int] = {}

    def flaky(variant: str, seed: int) -> float:
        tries[(variant, seed)] = tries.get((variant, seed), 0) + 1
        if (variant, seed) == ("big", 100) and tries[(variant, seed)] == 1:
            return math.nan  # fails once, then works
        if (variant, seed) in (("null", 101), ("base", 102)):
            return math.nan  # fails on every try
        return value(variant, seed)

    searcher = DecideSearcher(variants, "base", seeds, rule, tmp_path, max_failures=2)
    ran = drive(searcher, flaky)
    assert ran[:2] == [("base", 100), ("big", 100)] and ran[2] == ("big", 100)  # retried at once, same seed
    assert tries[("big", 100)] == 2 and searcher.values["big"][100] == value("big", 100)
    assert tries[("null", 101)] == tries[("base", 102)] == 3  # 1 + max_failures tries, then given up
    assert searcher.failed["null"] == [101] and searcher.failed["base"] == [102]
    # null ran on to 4 real pairs with the seeds after the lost ones (101 its own, 102 the baseline's)
    final = searcher.decisions["null"]
    assert final.n_pairs == 4 and sorted(searcher.values["null"]) == [100, 101, 103, 104, 105]
    assert 102 not in [s for v, s in ran if v == "null"]  # the baseline lost 102: nobody ran it after
    log = pd.read_parquet(tmp_path / "decisions.parquet")
    table = why_we_stopped(log, None, None, baseline="base", max_seeds=4).set_index("variant")
    assert table.loc["null", "why"] == "max_seeds (4) reached; failed, not paired: seed 101"
    assert table.loc["null", "n_pairs"] == 4
    assert table.loc["base", "why"].endswith("failed, not paired: seed 102")
    for name, row in table.iloc[1:].iterrows():  # a stop reason never claims more pairs than there are
        assert row["n_pairs"] == searcher.decisions[name].n_pairs <= 4


def test_a_decide_space_is_checked_at_load():
    good = {
        "search": "decide", "objective": "probe", "baseline": "full", "scheduler": {"type": "none"},
        "variants": {"full": {}, "other": {"optim.lr": 0.01}}, "seeds": [42], "decide": {"max_seeds": 4},
    }  # fmt: skip
    space = from_dict(SearchSpace, good)
    space.validate()
    assert space.decide_seeds() == [42, 43, 44, 45] and space.decide.rule().max_seeds == 4
    assert space.decide.rule().futility == 0.05
    assert from_dict(SearchSpace, {**good, "decide": {}}).decide.max_seeds == 12  # its own limit, not a grid's
    for change, message in (
        ({"objective": "pretrain"}, "set objective: probe"),
        ({"scheduler": {"type": "asha"}}, "scheduler: {type: none}"),
        ({"baseline": ""}, "name it under 'baseline'"),
        ({"decide": {"min_seeds": 1}}, "decide.min_seeds must be at least 2"),
        ({"decide": {"min_seeds": 5, "max_seeds": 4}}, "must be >= decide.min_seeds"),
        ({"decide": {"margin": 0.0}}, "decide.margin"),
        ({"decide": {"alpha": 0.7}}, "decide.alpha"),
        ({"decide": {"futility": 1.0}}, "decide.futility must lie in [0, 1)"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            from_dict(SearchSpace, {**good, **change})


def test_bench_decide_quick_prints_its_figures_and_ratio():
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_decide.py", "--quick", "--studies", "60", "--null-studies", "300"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    for start in ("grid 4 ", "grid 8 ", "grid 12 ", "decide ", "decide - grid 8:", "all-null (6 null variants"):
        assert any(line.startswith(start) for line in lines), start
    assert any("indicative" in line for line in lines)

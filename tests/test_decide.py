"""The ``decide`` search mode's statistics and scheduling (no Ray cluster: the searcher is driven directly)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.decisions import DecideRule, decide, look_alphas, why_we_stopped
from deri_sweep.common.strict_loader import ConfigError, from_dict
from deri_sweep.orchestration.decide_searcher import DecideSearcher
from deri_sweep.orchestration.spaces import SearchSpace

RULE = DecideRule(margin=0.005, alpha=0.05, min_seeds=2, max_seeds=8)
REPO = Path(__file__).resolve().parents[1]


def test_the_boundaries_spend_alpha_over_the_looks_and_hold_it():
    two, one = look_alphas(RULE)
    assert list(two) == list(range(2, 9)) and list(one) == list(range(2, 9))
    assert (np.diff(list(two.values())) > 0).all() and (np.diff(list(one.values())) > 0).all()  # strict early
    assert 0.03 < two[8] < 0.05 and two[2] < 1e-4  # the last look is close to the fixed-sample 0.05
    # calibration, checked on fresh null sequences (another seed than the calibration's): a variant with
    # no effect crosses at SOME look in alpha of the studies (20,000 studies: +-0.003 standard error)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 8)) * 0.01  # any noise level: the t statistic is pivotal
    ever = np.zeros(len(x), dtype=bool)
    for n in range(2, 9):
        p = stats.ttest_1samp(x[:, :n], 0.0, axis=1).pvalue
        ever |= p < two[n]
    assert 0.04 < ever.mean() < 0.06, ever.mean()
    naive = np.zeros(len(x), dtype=bool)
    for n in range(2, 9):
        naive |= stats.ttest_1samp(x[:, :n], 0.0, axis=1).pvalue < 0.05
    assert naive.mean() > 0.12  # what looking after every seed at 0.05 would give
    single, _ = look_alphas(DecideRule(min_seeds=8, max_seeds=8))
    assert single[8] == pytest.approx(0.05, abs=0.003)  # one look: the plain threshold


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
    p = [out[k].p_value for k in sorted(out)]
    assert [out[k].p_holm for k in sorted(out)] == pytest.approx(list(np.minimum(1, _holm_reference(p))))
    assert all(d.alpha_look == look_alphas(RULE)[0][8] for d in out.values())
    # a loss to minimise: the same numbers read the other way round
    flipped = decide(values, "base", DecideRule(margin=0.005, maximize=False))
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
    values = _values({"base": [0.8, 0.81, 0.79, 0.80], "v": [0.9, 0.91, 0.89, 0.90]})
    first = decide(values, "base", DecideRule(min_seeds=2, max_seeds=4))
    assert first["v"].decision == "helps" and first["v"].n_pairs == 4
    values["v"][4], values["base"][4] = 0.5, 0.9  # a later seed that would argue otherwise: not read again
    assert decide(values, "base", DecideRule(min_seeds=2, max_seeds=4), first)["v"] == first["v"]
    failed = _values({"base": [0.8, math.nan, 0.79], "v": [0.81, 0.82, math.nan]})
    reading = decide(failed, "base", RULE)["v"]
    assert reading.n_pairs == 1 and reading.decision == "undecided" and math.isnan(reading.p_value)


def drive(searcher: DecideSearcher, value: callable, stop_after: int | None = None) -> list[tuple[str, int]]:
    """Run the searcher as Tune would with one trial at a time; returns the (variant, seed) trials run."""
    ran = []
    number = len(searcher.assigned)
    while stop_after is None or len(ran) < stop_after:
        config = searcher.suggest(f"t{number}")
        if config == DecideSearcher.FINISHED:
            break
        assert config is not None  # one trial at a time: nothing running, so never "ask later"
        ran.append((config["variant"], config["seed"]))
        searcher.on_trial_complete(f"t{number}", {"objective": value(config["variant"], config["seed"]), "hours": 1.0})
        number += 1
    return ran


def test_the_searcher_adds_seeds_only_where_undecided(tmp_path):
    rng = np.random.default_rng(3)
    seed_effect = {s: rng.normal(0, 0.01) for s in range(100, 108)}
    noise = {(v, s): rng.normal(0, 0.002) for v in ("base", "big", "null") for s in seed_effect}
    effect = {"base": 0.0, "big": 0.05, "null": 0.0}

    def value(variant: str, seed: int) -> float:
        return 0.8 + effect[variant] + seed_effect[seed] + noise[(variant, seed)]

    variants = {"base": {}, "big": {"optim.lr": 0.01}, "null": {"optim.lr": 0.0011}}
    rule = DecideRule(margin=0.001, alpha=0.05, min_seeds=2, max_seeds=8)  # margin below the noise: null stays open
    searcher = DecideSearcher(variants, "base", list(seed_effect), rule, tmp_path)
    ran = drive(searcher, value)
    seeds = {v: [s for name, s in ran if name == v] for v in variants}
    assert seeds["base"] == seeds["null"] == list(range(100, 108))  # undecided: every seed, paired
    assert 2 < len(seeds["big"]) < 8 and seeds["big"] == list(range(100, 100 + len(seeds["big"])))
    assert ran[:6] == [("base", 100), ("big", 100), ("null", 100), ("base", 101), ("big", 101), ("null", 101)]
    log = pd.read_parquet(tmp_path / "decisions.parquet")
    final = log.sort_values("step").groupby("variant").tail(1).set_index("variant")
    assert final.loc["big", "decision"] == "helps" and final.loc["big", "n_pairs"] == len(seeds["big"])
    assert final.loc["null", "decision"] == "undecided" and final.loc["null", "seeds_run"] == 8
    assert (log["gpu_hours"].diff().dropna() >= 0).all() and log["gpu_hours"].max() <= len(ran)
    # the report's table: why each stopped, what it cost
    trials = pd.DataFrame({"variant": [v for v, _ in ran], "hours": 1.0})
    table = why_we_stopped(log, trials, None, baseline="base", max_seeds=8).set_index("variant")
    assert table.loc["big", "why"] == f"decided after {len(seeds['big'])} pairs"
    assert table.loc["null", "why"] == "max_seeds (8) reached" and table.loc["null", "gpu_hours"] == 8
    assert table.loc["base", "decision"] == "baseline" and table.index[0] == "base"

    # interrupted after 7 trials, saved and restored (as Tune does on --resume): the same trials and decisions
    again = DecideSearcher(variants, "base", list(seed_effect), rule, tmp_path / "again")
    (tmp_path / "again").mkdir()
    first = drive(again, value, stop_after=7)
    again.save(str(tmp_path / "state.pkl"))
    restored = DecideSearcher(variants, "base", list(seed_effect), rule, tmp_path / "again")
    restored.restore(str(tmp_path / "state.pkl"))
    assert first + drive(restored, value) == ran
    assert restored.decisions == searcher.decisions


def test_a_decide_space_is_checked_at_load():
    good = {
        "search": "decide", "objective": "probe", "baseline": "full", "scheduler": {"type": "none"},
        "variants": {"full": {}, "other": {"optim.lr": 0.01}}, "seeds": [42], "decide": {"max_seeds": 4},
    }  # fmt: skip
    space = from_dict(SearchSpace, good)
    space.validate()
    assert space.decide_seeds() == [42, 43, 44, 45] and space.decide.rule().max_seeds == 4
    for change, message in (
        ({"objective": "pretrain"}, "set objective: probe"),
        ({"scheduler": {"type": "asha"}}, "scheduler: {type: none}"),
        ({"baseline": ""}, "name it under 'baseline'"),
        ({"decide": {"min_seeds": 1}}, "decide.min_seeds must be at least 2"),
        ({"decide": {"min_seeds": 5, "max_seeds": 4}}, "must be >= decide.min_seeds"),
        ({"decide": {"margin": 0.0}}, "decide.margin"),
        ({"decide": {"alpha": 0.7}}, "decide.alpha"),
    ):
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
            from_dict(SearchSpace, {**good, **change})


def test_bench_decide_quick_prints_its_figures_and_ratio():
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_decide.py", "--quick", "--studies", "40"], cwd=REPO,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 1.0
    assert any(line.startswith("grid ") for line in lines) and any(line.startswith("decide ") for line in lines)

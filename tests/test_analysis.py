"""Tests for the analysis package on a generated run directory with known effects."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import figures as F
from analysis._table_render import comparison_html, comparison_markdown, write_comparison
from analysis.published import DERI, MERL, published_frame
from analysis.report import _verdict_summary, build_report, main
from analysis.tables import CSV_COLUMNS, comparison_table, cost_per_variant, trials_summary

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"full": 0.0, "no_decode_t": -0.05, "no_rme": -0.01}  # known effect on every AUROC
SEEDS = (0, 1, 2)
SEED_EFFECT = {0: 0.0, 1: 0.012, 2: -0.009}  # shared by all variants: the paired test removes it
TASKS = ("ptbxl_super", "cpsc2018")
FRACTIONS = (0.01, 0.1, 1.0)
PROBE_SEEDS = (0, 1)
SECRET = "SINUS RHYTHM SECRET REPORT TEXT"


def _base(task: str, fraction: float) -> float:
    return 0.80 + 0.03 * math.log10(fraction) + (0.02 if task == "cpsc2018" else 0.0)


def write_run_dir(root: Path, *, noise: float = 0.003) -> pd.DataFrame:
    """Write a realistic run directory; returns the headline test_auroc rows (the ground truth)."""
    rng = np.random.default_rng(1234)
    root.mkdir(parents=True, exist_ok=True)
    rows, trials, curves = [], [], []
    lrs = {"full": 3e-4, "no_decode_t": 1e-3, "no_rme": 3e-5}
    for variant, effect in VARIANTS.items():
        for seed in SEEDS:
            tid = f"{variant}-s{seed}"
            params = {
                "param/optim.lr": lrs[variant] * (1 + seed),
                "param/model.interaction.depth": 2 + seed,
                "param/model.pool": ["mean", "rme"][seed % 2],
            }
            hours = 1.0 + 0.5 * seed + (0.25 if variant == "full" else 0.0)
            common = dict(
                run_id="run-test",
                trial_id=tid,
                variant=variant,
                config_hash=f"h{variant}",
                seed=seed,
                checkpoint=f"/ckpt/{tid}",
                git_commit="abcdef1234567890",
                hours=hours,
                status="ok",
                report_text=SECRET,
                **params,
            )
            for task in TASKS:
                for frac in FRACTIONS:
                    for ps in PROBE_SEEDS:
                        v = _base(task, frac) + effect + SEED_EFFECT[seed] + rng.normal(0, noise)
                        for metric, value in (("test_auroc", v), ("max_test_auroc", v + 0.01), ("best_epoch", 40.0)):
                            rows.append(
                                dict(
                                    common,
                                    task=task,
                                    eval="linear_probe",
                                    fraction=frac,
                                    probe_seed=ps,
                                    metric=metric,
                                    value=value,
                                )
                            )
                rows.append(
                    dict(
                        common,
                        task=task,
                        eval="zero_shot",
                        fraction=np.nan,
                        probe_seed=0,
                        metric="test_auroc",
                        value=0.7 + effect + rng.normal(0, noise),
                    )
                )
            for metric in ("bleu1", "rougeL"):
                rows.append(
                    dict(
                        common,
                        task="ptbxl",
                        eval="report_generation",
                        fraction=np.nan,
                        probe_seed=0,
                        metric=metric,
                        value=0.4 + effect + rng.normal(0, noise),
                    )
                )
            trials.append(
                dict(
                    trial_id=tid,
                    variant=variant,
                    seed=seed,
                    config_hash=f"h{variant}",
                    state="COMPLETE",
                    hours=hours,
                    epochs=10,
                    objective=1.0 - effect + 0.01 * seed,
                    **params,
                )
            )
            for ep in range(10):
                for metric, value in (
                    ("train_total", 3 / (ep + 1) - effect),
                    ("val_total", 3.2 / (ep + 1) - effect),
                    ("lr", 1e-3 * 0.8**ep),
                ):
                    curves.append(dict(trial_id=tid, epoch=ep, metric=metric, value=value))
    # a pruned and a failed trial: in trials/curves, failed one also has a failed result row
    extra = {"param/optim.lr": 1e-2, "param/model.interaction.depth": 6, "param/model.pool": "mean"}
    trials.append(
        dict(
            trial_id="full-pruned",
            variant="full",
            seed=9,
            config_hash="hx",
            state="PRUNED",
            hours=0.2,
            epochs=2,
            objective=np.nan,
            **extra,
        )
    )
    trials.append(
        dict(
            trial_id="no_rme-failed",
            variant="no_rme",
            seed=9,
            config_hash="hy",
            state="FAILED",
            hours=0.1,
            epochs=0,
            objective=np.nan,
            **extra,
        )
    )
    curves += [dict(trial_id="full-pruned", epoch=e, metric="train_total", value=5.0 - e) for e in range(2)]
    rows.append(dict(rows[0], trial_id="no_rme-failed", variant="no_rme", seed=9, status="failed", value=0.01))
    results = pd.DataFrame(rows)
    results.to_parquet(root / "results.parquet", index=False)
    results.drop(columns=["report_text"]).to_csv(root / "results.csv", index=False)
    pd.DataFrame(trials).to_parquet(root / "trials.parquet", index=False)
    pd.DataFrame(curves).to_parquet(root / "curves.parquet", index=False)
    pd.DataFrame(
        {
            "param": ["param/optim.lr", "param/model.pool", "param/model.interaction.depth"],
            "importance": [0.2, 0.1, 0.7],
        }
    ).to_csv(root / "importance.csv", index=False)
    sweep = {
        "run_id": "run-test",
        "space": "ablation_v1",
        "baseline_variant": "full",
        "metric": "objective",
        "mode": "max",
        "created": "2025-01-01T00:00:00",
    }
    (root / "sweep.json").write_text(json.dumps(sweep))
    ok = results[(results["status"] == "ok") & (results["metric"] == "test_auroc")]
    return ok[ok["eval"] == "linear_probe"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analysis") / "run-test"
    write_run_dir(root)
    return root


@pytest.fixture(scope="module")
def results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


@pytest.fixture(scope="module")
def table(results: pd.DataFrame):
    return comparison_table(results, baseline="full")


def per_seed(results: pd.DataFrame, variant: str, task: str, frac: float) -> np.ndarray:
    """Hand computation: probe seeds averaged within each pretraining seed, in seed order."""
    sel = results[
        (results["variant"] == variant)
        & (results["task"] == task)
        & (results["metric"] == "test_auroc")
        & (results["eval"] == "linear_probe")
        & np.isclose(results["fraction"], frac)
        & (results["status"] == "ok")
    ]
    return np.array([sel.loc[sel["seed"] == s, "value"].mean() for s in SEEDS])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("task", "frac"), [(t, f) for t in TASKS for f in FRACTIONS])
def test_cells_match_hand_computation_and_scipy(table, results, variant: str, task: str, frac: float) -> None:
    vals = per_seed(results, variant, task, frac)
    cell = table.cell(variant, task, frac)
    assert cell["n_seeds"] == 3 and cell["source"] == "run"
    assert cell["mean"] == pytest.approx(vals.mean(), abs=1e-12)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=vals.mean(), scale=stats.sem(vals))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    if variant == "full":
        assert math.isnan(cell["delta"]) and math.isnan(cell["p_value"])
        assert bool(cell["best"])  # full is best in every column
    else:
        base = per_seed(results, "full", task, frac)
        assert cell["delta"] == pytest.approx((vals - base).mean(), abs=1e-12)
        assert cell["p_value"] == pytest.approx(stats.ttest_rel(vals, base).pvalue, rel=1e-9)
        assert cell["n_pairs"] == 3 and not bool(cell["best"])
        assert cell["delta"] == pytest.approx(VARIANTS[variant], abs=0.006)


def test_known_worse_variant_is_significant(table) -> None:
    worse = table.frame[table.frame["variant"] == "no_decode_t"]
    assert len(worse) == 6
    assert (worse["delta"] < -0.04).all() and (worse["p_value"] < 0.01).all()


def test_published_rows_labelled_and_matched(table) -> None:
    pub = table.frame[table.frame["source"] == "published"]
    assert set(pub["variant"]) == {MERL, DERI} and all("(published)" in v for v in pub["variant"])
    assert set(pub["task"]) == set(TASKS) and len(pub) == 2 * len(TASKS) * len(FRACTIONS)  # no ptbxl_sub etc.
    assert table.cell(DERI, "ptbxl_super", 0.01)["mean"] == pytest.approx(0.859)
    assert table.cell(MERL, "cpsc2018", 1.0)["mean"] == pytest.approx(0.906)
    assert not pub["best"].any() and pub["n_seeds"].eq(0).all()
    assert table.variants == ["full", "no_decode_t", "no_rme", MERL, DERI]
    assert published_frame(eval="report_generation", metric="bleu4")["value"].iloc[0] == pytest.approx(0.486)


def test_failed_rows_excluded_and_noted(table) -> None:
    assert table.cell("no_rme", "ptbxl_super", 0.01)["n_seeds"] == 3  # the failed seed-9 row is gone
    assert any("status other than 'ok'" in n for n in table.notes)


def test_single_seed_and_unpaired_seeds(results) -> None:
    one = comparison_table(results[results["seed"] == 0])
    cell = one.cell("no_decode_t", "cpsc2018", 0.1)
    assert cell["n_seeds"] == 1 and math.isnan(cell["ci_low"]) and math.isnan(cell["p_value"])
    assert math.isfinite(cell["delta"]) and any("no confidence interval" in n for n in one.notes)
    assert "(1 seed, no CI)" in comparison_markdown(one) and "1 seed, no CI" in comparison_html(one)
    mixed = results[~((results["variant"] == "full") & (results["seed"] > 0))]
    assert math.isnan(comparison_table(mixed).cell("no_rme", "cpsc2018", 0.1)["p_value"])


def test_best_marking_follows_direction(results) -> None:
    lower = comparison_table(results, higher_is_better=False)
    assert lower.frame.loc[lower.frame["best"], "variant"].eq("no_decode_t").all()
    assert lower.frame["best"].sum() == 6


def test_pivot_and_other_evals(table, results) -> None:
    wide = table.pivot()
    assert wide.shape == (5, 6) and wide.loc["full", ("cpsc2018", "10%")] == table.cell("full", "cpsc2018", 0.1)["mean"]
    zs = comparison_table(results, eval="zero_shot")
    assert [t for t, _ in zs.columns] == ["ptbxl_super", "cpsc2018"] and all(math.isnan(f) for _, f in zs.columns)
    assert zs.cell("no_decode_t", "cpsc2018", math.nan)["delta"] < -0.04
    empty = comparison_table(results, metric="nope")
    assert empty.frame.empty and any("no linear_probe/nope" in n for n in empty.notes)


def test_writers(table, tmp_path: Path) -> None:
    paths = write_comparison(table, tmp_path / "tables")
    csv = pd.read_csv(paths["comparison_csv"])
    assert list(csv.columns) == CSV_COLUMNS and len(csv) == len(table.frame)
    full = csv[(csv["variant"] == "full") & (csv["task"] == "ptbxl_super") & (csv["fraction"] == 0.1)].iloc[0]
    assert full["mean"] == pytest.approx(table.cell("full", "ptbxl_super", 0.1)["mean"], rel=1e-5)
    assert set(csv["source"]) == {"run", "published"}
    md = paths["comparison_md"].read_text()
    assert "| variant | ptbxl_super 1% |" in md and "**0." in md and f"| {DERI} | *0.859*" in md
    assert "full (baseline)" in md and re.search(r"Δ-0\.0[45]\d \(p", md)
    page = paths["comparison_html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and '<td class="best">' in page and '<tr class="published">' in page
    assert page.count('<td class="best">') == 6


def test_cost_and_trials_summary(run_dir: Path, results) -> None:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    cost = cost_per_variant(trials).set_index("variant")
    assert cost.loc["full", "n_trials"] == 4  # 3 complete + 1 pruned
    assert cost.loc["full", "hours_sum"] == pytest.approx(1.25 + 1.75 + 2.25 + 0.2)
    assert cost.loc["no_decode_t", "hours_mean"] == pytest.approx(1.5)
    from_results = cost_per_variant(None, results).set_index("variant")
    assert from_results.loc["no_decode_t", "hours_sum"] == pytest.approx(4.5)
    summary = trials_summary(trials).set_index("variant")
    assert summary.loc["full", ["COMPLETE", "PRUNED", "FAILED"]].tolist() == [3, 1, 0]
    assert summary.loc["all", ["COMPLETE", "PRUNED", "FAILED", "total"]].tolist() == [9, 1, 1, 11]


def test_figure_data_and_drawing(run_dir: Path, table) -> None:
    import plotly.graph_objects as go

    bars = F.ablation_bars(table)
    assert [p.task for p in bars.panels] == list(TASKS)
    full = bars.panels[0].series[0]
    assert full.variant == "full" and full.fractions == ("1%", "10%", "100%") and not full.published
    assert full.means[1] == table.cell("full", "ptbxl_super", 0.1)["mean"]
    assert [s.published for s in bars.panels[0].series] == [False, False, False, True, True]
    assert len(F.plot_ablation_bars(bars).data) == 10

    trials = pd.read_parquet(run_dir / "trials.parquet")
    curves = F.learning_curves(pd.read_parquet(run_dir / "curves.parquet"), trials)
    assert curves.metrics == ("train_total", "val_total", "lr") and len(curves.lines) == 9 * 3 + 1
    pruned = next(ln for ln in curves.lines if ln.trial_id == "full-pruned")
    assert pruned.state == "PRUNED" and pruned.epochs == (0, 1)
    assert isinstance(F.plot_learning_curves(curves), go.Figure)

    pc = F.parallel_coordinates(trials)
    assert len(pc.trial_ids) == 9 and pc.axes[0].name == "variant"
    lr = next(a for a in pc.axes if a.name == "optim.lr")
    assert lr.log10 and lr.values[0] == pytest.approx(math.log10(3e-4))
    pool = next(a for a in pc.axes if a.name == "model.pool")
    assert pool.ticktext == ("mean", "rme")
    assert len(F.plot_parallel_coordinates(pc).data[0].dimensions) == len(pc.axes) + 1

    imp = F.importance_data(pd.read_csv(run_dir / "importance.csv"))
    assert imp.params == ("model.interaction.depth", "optim.lr", "model.pool") and imp.importances[0] == 0.7
    cost = F.cost_bars(cost_per_variant(trials))
    assert cost.variants == ("full", "no_decode_t", "no_rme") and len(F.plot_cost(cost).data) == 1
    assert isinstance(F.plot_importance(imp), go.Figure)


SECTIONS = ("summary", "comparison", "ablation", "curves", "parallel", "importance", "cost", "notes")


def test_report_is_self_contained(run_dir: Path, tmp_path: Path) -> None:
    paths = build_report(run_dir, tmp_path / "out")
    for key in ("report", "comparison_md", "comparison_csv", "comparison_html", "cost_csv", "trials_csv"):
        assert paths[key].is_file(), key
    html = paths["report"].read_text()
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=[\"']https?:", html)
    assert html.count("* plotly.js v") == 1 and html.count("Plotly.newPlot") == 5
    for key in SECTIONS:
        assert f'<section id="{key}">' in html
    assert SECRET not in html and "/ckpt/" not in html
    assert "run-test" in html and "ablation_v1" in html and DERI in html and "Zero-shot macro AUROC" in html
    verdicts = r"Verdicts vs &#x27;full&#x27; over 12 Holm-corrected ablation cells: (6|7|8|9|10|11|12) hurts\b"
    assert re.search(verdicts, html)
    assert "p_Holm=0.0" in html and "Holm-corrected over the 12 ablation comparisons" in html


def test_report_degrades_without_optional_files(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    write_run_dir(root)
    for name in ("trials.parquet", "curves.parquet", "importance.csv", "sweep.json"):
        (root / name).unlink()
    html = build_report(root)["report"].read_text()
    for name in ("trials.parquet is absent", "curves.parquet is absent", "importance.csv is absent"):
        assert name in html
    assert html.count("Plotly.newPlot") == 2  # ablation bars and cost (hours from results)
    (root / "curves.parquet").write_bytes(b"not parquet")
    assert "curves.parquet could not be read" in build_report(root)["report"].read_text()


def test_report_with_no_rows_and_no_probes(tmp_path: Path) -> None:
    root = tmp_path / "early"
    write_run_dir(root)
    res = pd.read_parquet(root / "results.parquet")
    res[res["eval"] == "zero_shot"].to_parquet(root / "results.parquet")  # probes not run yet
    html = build_report(root)["report"].read_text()
    assert "No linear-probe results yet." in html and "no linear_probe/test_auroc results" in html
    res.iloc[:0].to_parquet(root / "results.parquet")  # nothing evaluated at all
    assert '<section id="notes">' in build_report(root)["report"].read_text()


def test_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(run_dir), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.html").is_file() and "report:" in capsys.readouterr().out
    missing = tmp_path / "does-not-exist"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "results.parquet" in capsys.readouterr().err


def test_cli_subprocess_and_help(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "analysis.report"]
    ok = subprocess.run([*run, "--help"], cwd=REPO, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "RUN_DIR" in ok.stdout.upper()
    bad = subprocess.run([*run, str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and str(tmp_path / "nowhere") in bad.stderr and "Traceback" not in bad.stderr


# --- verdicts: paired t-test + Holm on constructed results ------------------------------------------------------

EXPECTED_CSV_COLUMNS = [
    "variant",
    "feature",
    "task",
    "fraction",
    "mean",
    "ci_low",
    "ci_high",
    "n_seeds",
    "delta",
    "p_value",
    "n_pairs",
    "delta_ci_low",
    "delta_ci_high",
    "p_holm",
    "verdict",
    "best",
    "source",
]
CELL = ("ptbxl_super", 0.1)
BASE_VALUES = [0.80, 0.82, 0.79, 0.81, 0.83]
SHIFTS = {
    "full": [0.0] * 5,
    "gain": [0.050, 0.052, 0.048, 0.051, 0.049],  # clear gain
    "loss": [-0.040, -0.042, -0.039, -0.041, -0.040],  # clear loss
    "overlap": [0.020, -0.030, 0.010, -0.015, 0.005],  # CI of delta straddles 0
    "random_init": [-0.200, -0.210, -0.190, -0.205, -0.195],  # the untrained-encoder floor
}
OVERLAP_DIFFS = np.array(SHIFTS["overlap"])


def tidy_results(
    values: dict[tuple[str, str, float], list[float | None]], *, features: dict[str, object] | None = None
) -> pd.DataFrame:
    """A hand-built tidy results frame: one row per (variant, task, fraction, seed, probe seed).

    ``values[(variant, task, fraction)][seed]`` is the value (None: that seed is missing); with
    ``features``, the rows of a variant get ``features[variant]`` as their ``feature`` (a list gives
    one value per probe seed, so a cell can mix representations).
    """
    rows = []
    for (variant, task, frac), vals in values.items():
        for seed, value in enumerate(vals):
            if value is None:
                continue
            for probe_seed in (0, 1):
                row = dict(
                    trial_id=f"{variant}-s{seed}",
                    variant=variant,
                    seed=seed,
                    task=task,
                    eval="linear_probe",
                    fraction=frac,
                    probe_seed=probe_seed,
                    metric="test_auroc",
                    value=value,
                    status="ok",
                )
                if features is not None:
                    feat = features.get(variant)
                    row["feature"] = feat[probe_seed] if isinstance(feat, list) else feat
                rows.append(row)
    return pd.DataFrame(rows)


def verdict_values(*, single: bool = True) -> dict[tuple[str, str, float], list[float | None]]:
    values: dict[tuple[str, str, float], list[float | None]] = {
        (v, *CELL): [b + d for b, d in zip(BASE_VALUES, shift, strict=True)] for v, shift in SHIFTS.items()
    }
    if single:
        values[("single", *CELL)] = [0.9, None, None, None, None]  # one pretraining seed: nothing to test
    return values


def hand_holm(p: list[float]) -> list[float]:
    """Holm step-down by hand: sort ascending, scale the i-th (0-based) by m - i, running max, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


@pytest.fixture(scope="module")
def verdict_table():
    return comparison_table(tidy_results(verdict_values()), baseline="full")


def test_holm_matches_hand_computation() -> None:
    from analysis._stats import holm

    got = holm([0.01, 0.04, 0.03, np.nan, 0.005])  # m = 4: the NaN does not count
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert got[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[3])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    ps = [0.2, 0.001, 0.04, 0.03, 0.5, 0.011]
    adj = holm(ps)
    assert adj == pytest.approx(hand_holm(ps))
    order = np.argsort(ps)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= np.array(ps))  # monotone, never below raw
    assert holm([]).size == 0 and np.isnan(holm([np.nan, np.nan])).all()
    assert holm([0.02]).tolist() == [0.02]


def test_paired_test_confidence_interval() -> None:
    from analysis._stats import paired_test

    base = dict(enumerate(BASE_VALUES))
    var = {s: v + d for s, (v, d) in enumerate(zip(BASE_VALUES, OVERLAP_DIFFS, strict=True))}
    res = paired_test(var, base)
    diffs = np.array([var[s] - base[s] for s in range(5)])
    lo, hi = stats.t.interval(0.95, 4, loc=diffs.mean(), scale=stats.sem(diffs))
    assert (res.ci_low, res.ci_high) == pytest.approx((lo, hi), abs=1e-12) and res.n_pairs == 5
    lo90, hi90 = stats.t.interval(0.9, 4, loc=diffs.mean(), scale=stats.sem(diffs))
    assert paired_test(var, base, confidence=0.9)[3:] == pytest.approx((lo90, hi90), abs=1e-12)
    shifted = paired_test({s: v + 0.25 for s, v in base.items()}, base)  # every difference equal
    assert shifted.ci_low == shifted.ci_high == shifted.delta and shifted.delta == pytest.approx(0.25)
    one = paired_test({0: 0.9}, base)
    assert one.n_pairs == 1 and math.isnan(one.ci_low) and math.isnan(one.ci_high) and math.isnan(one.p_value)
    none = paired_test({7: 0.9}, base)
    assert none.n_pairs == 0 and math.isnan(none.delta) and math.isnan(none.ci_low)


def test_verdicts_helps_hurts_and_overlap(verdict_table) -> None:
    t = verdict_table
    gain, loss, overlap = (t.cell(v, *CELL) for v in ("gain", "loss", "overlap"))
    assert gain["verdict"] == "helps" and gain["p_holm"] < 0.05 and gain["delta"] > 0
    assert loss["verdict"] == "hurts" and loss["p_holm"] < 0.05 and loss["delta"] < 0
    assert t.cell("random_init", *CELL)["verdict"] == "hurts"
    lo, hi = stats.t.interval(0.95, 4, loc=OVERLAP_DIFFS.mean(), scale=stats.sem(OVERLAP_DIFFS))
    assert (overlap["delta_ci_low"], overlap["delta_ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
    assert overlap["delta_ci_low"] < 0 < overlap["delta_ci_high"] and overlap["p_holm"] >= 0.05
    assert overlap["verdict"] == f"no detectable difference (95% CI of delta [{lo:.3f}, {hi:.3f}])"
    for v in ("gain", "loss"):  # the delta's interval is the scipy t-interval of the paired differences
        d = np.array(SHIFTS[v])
        assert t.cell(v, *CELL)["delta_ci_low"] == pytest.approx(
            stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))[0], abs=1e-9
        )
    assert t.cell("full", *CELL)["verdict"] == "baseline" and math.isnan(t.cell("full", *CELL)["p_holm"])
    pub = t.frame[t.frame["source"] == "published"]
    assert not pub.empty and pub["verdict"].eq("").all() and pub["p_holm"].isna().all()


def test_holm_over_the_table_matches_hand_computation(verdict_table) -> None:
    t = verdict_table
    ablations = ["gain", "loss", "overlap"]  # K = 3; the single-seed cell is not a comparison
    raw = {}
    for v in [*ablations, "random_init"]:
        vals = np.array(BASE_VALUES) + np.array(SHIFTS[v])
        raw[v] = float(stats.ttest_rel(vals, np.array(BASE_VALUES)).pvalue)
    assert {v: t.cell(v, *CELL)["p_value"] for v in raw} == pytest.approx(raw, rel=1e-9)
    assert [t.cell(v, *CELL)["p_holm"] for v in ablations] == pytest.approx(
        hand_holm([raw[v] for v in ablations]), rel=1e-9
    )
    # the floor is a family of its own: one cell, so its p_holm is its p
    assert t.cell("random_init", *CELL)["p_holm"] == pytest.approx(raw["random_init"], rel=1e-12)
    assert t.n_comparisons == 3 and t.n_floor_comparisons == 1
    note = next(n for n in t.notes if n.startswith("verdicts:"))
    assert note.startswith(
        "verdicts: paired t-test over pretraining seeds per cell, p-values Holm-corrected over the 3 ablation "
        "comparisons in this table (alpha 0.05); 'helps'/'hurts' = the variant is better/worse than the baseline full."
    )
    assert "its 1 cell are Holm-corrected as a family of their own" in note
    assert "untrained encoder is below the pretrained baseline" in note


def test_the_floor_never_changes_an_ablation_verdict() -> None:
    """Holm families: adding the random-init floor leaves every ablation cell's p_holm as it was, and the
    floor's cells are corrected over the floor's cells only."""
    values = {}
    for task, frac in (("ptbxl_super", 0.1), ("ptbxl_super", 1.0), ("cpsc2018", 0.1)):
        for v in ("full", "gain", "overlap", "random_init"):
            values[(v, task, frac)] = [b + d for b, d in zip(BASE_VALUES, SHIFTS[v], strict=True)]
    with_floor = comparison_table(tidy_results(values), baseline="full", include_published=False)
    without = comparison_table(
        tidy_results({k: v for k, v in values.items() if k[0] != "random_init"}),
        baseline="full",
        include_published=False,
    )
    ablation = with_floor.frame[~with_floor.frame["variant"].isin(["full", "random_init"])]
    reference = without.frame[without.frame["variant"] != "full"]
    assert ablation["p_holm"].tolist() == pytest.approx(reference["p_holm"].tolist(), rel=1e-12)
    assert ablation["verdict"].tolist() == reference["verdict"].tolist()
    floor = with_floor.frame[with_floor.frame["variant"] == "random_init"]
    assert floor["p_holm"].to_numpy() == pytest.approx(hand_holm(floor["p_value"].tolist()), rel=1e-9)
    assert (floor["verdict"] == "hurts").all()
    assert (with_floor.n_comparisons, with_floor.n_floor_comparisons) == (6, 3)
    assert (without.n_comparisons, without.n_floor_comparisons) == (6, 0)
    legend = comparison_markdown(with_floor)
    assert "over the 6 tested ablation cells and, as a family of its own, the random-init floor's 3 cells" in legend
    caption = _verdict_summary(with_floor)  # the report's caption counts the two families apart
    assert (
        "over 6 Holm-corrected ablation cells: 3 helps · 3 n.s.; random-init floor, 3 cells corrected on their "
        "own: 3 hurts" in caption
    )


def test_holm_spans_every_cell_of_the_table() -> None:
    values = {}
    for task, frac in (("ptbxl_super", 0.01), ("ptbxl_super", 1.0), ("cpsc2018", 0.1)):
        for v in ("full", "gain", "overlap"):
            values[(v, task, frac)] = [b + d for b, d in zip(BASE_VALUES, SHIFTS[v], strict=True)]
    t = comparison_table(tidy_results(values), baseline="full", include_published=False)
    run = t.frame[t.frame["variant"] != "full"]
    assert len(run) == 6 and t.n_comparisons == 6
    assert run["p_holm"].to_numpy() == pytest.approx(hand_holm(run["p_value"].tolist()), rel=1e-9)
    assert "over the 6 ablation comparisons" in next(n for n in t.notes if n.startswith("verdicts:"))
    assert not any("random_init" in n for n in t.notes)
    strict = comparison_table(tidy_results(values), baseline="full", alpha=1e-12, include_published=False)
    assert strict.cell("gain", "cpsc2018", 0.1)["verdict"].startswith("no detectable difference")
    assert any("(alpha 1e-12)" in n for n in strict.notes)


def test_verdict_direction_follows_higher_is_better() -> None:
    t = comparison_table(tidy_results(verdict_values()), baseline="full", higher_is_better=False)
    assert t.cell("gain", *CELL)["verdict"] == "hurts" and t.cell("loss", *CELL)["verdict"] == "helps"


def test_single_seed_cells_are_not_tested(verdict_table) -> None:
    single = verdict_table.cell("single", *CELL)
    assert single["verdict"] == "not tested (1 pair(s))" and single["n_pairs"] == 1
    assert math.isnan(single["p_holm"]) and math.isnan(single["delta_ci_low"])
    values = verdict_values(single=False)
    values[("gain", "cpsc2018", 0.1)] = [0.9, 0.91, 0.92, 0.93, 0.94]  # the baseline has no such cell
    t = comparison_table(tidy_results(values), baseline="full")
    assert t.cell("gain", "cpsc2018", 0.1)["verdict"] == "not tested (0 pair(s))"
    no_base = comparison_table(tidy_results(verdict_values()), baseline="nope")
    assert no_base.frame["verdict"].eq("").all() and no_base.frame["p_holm"].isna().all()
    assert not any(n.startswith("verdicts:") for n in no_base.notes)


def test_feature_column(verdict_table) -> None:
    features = {"full": "m_e", "gain": "z_e", "loss": ["m_e", "z_e"], "overlap": None, "random_init": ""}
    t = comparison_table(tidy_results(verdict_values(), features=features), baseline="full")
    got = {v: t.cell(v, *CELL)["feature"] for v in [*SHIFTS, "single"]}
    assert got == {"full": "m_e", "gain": "z_e", "loss": "m_e/z_e", "overlap": "", "random_init": "", "single": ""}
    assert t.row_feature("loss") == "m_e/z_e" and t.row_feature("overlap") == ""
    assert verdict_table.frame["feature"].eq("").all()  # no feature column at all
    md = comparison_markdown(t)
    assert "| full (m_e) (baseline) |" in md and "| gain (z_e) |" in md and "| loss (m_e/z_e) |" in md
    assert "| overlap |" in md
    assert 'gain <span class="feat">(z_e)</span>' in comparison_html(t)


def test_rendered_verdicts_and_holm_note(verdict_table, tmp_path: Path) -> None:
    md = comparison_markdown(verdict_table)
    row = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert row["gain"].endswith("helps |") and "p_Holm" in row["gain"] and "Δ+0.050" in row["gain"]
    assert row["loss"].endswith("hurts |") and row["overlap"].endswith("n.s. |")
    assert row["single"].endswith("untested |") and row["random_init"].endswith("hurts |")
    assert "helps" not in row["full (baseline)"] and "Δ" not in row["full (baseline)"]
    assert "Verdict vs baseline 'full': helps = better than the baseline (p_Holm < 0.05)" in md
    assert "p-values Holm-corrected over the 3 ablation comparisons in this table (alpha 0.05)" in md
    assert md.count("Holm-corrected over the 3 ablation comparisons") == 1  # under the table, not repeated in Notes
    assert md.index("| single |") < md.index("Verdict vs baseline") < md.index("over the 3 ablation comparisons in")
    html = comparison_html(verdict_table)
    assert '<span class="d sig-pos"' in html and '<span class="d sig-neg"' in html
    assert '<b class="verdict">n.s.</b>' in html and "Holm-corrected over the 3 ablation comparisons" in html
    paths = write_comparison(verdict_table, tmp_path)
    csv = pd.read_csv(paths["comparison_csv"], keep_default_na=False, na_values=[""])
    assert list(csv.columns) == EXPECTED_CSV_COLUMNS
    gain = csv[csv["variant"] == "gain"].iloc[0]
    assert gain["verdict"] == "helps" and gain["p_holm"] == pytest.approx(verdict_table.cell("gain", *CELL)["p_holm"])
    assert csv.loc[csv["variant"] == "overlap", "verdict"].iloc[0].startswith("no detectable difference (95% CI")


def test_csv_contract() -> None:
    assert CSV_COLUMNS == EXPECTED_CSV_COLUMNS


def test_the_reader_requires_only_columns_the_writer_writes():
    from deri_sweep.common import result_files as files

    assert set(files.REQUIRED_RESULT_COLUMNS) <= set(files.RESULT_COLUMNS)
    assert set(files.REQUIRED_TRIAL_COLUMNS) <= set(files.TRIAL_COLUMNS)

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
from analysis.report import build_report, main
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


def test_analysis_never_imports_orchestration() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(ray|optuna|deri_sweep\.orchestration)\b", re.M)
    for path in (REPO / "analysis").glob("*.py"):
        assert not pattern.search(path.read_text()), path
    code = (
        "import sys, analysis.report, analysis.figures; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna') or 'orchestration' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Figure data: plain NamedTuples computed from run files (tested without plotly)."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.tables import ComparisonTable, fraction_label

__all__ = [
    "AblationBars",
    "AblationPanel",
    "BarSeries",
    "CostBars",
    "CurveLine",
    "Importance",
    "LearningCurves",
    "ParallelCoordinates",
    "ParamAxis",
    "ablation_bars",
    "cost_bars",
    "importance_data",
    "learning_curves",
    "parallel_coordinates",
]

logger = logging.getLogger(__name__)
PARAM_PREFIX = "param/"


class BarSeries(NamedTuple):
    """One variant's bars in a task panel, one bar per training fraction."""

    variant: str
    fractions: tuple[str, ...]
    means: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    n_seeds: tuple[int, ...]
    published: bool


class AblationPanel(NamedTuple):
    """All variants for one downstream task."""

    task: str
    series: tuple[BarSeries, ...]


class AblationBars(NamedTuple):
    """Ablation bar chart data: one panel per task, bars = variant means with CI whiskers."""

    metric: str
    eval: str
    baseline: str | None
    panels: tuple[AblationPanel, ...]


def ablation_bars(table: ComparisonTable, *, include_published: bool = True) -> AblationBars:
    """Reshape a comparison table into per-task bar series (CI bounds are NaN where undefined).

    Args:
        table: the comparison table.
        include_published: keep the published reference rows (drawn as markers).
    """
    panels = []
    for task in dict.fromkeys(t for t, _ in table.columns):
        fracs = [f for t, f in table.columns if t == task]
        series = []
        for variant in table.variants:
            cells = [table.cell(variant, task, f) for f in fracs]
            if all(c is None for c in cells):
                continue
            published = next(c for c in cells if c is not None)["source"] == "published"
            if published and not include_published:
                continue

            def col(name: str, cells: list = cells) -> tuple[float, ...]:
                return tuple(float(c[name]) if c is not None else math.nan for c in cells)

            n = tuple(int(c["n_seeds"]) if c is not None else 0 for c in cells)
            labels = tuple(fraction_label(f) for f in fracs)
            series.append(BarSeries(variant, labels, col("mean"), col("ci_low"), col("ci_high"), n, published))
        panels.append(AblationPanel(task, tuple(series)))
    return AblationBars(table.metric, table.eval, table.baseline, tuple(panels))


class CurveLine(NamedTuple):
    """One trial's learning curve for one metric."""

    trial_id: str
    variant: str
    state: str
    metric: str
    epochs: tuple[int, ...]
    values: tuple[float, ...]


class LearningCurves(NamedTuple):
    """Learning curves of every trial, grouped by metric (``metrics`` gives the panel order)."""

    metrics: tuple[str, ...]
    lines: tuple[CurveLine, ...]


def learning_curves(
    curves: pd.DataFrame, trials: pd.DataFrame | None = None, *, metrics: tuple[str, ...] | None = None
) -> LearningCurves:
    """Collect per-trial learning curves from ``curves.parquet``.

    Args:
        curves: columns ``trial_id, epoch, metric, value``.
        trials: optional ``trials.parquet`` frame, used to label lines with variant and state.
        metrics: metrics to keep, in panel order; default every metric present, losses
            (``train_*`` then ``val_*``) first and ``lr`` last.

    Returns:
        Lines sorted by metric then trial id; points with non-finite values are dropped.
    """
    present = sorted(set(curves["metric"].astype(str)))
    if metrics is None:
        metrics = tuple(sorted(present, key=lambda m: (m == "lr", not m.startswith("train"), m)))
    metrics = tuple(m for m in metrics if m in present)
    info: dict[str, tuple[str, str]] = {}
    if trials is not None and not trials.empty:
        info = {str(r.trial_id): (str(r.variant), str(r.state)) for r in trials.itertuples(index=False)}
    lines = []
    data = curves[curves["metric"].isin(metrics) & np.isfinite(curves["value"].astype(float))]
    for (metric, trial_id), g in data.sort_values("epoch").groupby(["metric", "trial_id"], sort=True):
        variant, state = info.get(str(trial_id), ("?", "?"))
        epochs = tuple(int(e) for e in g["epoch"])
        lines.append(CurveLine(str(trial_id), variant, state, str(metric), epochs, tuple(map(float, g["value"]))))
    lines.sort(key=lambda ln: (metrics.index(ln.metric), ln.variant, ln.state != "COMPLETE", ln.trial_id))
    return LearningCurves(metrics, tuple(lines))


class ParamAxis(NamedTuple):
    """One axis of the parallel-coordinates plot (categorical values are integer codes with tick text)."""

    name: str
    values: tuple[float, ...]
    ticktext: tuple[str, ...] | None
    log10: bool


class ParallelCoordinates(NamedTuple):
    """Searched parameters -> objective for the kept trials."""

    objective_name: str
    trial_ids: tuple[str, ...]
    objective: tuple[float, ...]
    axes: tuple[ParamAxis, ...]


def _axis(name: str, col: pd.Series) -> ParamAxis | None:
    if col.nunique(dropna=True) < 2:
        return None
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if numeric:
        vals = col.astype(float).to_numpy()
        finite = vals[np.isfinite(vals)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100:
            return ParamAxis(name, tuple(np.log10(vals)), None, True)
        return ParamAxis(name, tuple(vals), None, False)
    labels = sorted(col.dropna().astype(str).unique())
    codes = tuple(float(labels.index(str(v))) if pd.notna(v) else math.nan for v in col)
    return ParamAxis(name, codes, tuple(labels), False)


def parallel_coordinates(
    trials: pd.DataFrame, *, states: tuple[str, ...] = ("COMPLETE",), objective: str = "objective"
) -> ParallelCoordinates:
    """Searched parameters (and the variant) against the objective.

    Args:
        trials: ``trials.parquet`` frame with ``param/<key>`` columns.
        states: trial states to keep (pruned trials have no final objective).
        objective: column holding the objective.

    Returns:
        Axes for ``variant`` (when several) and each ``param/`` column that varies;
        trials without a finite objective are dropped. Wide ranges (>= 100x, positive)
        get a log10 axis.
    """
    kept = trials[trials["state"].isin(states)]
    kept = kept[np.isfinite(kept[objective].astype(float))]
    axes = []
    cols = ["variant", *sorted(c for c in kept.columns if c.startswith(PARAM_PREFIX))]
    for col in cols:
        axis = _axis(col.removeprefix(PARAM_PREFIX), kept[col]) if col in kept else None
        if axis is not None:
            axes.append(axis)
    ids = tuple(str(t) for t in kept["trial_id"])
    return ParallelCoordinates(objective, ids, tuple(map(float, kept[objective])), tuple(axes))


class Importance(NamedTuple):
    """Hyper-parameter importances, most important first."""

    params: tuple[str, ...]
    importances: tuple[float, ...]


def importance_data(importance: pd.DataFrame) -> Importance:
    """Sort ``importance.csv`` (columns ``param, importance``) descending; ``param/`` prefixes are dropped."""
    df = importance.dropna(subset=["importance"]).sort_values("importance", ascending=False)
    params = tuple(str(p).removeprefix(PARAM_PREFIX) for p in df["param"])
    return Importance(params, tuple(map(float, df["importance"])))


class CostBars(NamedTuple):
    """Compute hours per variant."""

    variants: tuple[str, ...]
    n_trials: tuple[int, ...]
    hours_mean: tuple[float, ...]
    hours_sum: tuple[float, ...]


def cost_bars(cost: pd.DataFrame) -> CostBars:
    """Turn :func:`analysis.tables.cost_per_variant` output into bar data."""
    return CostBars(
        tuple(map(str, cost["variant"])),
        tuple(int(n) for n in cost["n_trials"]),
        tuple(map(float, cost["hours_mean"])),
        tuple(map(float, cost["hours_sum"])),
    )

"""Figures for a sweep run, split Optuna-style into *compute the data* and *draw the figure*.

The data functions (``ablation_bars``, ``learning_curves``, ``parallel_coordinates``,
``importance_data``, ``cost_bars``) return NamedTuples and need only pandas; the
``plot_*`` functions take those and import plotly lazily, returning
``plotly.graph_objects.Figure`` objects.

Example:
    >>> from analysis.tables import comparison_table
    >>> fig = plot_ablation_bars(ablation_bars(comparison_table(results)))  # doctest: +SKIP
"""

from __future__ import annotations

from analysis._figure_data import (
    AblationBars,
    AblationPanel,
    BarSeries,
    CostBars,
    CurveLine,
    Importance,
    LearningCurves,
    ParallelCoordinates,
    ParamAxis,
    ablation_bars,
    cost_bars,
    importance_data,
    learning_curves,
    parallel_coordinates,
)
from analysis._figure_draw import (
    PALETTE,
    plot_ablation_bars,
    plot_cost,
    plot_importance,
    plot_learning_curves,
    plot_parallel_coordinates,
    variant_colors,
)

__all__ = [
    "PALETTE",
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
    "plot_ablation_bars",
    "plot_cost",
    "plot_importance",
    "plot_learning_curves",
    "plot_parallel_coordinates",
    "variant_colors",
]

"""Quality against cost: the Pareto front of a multi-objective Optuna study, from ``trials.parquet``.

A space with ``objectives: [probe_val_auroc:max, gpu_hours:min]`` runs a multi-objective
study; its trials file holds each finished trial's objective (mean validation AUROC of the
probe plan) and compute hours. A trial is dominated when another is at least as good on
every objective and better on one; the report draws the front in colour and the dominated
trials in grey.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "pareto_front", "plot_pareto"]

#: objective name in a space's ``objectives`` -> column of ``trials.parquet``
COLUMNS = {"probe_val_auroc": "objective", "gpu_hours": "hours"}


def _parse(objectives: list[str]) -> list[tuple[str, str, bool]]:
    """``["probe_val_auroc:max", ...]`` -> ``[(name, column, maximise), ...]``."""
    out = []
    for entry in objectives:
        name, _, direction = entry.partition(":")
        out.append((name, COLUMNS.get(name, name), direction == "max"))
    return out


def pareto_front(trials: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """The completed trials with their objectives and whether another trial dominates them.

    Args:
        trials: ``trials.parquet`` (``trial_id``, ``state``, ``objective``, ``hours``, ...).
        objectives: the space's ``objectives`` entries, ``NAME:max`` / ``NAME:min``.

    Returns:
        One row per COMPLETE trial with finite objectives: ``trial_id``, ``variant``, one
        column per objective name, and ``dominated`` (bool), front first, then by the first objective.
    """
    parsed = _parse(objectives)
    done = trials[trials["state"] == "COMPLETE"].copy() if "state" in trials else trials.copy()
    for name, column, _ in parsed:
        done[name] = pd.to_numeric(done[column], errors="coerce") if column in done else np.nan
    names = [name for name, _, _ in parsed]
    done = done[np.isfinite(done[names].to_numpy(dtype=float)).all(axis=1)]
    signs = np.array([1.0 if up else -1.0 for _, _, up in parsed])
    scores = done[names].to_numpy(dtype=float).reshape(len(done), len(names)) * signs  # larger is better on every axis
    dominated = np.zeros(len(done), dtype=bool)
    for i in range(len(done)):
        others = np.delete(scores, i, axis=0)
        dominated[i] = bool(((others >= scores[i]).all(axis=1) & (others > scores[i]).any(axis=1)).any())
    keep = [c for c in ("trial_id", "variant") if c in done]
    front = done[keep + names].assign(dominated=dominated)
    first, _, up = parsed[0]
    return front.sort_values(["dominated", first], ascending=[True, not up]).reset_index(drop=True)


def plot_pareto(front: pd.DataFrame, objectives: list[str]) -> Any:
    """A scatter of the first two objectives: the front in colour, joined; dominated trials in grey."""
    import plotly.graph_objects as go

    (x, _, _), (y, _, _) = _parse(objectives)[:2]
    fig = go.Figure()
    for dominated, colour, label in ((True, "#b0b0b0", "dominated"), (False, "#1f77b4", "Pareto front")):
        part = front[front["dominated"] == dominated].sort_values(x)
        fig.add_trace(go.Scatter(
            x=part[x], y=part[y], mode="markers" if dominated else "lines+markers", name=label,
            marker={"color": colour, "size": 10}, text=part.get("trial_id"),
            hovertemplate="%{text}<br>" + f"{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(xaxis_title=x, yaxis_title=y, height=420, margin={"l": 60, "r": 20, "t": 30, "b": 50})
    return fig

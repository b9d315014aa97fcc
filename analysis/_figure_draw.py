"""Draw figure data with plotly (imported lazily, so the data side works without it)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from analysis._figure_data import AblationBars, CostBars, Importance, LearningCurves, ParallelCoordinates

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "PALETTE",
    "plot_ablation_bars",
    "plot_cost",
    "plot_importance",
    "plot_learning_curves",
    "plot_parallel_coordinates",
    "variant_colors",
]

#: Colour-blind-safe qualitative palette (Okabe-Ito without black), cycled over variants.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")
_PUBLISHED_SYMBOLS = ("diamond-open", "star-open", "square-open", "triangle-up-open")
_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "font": {"family": "-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", "size": 12},
    "margin": {"l": 60, "r": 20, "t": 80, "b": 50},
    "legend": {"orientation": "h", "yref": "container", "yanchor": "top", "y": 0.99, "x": 0},
}


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _subplots(**kwargs: Any) -> go.Figure:
    from plotly.subplots import make_subplots

    return make_subplots(**kwargs)


def variant_colors(variants: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Stable colour per variant (order of first appearance)."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(dict.fromkeys(variants))}


def _nan_to_none(values: tuple[float, ...]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def plot_ablation_bars(data: AblationBars, *, cols: int = 3) -> go.Figure:
    """Grouped bars per task (x = training fraction, colour = variant) with 95% CI whiskers.

    Published references are drawn as open markers, not bars. The y axis is zoomed
    to the data (it does not start at zero), as differences of a few points matter.
    """
    go = _go()
    n = max(len(data.panels), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = _subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[p.task for p in data.panels] or [""],
        horizontal_spacing=0.06,
        vertical_spacing=0.16 / rows,
    )
    colors = variant_colors([s.variant for p in data.panels for s in p.series if not s.published])
    pub_names = list(dict.fromkeys(s.variant for p in data.panels for s in p.series if s.published))
    lows, highs, shown = [], [], set()
    for i, panel in enumerate(data.panels):
        r, c = divmod(i, cols)
        for s in panel.series:
            lows += [x for x in (*s.ci_low, *s.means) if math.isfinite(x)]
            highs += [x for x in (*s.ci_high, *s.means) if math.isfinite(x)]
            common = {"name": s.variant, "legendgroup": s.variant, "showlegend": s.variant not in shown}
            shown.add(s.variant)
            if s.published:
                symbol = _PUBLISHED_SYMBOLS[pub_names.index(s.variant) % len(_PUBLISHED_SYMBOLS)]
                trace = go.Scatter(
                    x=list(s.fractions),
                    y=_nan_to_none(s.means),
                    mode="markers",
                    marker={"symbol": symbol, "size": 10, "color": "#52606d", "line": {"width": 1.5}},
                    hovertemplate="%{y:.3f}<extra>" + s.variant + "</extra>",
                    **common,
                )
            else:
                plus = [h - m if math.isfinite(h) else None for h, m in zip(s.ci_high, s.means, strict=True)]
                minus = [m - lo if math.isfinite(lo) else None for lo, m in zip(s.ci_low, s.means, strict=True)]
                trace = go.Bar(
                    x=list(s.fractions),
                    y=_nan_to_none(s.means),
                    marker_color=colors[s.variant],
                    error_y={
                        "type": "data",
                        "array": plus,
                        "arrayminus": minus,
                        "thickness": 1.2,
                        "width": 3,
                        "color": "#323f4b",
                    },
                    customdata=list(s.n_seeds),
                    hovertemplate="%{y:.3f} (n=%{customdata})<extra>" + s.variant + "</extra>",
                    **common,
                )
            fig.add_trace(trace, row=r + 1, col=c + 1)
    if lows:
        lo, hi = min(lows), max(highs)
        pad = max((hi - lo) * 0.1, 0.01)
        fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_yaxes(title_text=data.metric, col=1)
    fig.update_layout(**_LAYOUT, barmode="group", height=330 * rows + 60, bargap=0.25)
    return fig


def plot_learning_curves(data: LearningCurves, *, cols: int = 3) -> go.Figure:
    """One panel per metric; a line per trial coloured by variant, pruned trials dashed."""
    go = _go()
    n = max(len(data.metrics), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = _subplots(
        rows=rows,
        cols=cols,
        subplot_titles=list(data.metrics) or [""],
        horizontal_spacing=0.07,
        vertical_spacing=0.18 / rows,
    )
    colors = variant_colors(sorted({ln.variant for ln in data.lines}))
    seen: set[str] = set()
    for ln in data.lines:
        r, c = divmod(data.metrics.index(ln.metric), cols)
        dash = "dot" if ln.state == "PRUNED" else ("dash" if ln.state == "FAILED" else "solid")
        fig.add_trace(
            go.Scatter(
                x=list(ln.epochs),
                y=list(ln.values),
                mode="lines",
                name=ln.variant,
                legendgroup=ln.variant,
                showlegend=ln.variant not in seen,
                opacity=0.8,
                line={"color": colors[ln.variant], "width": 1.4, "dash": dash},
                hovertemplate=f"trial {ln.trial_id} ({ln.state})<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>",
            ),
            row=r + 1,
            col=c + 1,
        )
        seen.add(ln.variant)
    if "lr" in data.metrics:
        r, c = divmod(data.metrics.index("lr"), cols)
        fig.update_yaxes(tickformat=".1e", row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="epoch", row=rows)
    fig.update_layout(**_LAYOUT, height=300 * rows + 60)
    return fig


def plot_parallel_coordinates(data: ParallelCoordinates) -> go.Figure:
    """Parallel coordinates: one axis per varying parameter, the objective last and as colour."""
    go = _go()
    dims = []
    for axis in data.axes:
        dim: dict[str, Any] = {"label": f"log10({axis.name})" if axis.log10 else axis.name, "values": list(axis.values)}
        if axis.ticktext is not None:
            dim["tickvals"] = list(range(len(axis.ticktext)))
            dim["ticktext"] = list(axis.ticktext)
        dims.append(dim)
    dims.append({"label": data.objective_name, "values": list(data.objective)})
    line = {
        "color": list(data.objective),
        "colorscale": "Viridis",
        "showscale": True,
        "colorbar": {"title": {"text": data.objective_name}},
    }
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims, labelside="top", labelangle=-12))
    fig.update_layout(**{**_LAYOUT, "margin": {"l": 110, "r": 60, "t": 100, "b": 30}}, height=460)
    return fig


def plot_importance(data: Importance) -> go.Figure:
    """Horizontal bars of hyper-parameter importance, most important on top."""
    go = _go()
    fig = go.Figure(
        go.Bar(
            x=list(data.importances)[::-1],
            y=list(data.params)[::-1],
            orientation="h",
            marker_color=PALETTE[0],
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        **{**_LAYOUT, "margin": {"l": 200, "r": 20, "t": 40, "b": 50}},
        height=max(220, 32 * len(data.params) + 90),
        xaxis_title="importance",
    )
    return fig


def plot_cost(data: CostBars) -> go.Figure:
    """Total compute hours per variant (bars), with mean hours per trial in the hover and label."""
    go = _go()
    colors = variant_colors(data.variants)
    text = [f"{m:.2f} h/trial × {n}" for m, n in zip(data.hours_mean, data.n_trials, strict=True)]
    fig = go.Figure(
        go.Bar(
            x=list(data.variants),
            y=list(data.hours_sum),
            text=text,
            textposition="outside",
            marker_color=[colors[v] for v in data.variants],
            hovertemplate="%{x}: %{y:.2f} h total<extra></extra>",
        )
    )
    top = max(data.hours_sum, default=1.0)
    fig.update_layout(**_LAYOUT, height=360, yaxis_title="compute hours (sum)", yaxis_range=[0, top * 1.2])
    return fig

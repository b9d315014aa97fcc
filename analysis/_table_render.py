"""Render a :class:`~analysis.tables.ComparisonTable` as Markdown, CSV and HTML, and write the files."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from analysis._html import esc, page
from analysis._io import write_text
from analysis.tables import CSV_COLUMNS, ComparisonTable, fraction_label

__all__ = ["comparison_csv", "comparison_html", "comparison_markdown", "legend", "write_comparison"]

logger = logging.getLogger(__name__)


def _p(p: float) -> str:
    return "p<0.001" if p < 1e-3 else f"p={p:.3f}"


def legend(table: ComparisonTable) -> str:
    """One-paragraph plain-text explanation of what the cells mean."""
    base = (
        f"Δ = mean paired difference vs {table.baseline!r} over pretraining seeds, p = paired t-test; "
        if (table.baseline)
        else "No baseline variant: no deltas. "
    )
    best = "highest" if table.higher_is_better else "lowest"
    return (
        f"{table.eval} · {table.metric}. Cells: mean over pretraining seeds (probe seeds averaged first) "
        f"[95% t-interval]; {base}bold = {best} mean per column among this run's variants; "
        "published rows (italic) are references from the spec."
    )


def _col_header(task: str, fraction: float) -> str:
    return task if not math.isfinite(fraction) else f"{task} {fraction_label(fraction)}"


def comparison_markdown(table: ComparisonTable) -> str:
    """GitHub-flavoured Markdown: a title, the legend, the table and the notes."""
    cols = table.columns
    lines = [f"# Comparison: {table.eval} / {table.metric}", "", legend(table), ""]
    if table.frame.empty:
        return "\n".join([*lines, *(f"- {n}" for n in table.notes), ""])
    lines.append("| variant | " + " | ".join(_col_header(t, f) for t, f in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for variant in table.variants:
        label = f"{variant} (baseline)" if variant == table.baseline else variant
        cells = [_md_cell(table.cell(variant, t, f)) for t, f in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in table.notes)]
    return "\n".join(lines) + "\n"


def _md_cell(c: pd.Series | None) -> str:
    if c is None or not math.isfinite(c["mean"]):
        return "–"
    if c["source"] == "published":
        return f"*{c['mean']:.3f}*"
    text = f"**{c['mean']:.3f}**" if c["best"] else f"{c['mean']:.3f}"
    text += f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if math.isfinite(c["ci_low"]) else " (1 seed, no CI)"
    if math.isfinite(c["delta"]):
        text += f" Δ{c['delta']:+.3f}" + (f" ({_p(c['p_value'])})" if math.isfinite(c["p_value"]) else "")
    return text


def comparison_csv(table: ComparisonTable) -> str:
    """The long table as CSV text (columns :data:`~analysis.tables.CSV_COLUMNS`)."""
    return table.frame[CSV_COLUMNS].to_csv(index=False, float_format="%.6g")


def _html_cell(c: pd.Series | None, *, higher_is_better: bool) -> str:
    if c is None or not math.isfinite(c["mean"]):
        return "<td>–</td>"
    if c["source"] == "published":
        return f"<td>{c['mean']:.3f}</td>"
    inner = f"{c['mean']:.3f}"
    if math.isfinite(c["ci_low"]):
        inner += f'<span class="ci">[{c["ci_low"]:.3f}, {c["ci_high"]:.3f}] n={int(c["n_seeds"])}</span>'
    else:
        inner += '<span class="ci">1 seed, no CI</span>'
    if math.isfinite(c["delta"]):
        sig = math.isfinite(c["p_value"]) and c["p_value"] < 0.05
        good = (c["delta"] > 0) == higher_is_better
        cls = "d" + ((" sig-pos" if good else " sig-neg") if sig else "")
        p = f" · {_p(c['p_value'])}" if math.isfinite(c["p_value"]) else ""
        inner += f'<span class="{cls}">Δ {c["delta"]:+.3f}{p}</span>'
    return f'<td class="best">{inner}</td>' if c["best"] else f"<td>{inner}</td>"


def comparison_html(table: ComparisonTable, *, standalone: bool = True) -> str:
    """The comparison as HTML: a complete page, or a fragment for embedding in the report.

    Best cells are bold on a tinted background, published rows italic and grey,
    significant deltas (p < 0.05) coloured by whether they help or hurt.
    """
    cols = table.columns
    parts = [f'<p class="caption">{esc(legend(table))}</p>']
    if not table.frame.empty:
        tasks = list(dict.fromkeys(t for t, _ in cols))
        top = "".join(f'<th colspan="{sum(1 for t2, _ in cols if t2 == t)}">{esc(t)}</th>' for t in tasks)
        sub = "".join(f"<th>{esc(fraction_label(f))}</th>" for _, f in cols)
        rows = []
        for variant in table.variants:
            first = table.frame.loc[table.frame["variant"] == variant, "source"].iloc[0]
            cls = "published" if first == "published" else ("baseline" if variant == table.baseline else "")
            cells = "".join(
                _html_cell(table.cell(variant, t, f), higher_is_better=table.higher_is_better) for t, f in cols
            )
            rows.append(f'<tr class="{cls}"><td class="rowh">{esc(variant)}</td>{cells}</tr>')
        parts.append(
            '<div class="scroll"><table class="data cmp"><thead>'
            f'<tr><th class="rowh" rowspan="2">variant</th>{top}</tr><tr>{sub}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
    if table.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in table.notes) + "</ul>")
    fragment = "\n".join(parts)
    if not standalone:
        return fragment
    title = f"Comparison: {table.eval} / {table.metric}"
    return page(title, f"<main><section><h2>{esc(title)}</h2>{fragment}</section></main>")


def write_comparison(table: ComparisonTable, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.html`` into ``out_dir`` (atomically).

    Returns:
        ``{"comparison_md": path, "comparison_csv": path, "comparison_html": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "comparison_md": (out / "comparison.md", comparison_markdown(table)),
        "comparison_csv": (out / "comparison.csv", comparison_csv(table)),
        "comparison_html": (out / "comparison.html", comparison_html(table)),
    }
    for path, text in paths.values():
        write_text(path, text)
        logger.info("wrote %s", path)
    return {key: path for key, (path, _) in paths.items()}

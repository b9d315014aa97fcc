"""Render a :class:`~analysis.tables.ComparisonTable` as Markdown, CSV and HTML, and write the files."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from analysis._html import esc, page
from analysis._io import write_text
from analysis.tables import CSV_COLUMNS, HELPS, HURTS, ComparisonTable, fraction_label, verdict_word

__all__ = [
    "comparison_csv",
    "comparison_html",
    "comparison_markdown",
    "legend",
    "row_label",
    "verdict_legend",
    "write_comparison",
]

logger = logging.getLogger(__name__)


def _p(p: float, name: str = "p") -> str:
    return f"{name}<0.001" if p < 1e-3 else f"{name}={p:.3f}"


def _num(c: pd.Series, key: str) -> float:
    value = c.get(key)
    return float(value) if value is not None and not pd.isna(value) else math.nan


def _verdict(c: pd.Series) -> str:
    value = c.get("verdict")
    return value if isinstance(value, str) else ""


def _level(table: ComparisonTable) -> str:
    return f"{table.confidence * 100:g}%"


def _floor_family(table: ComparisonTable) -> str:
    m = table.n_floor_comparisons
    return f" and, as a family of its own, the random-init floor's {m} cell{'' if m == 1 else 's'}" if m else ""


def legend(table: ComparisonTable) -> str:
    """One-paragraph plain-text explanation of what the cells mean."""
    base = (
        f"Δ = mean paired difference vs {table.baseline!r} over pretraining seeds, "
        f"p = paired t-test p-value, p_Holm = the same Holm-corrected over the {table.n_comparisons} tested "
        f"ablation cells{_floor_family(table)} (the verdict reads p_Holm); "
        if (table.baseline)
        else "No baseline variant: no deltas. "
    )
    best = "highest" if table.higher_is_better else "lowest"
    return (
        f"{table.eval} · {table.metric}. Cells: mean over pretraining seeds (probe seeds averaged first) "
        f"[{_level(table)} t-interval]; {base}bold = {best} mean per column among this run's variants; "
        "rows name the probed feature in parentheses; published rows (italic) are references from the spec."
    )


def verdict_legend(table: ComparisonTable) -> str:
    """Plain-text key of the verdict words shown in the cells ("" without a baseline)."""
    if not table.baseline:
        return ""
    a = f"{table.alpha:g}"
    return (
        f"Verdict vs baseline {table.baseline!r}: helps = better than the baseline (p_Holm < {a}); "
        f"hurts = worse than the baseline (p_Holm < {a}); n.s. = no detectable difference "
        f"(the {_level(table)} CI of Δ is in comparison.csv, delta_ci_low/delta_ci_high); "
        "untested = fewer than 2 pretraining seeds paired with the baseline."
    )


def row_label(table: ComparisonTable, variant: str) -> str:
    """Row header text: the variant with its probed feature, e.g. ``"no_fusion (z_e)"``."""
    feature = table.row_feature(variant)
    return f"{variant} ({feature})" if feature else variant


def _split_notes(table: ComparisonTable) -> tuple[list[str], list[str]]:
    """(Holm notes, shown under the verdict key; the other notes)."""
    holm = [n for n in table.notes if n.startswith("verdicts:")]
    return holm, [n for n in table.notes if n not in holm]


def _col_header(task: str, fraction: float) -> str:
    return task if not math.isfinite(fraction) else f"{task} {fraction_label(fraction)}"


def comparison_markdown(table: ComparisonTable) -> str:
    """GitHub-flavoured Markdown: a title, the legend, the table, the verdict key with the Holm note, the notes."""
    cols = table.columns
    lines = [f"# Comparison: {table.eval} / {table.metric}", "", legend(table), ""]
    if table.frame.empty:
        return "\n".join([*lines, *(f"- {n}" for n in table.notes), ""])
    lines.append("| variant | " + " | ".join(_col_header(t, f) for t, f in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for variant in table.variants:
        label = row_label(table, variant)
        label = f"{label} (baseline)" if variant == table.baseline else label
        cells = [_md_cell(table.cell(variant, t, f)) for t, f in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    holm, other = _split_notes(table)
    if key := verdict_legend(table):
        lines += ["", key]
        for note in holm:
            lines += ["", note]
    if other:
        lines += ["", "Notes:", *(f"- {n}" for n in other)]
    return "\n".join(lines) + "\n"


def _md_cell(c: pd.Series | None) -> str:
    if c is None or not math.isfinite(c["mean"]):
        return "–"
    if c["source"] == "published":
        return f"*{c['mean']:.3f}*"
    text = f"**{c['mean']:.3f}**" if c["best"] else f"{c['mean']:.3f}"
    text += f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if math.isfinite(c["ci_low"]) else " (1 seed, no CI)"
    if math.isfinite(c["delta"]):
        text += f" Δ{c['delta']:+.3f}"
        if math.isfinite(p_holm := _num(c, "p_holm")):
            text += f" ({_p(_num(c, 'p_value'))}, {_p(p_holm, 'p_Holm')})"
    if word := verdict_word(_verdict(c)):
        text += f" {word}"
    return text


def comparison_csv(table: ComparisonTable) -> str:
    """The long table as CSV text (columns :data:`~analysis.tables.CSV_COLUMNS`)."""
    return table.frame[CSV_COLUMNS].to_csv(index=False, float_format="%.6g")


def _html_cell(c: pd.Series | None) -> str:
    if c is None or not math.isfinite(c["mean"]):
        return "<td>–</td>"
    if c["source"] == "published":
        return f"<td>{c['mean']:.3f}</td>"
    inner = f"{c['mean']:.3f}"
    if math.isfinite(c["ci_low"]):
        inner += f'<span class="ci">[{c["ci_low"]:.3f}, {c["ci_high"]:.3f}] n={int(c["n_seeds"])}</span>'
    else:
        inner += '<span class="ci">1 seed, no CI</span>'
    verdict = _verdict(c)
    if math.isfinite(c["delta"]) or verdict_word(verdict):
        cls = "d" + {HELPS: " sig-pos", HURTS: " sig-neg"}.get(verdict, "")
        parts = [f"Δ {c['delta']:+.3f}"] if math.isfinite(c["delta"]) else []
        if math.isfinite(p_holm := _num(c, "p_holm")):
            parts.append(esc(f"{_p(_num(c, 'p_value'))}, {_p(p_holm, 'p_Holm')}"))
        if word := verdict_word(verdict):
            parts.append(f'<b class="verdict">{esc(word)}</b>')
        inner += f'<span class="{cls}" title="{esc(verdict)}">{" · ".join(parts)}</span>'
    return f'<td class="best">{inner}</td>' if c["best"] else f"<td>{inner}</td>"


def comparison_html(table: ComparisonTable, *, standalone: bool = True) -> str:
    """The comparison as HTML: a complete page, or a fragment for embedding in the report.

    Best cells are bold on a tinted background, published rows italic and grey,
    deltas coloured by their Holm-corrected verdict (green helps, red hurts); each
    row header names the probed feature, and the verdict key and Holm note follow the table.
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
            cells = "".join(_html_cell(table.cell(variant, t, f)) for t, f in cols)
            feature = table.row_feature(variant)
            head = esc(variant) + (f' <span class="feat">({esc(feature)})</span>' if feature else "")
            rows.append(f'<tr class="{cls}"><td class="rowh">{head}</td>{cells}</tr>')
        parts.append(
            '<div class="scroll"><table class="data cmp"><thead>'
            f'<tr><th class="rowh" rowspan="2">variant</th>{top}</tr><tr>{sub}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
    holm, other = _split_notes(table)
    if not table.frame.empty and (key := verdict_legend(table)):
        parts.append(f'<p class="caption verdicts">{esc(key)}</p>')
        parts += [f'<p class="caption holm">{esc(n)}</p>' for n in holm]
    else:
        other = list(table.notes)
    if other:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in other) + "</ul>")
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

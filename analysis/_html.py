"""HTML building blocks shared by the standalone table page and the report."""

from __future__ import annotations

import html
import math

import pandas as pd

__all__ = ["CSS", "esc", "fmt_num", "frame_to_html", "page"]

CSS = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#d9e2ec; --accent:#2563eb; --bg:#ffffff; --soft:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--soft); }
main { max-width:1280px; margin:0 auto; padding:28px 32px 64px; }
header.top { background:#0f172a; color:#f8fafc; padding:22px 32px; }
header.top h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header.top .sub { color:#cbd5e1; font-size:13px; }
nav.toc { margin-top:10px; font-size:13px; }
nav.toc a { color:#93c5fd; margin-right:14px; text-decoration:none; }
section { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:18px 22px; margin:18px 0; }
h2 { font-size:17px; margin:0 0 10px; font-weight:600; }
p.caption, .note { color:var(--muted); font-size:12.5px; margin:6px 0; }
ul.notes { color:var(--muted); font-size:12.5px; margin:6px 0; padding-left:18px; }
.kpis { display:flex; flex-wrap:wrap; gap:12px; margin:6px 0 12px; }
.kpi { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:130px; }
.kpi .v { font-size:18px; font-weight:600; } .kpi .k { color:var(--muted); font-size:12px; }
.scroll { overflow-x:auto; }
table.data { border-collapse:collapse; font-size:12.5px; width:auto; }
table.data th, table.data td { border-bottom:1px solid var(--line); padding:5px 9px; text-align:right;
       white-space:nowrap; vertical-align:top; }
table.data th { background:var(--soft); font-weight:600; text-align:center; }
table.data th.rowh, table.data td.rowh { text-align:left; }
table.cmp td .ci, table.cmp td .d { display:block; color:var(--muted); font-size:11px; }
table.cmp td .d.sig-neg { color:#b91c1c; } table.cmp td .d.sig-pos { color:#15803d; }
table.cmp td .d .verdict { font-weight:600; } table.cmp td.rowh .feat { color:var(--muted); font-size:11px; }
table.cmp td.best { font-weight:700; background:#eef4ff; }
table.cmp td.best .ci, table.cmp td.best .d { font-weight:400; }
table.cmp tr.published td { font-style:italic; color:#8a94a3; background:#fafafa; }
table.cmp tr.baseline td.rowh::after { content:" (baseline)"; color:var(--muted); font-weight:400; font-size:11px; }
.figure { min-height:120px; }
details { margin:8px 0; } details > summary { cursor:pointer; font-weight:500; }
details[open] > summary { margin-bottom:6px; }
"""


def esc(value: object) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


def fmt_num(value: object, digits: int = 3) -> str:
    """Format a table value: floats with ``digits`` decimals, NaN/None as an en dash, other values as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or digits == 0:
        return str(round(value))
    return f"{value:.{digits}f}"


def frame_to_html(frame: pd.DataFrame, *, digits: dict[str, int] | None = None, default_digits: int = 2) -> str:
    """Render a small frame as an escaped ``table.data`` (first column left-aligned as row header).

    Args:
        frame: the frame to render; the index is ignored.
        digits: decimals per column name (0 prints integers).
        default_digits: decimals for other float columns.

    Returns:
        An HTML ``<table>`` string.
    """
    digits = digits or {}
    head = "".join(f"<th{' class=rowh' if i == 0 else ''}>{esc(c)}</th>" for i, c in enumerate(frame.columns))
    body = []
    for row in frame.itertuples(index=False):
        cells = [
            f"<td{' class=rowh' if i == 0 else ''}>{esc(fmt_num(_py(v), digits.get(str(c), default_digits)))}</td>"
            for i, (c, v) in enumerate(zip(frame.columns, row, strict=True))
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _py(value: object) -> object:
    """Numpy scalars -> Python scalars so :func:`fmt_num` sees ``int``/``float``."""
    return value.item() if hasattr(value, "item") else value


def page(title: str, body: str, *, head_extra: str = "") -> str:
    """A complete standalone HTML document with the shared stylesheet.

    Args:
        title: document title (escaped here).
        body: inner HTML of ``<body>`` (trusted: built by this package).
        head_extra: extra trusted markup for ``<head>`` (e.g. an inline script).

    Returns:
        The document as a string.
    """
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>{head_extra}</head>\n<body>{body}</body></html>\n"
    )

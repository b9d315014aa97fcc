"""Build the self-contained, offline HTML report of a sweep run.

Usage::

    python -m analysis.report RUN_DIR [--out DIR]

Writes ``report.html`` (plotly.js embedded inline once, no network needed) and
``tables/comparison.{md,csv,html}``, ``tables/cost.csv``, ``tables/trials_summary.csv``.
Only metrics, hyper-parameters and identifiers are shown: no report text from the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures as F
from analysis._html import esc, fmt_num, frame_to_html, page
from analysis._io import RunData, RunDirError, load_run, write_text
from analysis._table_render import comparison_html, write_comparison
from analysis.decisions import DECISIONS_FILE, why_we_stopped
from analysis.pareto import pareto_front, plot_pareto
from analysis.published import REFERENCE_LABEL
from analysis.tables import (
    RANDOM_INIT,
    ComparisonTable,
    comparison_table,
    cost_per_variant,
    trials_summary,
    verdict_word,
    write_reference_table,
)

__all__ = ["build_report", "main", "render_report"]

logger = logging.getLogger(__name__)

#: Secondary comparisons shown when the run has them: (eval, metric, title).
OTHER_COMPARISONS = (
    ("linear_probe", "max_test_auroc", "Linear probe, max-over-epochs test AUROC (comparable to published DERI)"),
    ("linear_probe_reference", "max_test_auroc", REFERENCE_LABEL),
    ("zero_shot", "test_auroc", "Zero-shot macro AUROC"),
    *(("report_generation", m, f"Report generation {m}") for m in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")),
)
_SECTIONS = (
    ("summary", "Summary"),
    ("comparison", "Comparison"),
    ("decisions", "Why we stopped"),
    ("pareto", "Quality vs cost"),
    ("ablation", "Ablation"),
    ("curves", "Learning curves"),
    ("parallel", "Parameters"),
    ("importance", "Importance"),
    ("cost", "Cost"),
    ("notes", "Notes"),
)


def _section(key: str, body: str) -> str:
    title = dict(_SECTIONS)[key]
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def _figure(make: Callable[[], Any], div_id: str, notes: list[str]) -> str:
    """Draw one figure into a div (plotly.js is loaded once in the page head); failures become a note."""
    try:
        fig = make()
        import plotly.io as pio

        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
        return f'<div class="figure">{div}</div>'
    except Exception as exc:  # a broken figure must not cost the whole report
        logger.warning("figure %s failed: %s", div_id, exc, exc_info=True)
        notes.append(f"figure {div_id} could not be drawn ({type(exc).__name__}: {exc}).")
        return f'<p class="note">Figure unavailable: {esc(type(exc).__name__)}.</p>'


def tower_notes(sweep: dict[str, Any]) -> list[str]:
    """What the table must say about the towers a run used (from ``sweep.json``)."""
    towers = sweep.get("towers") or {}
    notes = [f"WARNING: {w}" for w in sweep.get("warnings", [])]
    if towers.get("text"):
        decoders = ", ".join(towers.get("joint_report_decoder") or []) or "none"
        notes.append(
            f"towers: text {', '.join(towers['text'])}; joint report decoder {decoders}; "
            f"report-generation decoder {towers.get('probe_report_decoder', 'none')}."
        )
    if towers.get("local_towers"):
        notes.append(
            "--local-towers: hub-named towers were swapped for the packaged MiniLM / tiny GPT-2; "
            "these are NOT the paper's towers (MedCPT, DistilGPT2)."
        )
    return notes


def _summary(run: RunData, trials_tbl: pd.DataFrame | None, hours: float) -> str:
    sw, res = run.sweep, run.results
    if "status" in res:
        res = res[res["status"] == "ok"]
    run_ids = sorted(res["run_id"].astype(str).unique()) if "run_id" in res else []
    commits = sorted({str(c)[:10] for c in res.get("git_commit", pd.Series(dtype=str)).dropna()})
    if trials_tbl is not None:
        all_row = trials_tbl.iloc[-1]
        n_trials = int(all_row["total"])
        states = " · ".join(f"{s.lower()} {int(all_row[s])}" for s in ("COMPLETE", "PRUNED", "FAILED"))
    else:
        n_trials, states = int(run.results["trial_id"].nunique()), "unknown (no trials.parquet)"
    kpis = [
        ("run", sw.get("run_id") or ", ".join(run_ids) or "?"),
        ("search space", sw.get("space", "?")),
        ("objective", f"{sw.get('metric', '?')} ({sw.get('mode', '?')})"),
        ("trials", f"{n_trials}"),
        ("compute hours", fmt_num(hours, 1)),
        ("variants", str(res["variant"].nunique())),
        ("pretraining seeds", str(res["seed"].nunique())),
        ("tasks", str(res["task"].nunique())),
    ]
    body = '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in kpis
    )
    body += "</div>"
    meta = [
        f"trial states: {states}",
        f"created {sw.get('created', '?')}",
        f"baseline {sw.get('baseline_variant', '?')}",
    ]
    if commits:
        meta.append("git " + ", ".join(commits[:3]) + (" …" if len(commits) > 3 else ""))
    body += f'<p class="caption">{esc(" · ".join(meta))}</p>'
    if trials_tbl is not None:
        body += '<div class="scroll">' + frame_to_html(trials_tbl, digits={"hours": 1}, default_digits=0) + "</div>"
    return _section("summary", body)


def _others(run: RunData, baseline: str | None) -> str:
    parts = []
    for eval_, metric, title in OTHER_COMPARISONS:
        sub = run.results[(run.results["eval"] == eval_) & (run.results["metric"] == metric)]
        if sub.empty:
            continue
        tbl = comparison_table(run.results, metric=metric, eval=eval_, baseline=baseline)
        parts.append(f"<details><summary>{esc(title)}</summary>{comparison_html(tbl, standalone=False)}</details>")
    return "".join(parts)


def _verdict_summary(table: ComparisonTable) -> str:
    """One caption counting the headline table's verdicts, e.g. "Verdicts vs 'full' …: 2 helps · 7 n.s.".

    The random-init floor's cells are counted apart, as the family they are corrected in.
    """
    if not table.baseline or table.frame.empty:
        return ""
    floor = table.frame["variant"] == RANDOM_INIT
    text = _count_verdicts(table.frame.loc[~floor, "verdict"])
    if not text:
        return ""
    caption = f"Verdicts vs {table.baseline!r} over {table.n_comparisons} Holm-corrected ablation cells: {text}"
    if table.n_floor_comparisons:
        caption += (
            f"; random-init floor, {table.n_floor_comparisons} cells corrected on their own: "
            f"{_count_verdicts(table.frame.loc[floor, 'verdict'])}"
        )
    return f'<p class="caption">{esc(caption)}</p>'


def _count_verdicts(verdicts: pd.Series) -> str:
    words = [verdict_word(str(v)) for v in verdicts]
    return " · ".join(f"{words.count(w)} {w}" for w in ("helps", "hurts", "n.s.", "untested") if words.count(w))


def render_report(run: RunData, table: ComparisonTable, cost: pd.DataFrame) -> str:
    """Assemble the report page for a loaded run.

    Args:
        run: the loaded run directory.
        table: the headline comparison (linear probe, test AUROC).
        cost: :func:`~analysis.tables.cost_per_variant` output.

    Returns:
        A complete HTML document with plotly.js inlined once.
    """
    notes = list(run.notes)
    trials_tbl = trials_summary(run.trials) if run.trials is not None else None
    hours = float(cost["hours_sum"].sum()) if not cost.empty else float("nan")
    body = [_summary(run, trials_tbl, hours)]
    headline = _verdict_summary(table) + comparison_html(table, standalone=False)
    body.append(_section("comparison", headline + _others(run, table.baseline)))
    if (run.run_dir / DECISIONS_FILE).is_file():
        body.append(_decisions(run))
    if run.sweep.get("objectives") and run.trials is not None:
        body.append(_pareto(run, notes))

    if table.frame.empty:
        abl = '<p class="note">No linear-probe results yet.</p>'
    else:
        abl = _figure(lambda: F.plot_ablation_bars(F.ablation_bars(table)), "fig-ablation", notes)
        abl += '<p class="caption">Bars: mean over pretraining seeds, whiskers: 95% t-interval; open markers: '
        abl += "published references. The y axis is zoomed to the data.</p>"
    body.append(_section("ablation", abl))

    curves = F.learning_curves(run.curves, run.trials) if run.curves is not None else None
    if curves is None or not curves.lines:
        body.append(_section("curves", '<p class="note">No learning curves in this run.</p>'))
    else:
        cap = '<p class="caption">One line per trial, coloured by variant; dotted = pruned, dashed = failed.</p>'
        body.append(_section("curves", _figure(lambda: F.plot_learning_curves(curves), "fig-curves", notes) + cap))

    pc = F.parallel_coordinates(run.trials) if run.trials is not None and "objective" in run.trials else None
    if pc is None or not pc.trial_ids or not pc.axes:
        par = '<p class="note">No completed trials with varying parameters to show.</p>'
    else:
        par = _figure(lambda: F.plot_parallel_coordinates(pc), "fig-parallel", notes)
        par += f'<p class="caption">{len(pc.trial_ids)} completed trials; colour = objective.</p>'
    body.append(_section("parallel", par))

    imp = F.importance_data(run.importance) if run.importance is not None else None
    if imp is None or not imp.params:
        body.append(_section("importance", '<p class="note">No importance.csv for this run.</p>'))
    else:
        body.append(_section("importance", _figure(lambda: F.plot_importance(imp), "fig-importance", notes)))

    if cost.empty:
        body.append(_section("cost", '<p class="note">No compute hours recorded.</p>'))
    else:
        fig = _figure(lambda: F.plot_cost(F.cost_bars(cost)), "fig-cost", notes)
        body.append(_section("cost", fig + frame_to_html(cost, digits={"n_trials": 0, "hours_mean": 2})))

    notes += [n for n in table.notes if n not in notes]
    items = "".join(f"<li>{esc(n)}</li>" for n in notes) or "<li>Nothing missing.</li>"
    body.append(_section("notes", f'<ul class="notes">{items}</ul>'))
    return _page(run, "\n".join(body))


def _decisions(run: RunData) -> str:
    """The ``decide`` sweep's last reading per variant: decision, why it stopped, cost, test AUROC."""
    try:
        decisions = pd.read_parquet(run.run_dir / DECISIONS_FILE)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        return _section("decisions", f'<p class="note">{esc(DECISIONS_FILE)} is unreadable: {esc(exc)}</p>')
    decide = run.sweep.get("decide", {})
    table = why_we_stopped(
        decisions, run.trials, run.results, baseline=run.sweep.get("baseline_variant") or "",
        max_seeds=int(decide.get("max_seeds", 0)),
    )  # fmt: skip
    caption = (
        f'<p class="caption">Decided on the validation objective only (mean validation macro AUROC of the probe '
        f"plan), margin {esc(decide.get('margin', '?'))}, family-wise alpha {esc(decide.get('alpha', '?'))} over "
        "every look: p_holm is the repeated p-value (over the looks so far) Holm-adjusted over the variants, "
        "&quot;matters&quot; when it is &lt;= alpha; equivalence likewise with p_equiv_holm. p_decision is the "
        f"predicted probability of a decision by max_seeds ({esc(decide.get('max_seeds', '?'))} pairs); under "
        f"futility ({esc(decide.get('futility', 0))}) the variant stopped as undecidable within budget. A seed whose "
        "trial failed on every retry is named and never paired. delta and its 95% interval are variant minus "
        "baseline; test_auroc is reported after the fact, never used to decide. "
        f"{len(decisions)} readings in {esc(DECISIONS_FILE)}.</p>"
    )
    digits = {"n_pairs": 0, "seeds_run": 0, "gpu_hours": 3, "p_decision": 3}
    return _section("decisions", frame_to_html(table, digits=digits, default_digits=4) + caption)


def _pareto(run: RunData, notes: list[str]) -> str:
    """A multi-objective study's trials: the Pareto front in colour, dominated trials greyed out."""
    objectives = list(run.sweep["objectives"])
    front = pareto_front(run.trials, objectives)
    if front.empty:
        return _section("pareto", '<p class="note">No completed trial with every objective yet.</p>')
    on_front = int((~front["dominated"]).sum())
    fig = _figure(lambda: plot_pareto(front, objectives), "fig-pareto", notes)
    caption = (
        f'<p class="caption">Objectives {esc(", ".join(objectives))}: {on_front} of {len(front)} completed '
        "trials are on the Pareto front (no other trial is at least as good on every objective and better on "
        "one); dominated trials are grey.</p>"
    )
    rows = front.assign(dominated=front["dominated"].map({True: "dominated", False: "front"}))
    return _section("pareto", fig + caption + frame_to_html(rows, default_digits=4))


def _page(run: RunData, body: str) -> str:
    try:
        from plotly.offline import get_plotlyjs

        head = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    except ImportError:
        head = ""
        logger.warning("plotly is not installed: the report has tables only")
    run_id = run.sweep.get("run_id") or run.run_dir.name
    toc = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in _SECTIONS if f'<section id="{k}">' in body)
    top = (
        f'<header class="top"><h1>deri-sweep report · {esc(run_id)}</h1>'
        f'<div class="sub">{esc(run.run_dir.resolve())}</div><nav class="toc">{toc}</nav></header>'
    )
    return page(f"deri-sweep report {run_id}", f"{top}<main>{body}</main>", head_extra=head)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the report and tables for a run directory.

    Args:
        run_dir: the run directory (see :func:`analysis._io.load_run`).
        out_dir: where to write; defaults to ``run_dir``.

    Returns:
        Written paths: ``report``, ``comparison_md``, ``comparison_csv``, ``comparison_html``, ``cost_csv``
        and, when trials exist, ``trials_csv``.

    Raises:
        RunDirError: the run directory or its ``results.parquet`` is missing or unreadable.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir
    tables_dir = out / "tables"
    table = comparison_table(run.results, baseline=run.sweep.get("baseline_variant"))
    table = dataclasses.replace(table, notes=(*table.notes, *tower_notes(run.sweep)))
    paths = write_comparison(table, tables_dir)
    paths.update(write_reference_table(run.results, tables_dir, baseline=run.sweep.get("baseline_variant")))
    cost = cost_per_variant(run.trials, run.results)
    write_text(tables_dir / "cost.csv", cost.to_csv(index=False, float_format="%.6g"))
    paths["cost_csv"] = tables_dir / "cost.csv"
    if run.trials is not None:
        write_text(tables_dir / "trials_summary.csv", trials_summary(run.trials).to_csv(index=False))
        paths["trials_csv"] = tables_dir / "trials_summary.csv"
    write_text(out / "report.html", render_report(run, table, cost))
    paths["report"] = out / "report.html"
    logger.info("wrote %s", paths["report"])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad run directory)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Build the offline HTML report (report.html) and tables/ for a deri-sweep run directory.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory containing results.parquet")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        paths = build_report(args.run_dir, args.out)
    except RunDirError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"report: {paths['report']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

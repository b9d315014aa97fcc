"""Analysis of deri-sweep runs: tables, figures and an offline HTML report.

Reads the files a sweep writes into its run directory (``results.parquet``,
``trials.parquet``, ``curves.parquet``, ``importance.csv``, ``sweep.json``) and
never imports the orchestration (Ray, Optuna). Entry point::

    python -m analysis.report RUN_DIR [--out DIR]
"""

from __future__ import annotations

from typing import Any

from analysis._io import RunData, RunDirError, load_run
from analysis._table_render import write_comparison
from analysis.published import published_frame, published_rows
from analysis.tables import ComparisonTable, comparison_table, cost_per_variant, trials_summary

__all__ = [
    "ComparisonTable",
    "RunData",
    "RunDirError",
    "build_report",
    "comparison_table",
    "cost_per_variant",
    "load_run",
    "published_frame",
    "published_rows",
    "trials_summary",
    "write_comparison",
]


def __getattr__(name: str) -> Any:
    # ``build_report`` is loaded lazily so ``python -m analysis.report`` does not import the module twice.
    if name == "build_report":
        from analysis.report import build_report

        return build_report
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

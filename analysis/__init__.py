"""Analysis of deri-sweep runs: tables, figures and an offline HTML report.

Reads the files a sweep writes into its run directory (``results.parquet``,
``trials.parquet``, ``curves.parquet``, ``importance.csv``, ``sweep.json``) and
never imports the orchestration (Ray, Optuna). Entry point::

    python -m analysis.report RUN_DIR [--out DIR]
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it. Loaded on first use (PEP 562), so importing one
#: submodule (``analysis.decisions`` from a space, ``analysis.report`` as a program) does not
#: import them all.
_EXPORTS = {
    "ComparisonTable": "analysis.tables",
    "RunData": "analysis._io",
    "RunDirError": "analysis._io",
    "build_report": "analysis.report",
    "comparison_table": "analysis.tables",
    "cost_per_variant": "analysis.tables",
    "load_run": "analysis._io",
    "published_frame": "analysis.published",
    "published_rows": "analysis.published",
    "trials_summary": "analysis.tables",
    "write_comparison": "analysis._table_render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

"""Read a run directory written by the sweep (files only: nothing from the orchestration is imported)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from deri_sweep.common.result_files import (
    CURVE_COLUMNS,
    CURVES_FILE,
    REQUIRED_RESULT_COLUMNS,
    REQUIRED_TRIAL_COLUMNS,
    TRIALS_FILE,
)
from deri_sweep.common.storage import atomic_write_text

__all__ = ["REQUIRED_RESULT_COLUMNS", "RunData", "RunDirError", "load_run", "write_text"]

logger = logging.getLogger(__name__)

_OPTIONAL = {
    TRIALS_FILE: REQUIRED_TRIAL_COLUMNS,
    CURVES_FILE: CURVE_COLUMNS,
    "importance.csv": ("param", "importance"),
}


class RunDirError(Exception):
    """The run directory or its ``results.parquet`` is missing or unreadable (message names path and fix)."""


@dataclass(frozen=True)
class RunData:
    """Everything the report reads from one run directory.

    Attributes:
        run_dir: the directory.
        results: tidy results (``results.parquet``).
        trials: one row per trial, or None when ``trials.parquet`` is absent/unreadable.
        curves: learning curves, or None.
        importance: hyper-parameter importances, or None.
        sweep: the parsed ``sweep.json`` ({} when absent).
        notes: what was missing or skipped, for the report.
    """

    run_dir: Path
    results: pd.DataFrame
    trials: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    importance: pd.DataFrame | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def load_run(run_dir: str | Path) -> RunData:
    """Load a run directory; optional files degrade to None with a note.

    Args:
        run_dir: folder holding ``results.parquet`` (and optionally ``trials.parquet``,
            ``curves.parquet``, ``importance.csv``, ``sweep.json``).

    Returns:
        The loaded run.

    Raises:
        RunDirError: ``run_dir`` is not a directory, or ``results.parquet`` is missing,
            unreadable or lacks required columns.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(
            f"run directory not found: {run_dir.resolve()} — pass the folder the sweep wrote "
            "(it contains results.parquet), e.g. `python -m analysis.report runs/<run_id>`."
        )
    res_path = run_dir / "results.parquet"
    if not res_path.is_file():
        raise RunDirError(
            f"missing {res_path.resolve()} — the sweep writes it once trials have been evaluated; "
            "wait for (or rerun) result collection for this run, or point at the right run directory."
        )
    try:
        results = pd.read_parquet(res_path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise RunDirError(f"cannot read {res_path.resolve()}: {exc} — regenerate it from the sweep.") from exc
    missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise RunDirError(f"{res_path.resolve()} lacks columns {missing}; it does not follow the results contract.")

    notes: list[str] = []
    loaded: dict[str, pd.DataFrame | None] = {}
    for name, cols in _OPTIONAL.items():
        path = run_dir / name
        loaded[name] = None
        if not path.is_file():
            notes.append(f"{name} is absent: the parts that need it are skipped.")
            continue
        try:
            frame = _read(path)
        except Exception as exc:  # degrade, never crash, on a damaged optional file
            notes.append(f"{name} could not be read ({type(exc).__name__}); skipped.")
            logger.warning("cannot read %s: %s", path, exc)
            continue
        lacking = [c for c in cols if c not in frame.columns]
        if lacking:
            notes.append(f"{name} lacks columns {lacking}; skipped.")
            continue
        loaded[name] = frame

    sweep: dict[str, Any] = {}
    sweep_path = run_dir / "sweep.json"
    if sweep_path.is_file():
        try:
            sweep = json.loads(sweep_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            notes.append(f"sweep.json could not be parsed ({exc.__class__.__name__}); run metadata is incomplete.")
    else:
        notes.append("sweep.json is absent: run metadata (space, baseline variant) is unknown.")
    logger.info("loaded %s: %d result rows", run_dir, len(results))
    return RunData(
        run_dir,
        results,
        loaded["trials.parquet"],
        loaded["curves.parquet"],
        loaded["importance.csv"],
        sweep if isinstance(sweep, dict) else {},
        tuple(notes),
    )


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically and make it world-readable (the temp file behind it is created 0600).

    Returns:
        The path written.
    """
    path = Path(path)
    atomic_write_text(path, text)
    path.chmod(0o644)
    return path

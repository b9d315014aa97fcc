"""Train/val/test splits, training fractions and user-supplied split files.

Default splits per format (spec sections 1 and 8):

- ``ptbxl``: ``strat_fold`` 1-8 train, 9 val, 10 test (the folds already keep
  each patient in one fold);
- ``cpsc2018``, ``csn``, ``wfdb-dir``: seeded random 7:1:2, grouped by subject
  where the dataset knows subjects;
- ``mimic``: 2% of SUBJECTS to val, the rest to train (no test split).

A user may instead supply split files in the format the DERI/MERL authors
publish: one CSV per split with a record-id column and one 0/1 column per
label; label columns are aligned BY NAME across the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """A split file or split request that cannot be used; the message names the file."""


def _groups(index: pd.DataFrame) -> pd.Series:
    """Grouping key per record: the subject where known, else the record itself."""
    subject = index["subject_id"].astype("string")
    return subject.fillna("record:" + index["record_id"].astype(str))


def random_split(index: pd.DataFrame, seed: int, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> pd.Series:
    """Seeded random split, grouped by subject so no subject spans two splits.

    Args:
        index: one row per record with ``record_id`` and ``subject_id`` (may be null).
        seed: RNG seed; the same seed and records give the same split.
        ratios: train/val/test fractions of the GROUPS (subjects or records).

    Returns:
        Series of ``"train" | "val" | "test"`` aligned with ``index``.
    """
    groups = _groups(index)
    unique = np.array(sorted(groups.unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = round(ratios[0] * len(unique))
    n_val = round(ratios[1] * len(unique))
    names = np.empty(len(unique), dtype=object)
    names[order[:n_train]] = "train"
    names[order[n_train : n_train + n_val]] = "val"
    names[order[n_train + n_val :]] = "test" if ratios[2] > 0 else "val"
    lookup = dict(zip(unique, names, strict=True))
    return groups.map(lookup).astype(str)


def fold_split(strat_fold: pd.Series) -> pd.Series:
    """PTB-XL folds: 1-8 train, 9 val, 10 test.

    Args:
        strat_fold: integer fold per record (1..10).

    Returns:
        Series of split names aligned with ``strat_fold``.
    """
    folds = pd.to_numeric(strat_fold, errors="coerce")
    out = pd.Series("train", index=strat_fold.index, dtype=object)
    out[folds == 9] = "val"
    out[folds == 10] = "test"
    out[folds.isna()] = "unused"
    return out.astype(str)


def default_split(fmt: str, index: pd.DataFrame, seed: int) -> pd.Series:
    """The project's default split for a dataset format (see module docstring).

    Args:
        fmt: reader format name.
        index: one row per record; ``strat_fold`` is needed for ptbxl.
        seed: seed for the random splits.

    Returns:
        Series of split names aligned with ``index``.
    """
    if fmt == "ptbxl":
        return fold_split(index["strat_fold"])
    if fmt == "mimic":
        return random_split(index, seed, ratios=(0.98, 0.02, 0.0))
    return random_split(index, seed)


def training_subset(index: pd.DataFrame, fraction: float, seed: int, split: str = "train") -> np.ndarray:
    """Rows of the train split used at a given training-data fraction.

    The draw is a fixed-seed permutation, so the 1% subset is inside the 10%
    one, and both are the same on every run.

    Args:
        index: cache index with a ``split`` column.
        fraction: in (0, 1]; at least one record is always kept.
        seed: RNG seed of the draw.
        split: which split to subsample.

    Returns:
        Sorted positional row numbers (int64) into ``index``.
    """
    if not 0 < fraction <= 1:
        raise SplitError(f"training fraction must be in (0, 1], got {fraction}")
    rows = np.flatnonzero(index["split"].to_numpy() == split)
    n = max(1, round(fraction * len(rows)))
    perm = np.random.default_rng(seed).permutation(len(rows))
    return np.sort(rows[perm[:n]])


def normalise_id(value: object) -> str:
    """Canonical text of a record id, so ``1``, ``"00001"`` and ``1.0`` match."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return Path(text).stem if "/" in text else text
    return str(int(number)) if number.is_integer() else text


def read_split_files(files: dict[str, Path], id_column: str) -> tuple[pd.DataFrame, list[str]]:
    """Read user split files (one CSV per split) and align their labels by name.

    Args:
        files: split name (train/val/test) -> CSV path.
        id_column: the column holding record ids (e.g. ``ecg_id``, ``Recording``).

    Returns:
        ``(table, classes)``: one row per record with ``key`` (normalised id),
        ``split`` and one 0/1 column per class, and the class names in the order
        of the train file (or the first file given).

    Raises:
        SplitError: unknown split name, missing file or id column, label
            columns that differ between files, non-0/1 labels, or a record in
            two splits. The message names the file.
    """
    if not files:
        raise SplitError("no split files given")
    bad = sorted(set(files) - set(SPLITS))
    if bad:
        raise SplitError(f"unknown split name(s) {bad}; use train=, val=, test=")
    tables: dict[str, pd.DataFrame] = {}
    for split, path in files.items():
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError) as exc:
            raise SplitError(f"{path}: cannot read split file ({exc})") from exc
        if id_column not in table.columns:
            raise SplitError(f"{path}: no id column {id_column!r}; columns are {list(table.columns)}")
        tables[split] = table
    first = "train" if "train" in tables else next(iter(tables))

    def label_columns(table: pd.DataFrame) -> list[str]:
        return [c for c in table.columns if c != id_column and set(pd.unique(table[c].dropna())) <= {0, 1}]

    classes = label_columns(tables[first])
    if not classes:
        raise SplitError(f"{files[first]}: no 0/1 label columns besides {id_column!r}")
    parts = []
    for split, table in tables.items():
        missing = [c for c in classes if c not in table.columns]
        if missing:
            raise SplitError(f"{files[split]}: label column(s) {missing} found in {files[first]} are missing")
        values = table[classes]
        if not values.isin([0, 1]).all().all():
            raise SplitError(f"{files[split]}: label columns must hold only 0/1")
        part = values.astype(np.uint8).copy()
        part.insert(0, "split", split)
        part.insert(0, "key", table[id_column].map(normalise_id))
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    dup = table["key"][table["key"].duplicated()]
    if len(dup):
        raise SplitError(f"record(s) {sorted(dup.unique())[:5]} appear in more than one split file")
    log.info("split files: %s", {s: int((table["split"] == s).sum()) for s in tables})
    return table, classes

"""Build a training cache from a dataset root (``python -m deri_sweep.data.prepare``).

Records are read in parallel worker processes, a shard of ``shard_size``
records at a time. Each finished shard is written atomically (temporary file,
then rename; the shard's parquet part is written last and marks it done), so a
crashed or interrupted build resumes where it stopped when the same command is
run again. A cache directory built with other settings is refused rather than
mixed. The layout is described in :mod:`deri_sweep.data.cache`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deri_sweep.common.storage import (
    LockHeld,
    StorageError,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    check_writable,
    file_lock,
    remove_partial_writes,
)
from deri_sweep.data.cache import CACHE_VERSION, GAIN_PER_MV, CacheError, label_column
from deri_sweep.data.parallel import map_chunks
from deri_sweep.data.readers import Reader, open_reader
from deri_sweep.data.readers.base import read_checked
from deri_sweep.data.record import Record, RecordError
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.splits import default_split, normalise_id, read_split_files

log = logging.getLogger(__name__)

#: Skip reasons that filter records by design (not unreadable data): they do
#: not count towards ``max_skip_fraction``.
FILTER_REASONS = frozenset({"short_report", "no_report", "no_labels", "not_in_split_files"})


#: Default thresholds of the ``clipped`` and ``interpolated`` warnings (fractions of a record's samples).
WARN_CLIPPED_FRACTION = 0.001
WARN_INTERPOLATED_FRACTION = 0.05


class TooManySkipped(RuntimeError):
    """More unreadable records than allowed; the message summarises the reasons."""


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Settings of one cache build (all but workers, max_skip_fraction and progress go into the fingerprint).

    Attributes:
        fmt: reader format (``mimic``, ``ptbxl``, ``cpsc2018``, ``csn``, ``wfdb-dir``).
        signal: conditioning options (rate, length, window, policies).
        shard_size: records per shard.
        seed: seed of the random splits.
        split_files: optional split name -> CSV of user-supplied splits.
        split_id_column: id column of the split files.
        split_task: label-set name given to the split files' label columns.
        limit: read only the first N records (for quick looks); 0 = all.
        workers: parallel reader processes.
        max_skip_fraction: stop when more than this fraction of records is unreadable.
        progress: show a progress bar.
        warn_clipped_fraction: a kept record with more than this fraction of its
            cached samples clipped to the int16 range is named in ``warnings.csv``.
        warn_interpolated_fraction: a kept record with more than this fraction
            of the read samples of its live leads interpolated (NaN/inf) is named
            in ``warnings.csv``. Both go into the fingerprint only when not the
            default, so caches built before they existed stay valid.
    """

    fmt: str
    signal: SignalOptions = dataclasses.field(default_factory=SignalOptions)
    shard_size: int = 256
    seed: int = 0
    split_files: tuple[tuple[str, str], ...] = ()
    split_id_column: str = "ecg_id"
    split_task: str = "task"
    limit: int = 0
    workers: int = 1
    max_skip_fraction: float = 0.05
    progress: bool = True
    warn_clipped_fraction: float = WARN_CLIPPED_FRACTION
    warn_interpolated_fraction: float = WARN_INTERPOLATED_FRACTION

    def __post_init__(self) -> None:
        problems = []
        if self.shard_size < 1:
            problems.append(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if self.limit < 0:
            problems.append(f"--limit must be >= 0 (0: all records), got {self.limit}")
        for flag, value in (
            ("--warn-clipped-fraction", self.warn_clipped_fraction),
            ("--warn-interpolated-fraction", self.warn_interpolated_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                problems.append(f"{flag} must lie in [0, 1], got {value}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            problems.append(f"--max-skip-fraction must lie in [0, 1], got {self.max_skip_fraction}")
        for name, path in self.split_files:
            if not Path(path).is_file():
                problems.append(f"split file {path} not found (--split-files {name}={path})")
        if problems:
            raise ValueError("; ".join(problems))


def _fingerprint(root: Path, opts: PrepareOptions) -> dict[str, Any]:
    split_hashes = {name: hashlib.sha1(Path(path).read_bytes()).hexdigest() for name, path in opts.split_files}
    return _as_json(
        {
            "version": CACHE_VERSION,
            "format": opts.fmt,
            "root": str(root.resolve()),
            "signal": dataclasses.asdict(opts.signal),
            "shard_size": opts.shard_size,
            "seed": opts.seed,
            "gain_per_mv": GAIN_PER_MV,
            "split_files": split_hashes,
            "split_id_column": opts.split_id_column if opts.split_files else None,
            "split_task": opts.split_task if opts.split_files else None,
            "limit": opts.limit,
            **_warn_settings(opts),
        }
    )


def _warn_settings(opts: PrepareOptions) -> dict[str, Any]:
    """The warning thresholds that differ from the defaults (those change warnings.csv, so the cache)."""
    warn = {
        "warn_clipped_fraction": (opts.warn_clipped_fraction, WARN_CLIPPED_FRACTION),
        "warn_interpolated_fraction": (opts.warn_interpolated_fraction, WARN_INTERPOLATED_FRACTION),
    }
    return {name: value for name, (value, default) in warn.items() if value != default}


def _as_json(value: dict[str, Any]) -> dict[str, Any]:
    """The value as it reads back from cache.json (tuples become lists), so that the two compare equal."""
    return json.loads(json.dumps(value))


def clipped_samples(signal: np.ndarray) -> int:
    """Samples of a (12, N) mV signal that the int16 cache clips (beyond +-32767 / GAIN_PER_MV mV)."""
    return int((np.abs(np.rint(signal * GAIN_PER_MV)) > 32767).sum())


def quality_warnings(
    rec: Record,
    key: str,
    clipped: int,
    window: int,
    warn_clipped: float = WARN_CLIPPED_FRACTION,
    warn_interpolated: float = WARN_INTERPOLATED_FRACTION,
) -> list[tuple[str, str]]:
    """The record's own warnings plus ``clipped`` and ``interpolated`` above their thresholds.

    Args:
        rec: the record as read.
        key: its key, for the message.
        clipped: samples the cache clips (:func:`clipped_samples`).
        window: samples kept per lead (``SignalOptions.window``).
        warn_clipped: fraction of the kept samples above which clipping is named.
        warn_interpolated: fraction of the live leads' read samples above which interpolation is named.

    Returns:
        ``(reason, detail)`` pairs for ``warnings.csv``.
    """
    warnings = list(rec.warnings)
    kept = rec.signal.shape[0] * min(window, rec.signal.shape[1])
    if kept and clipped > warn_clipped * kept:
        warnings.append(
            (
                "clipped",
                f"record {key}: {clipped} of {kept} cached samples ({clipped / kept:.1%}) lie outside "
                f"+-{32767 / GAIN_PER_MV:g} mV and are clipped (limit {warn_clipped:.1%}, "
                "--warn-clipped-fraction); a wrong gain or baseline in the header?",
            )
        )
    if rec.interpolated_fraction > warn_interpolated:
        warnings.append(
            (
                "interpolated",
                f"record {key}: {rec.interpolated_fraction:.1%} of the samples of its live leads are NaN/inf "
                f"and were interpolated (limit {warn_interpolated:.1%}, --warn-interpolated-fraction)",
            )
        )
    return warnings


def build_shard(
    reader: Reader,
    keys: list[str],
    number: int,
    *,
    shard_dir: Path,
    warn_clipped: float = WARN_CLIPPED_FRACTION,
    warn_interpolated: float = WARN_INTERPOLATED_FRACTION,
) -> tuple[int, int, Counter]:
    """Read ``keys`` and write shard ``number`` (signals, record table, skips).

    Args:
        reader: the dataset reader.
        keys: record keys of this shard.
        number: shard number.
        shard_dir: the cache's ``shards/`` directory.
        warn_clipped: warn about a record with more than this fraction of its window clipped.
        warn_interpolated: warn about a record with more than this fraction of its live samples interpolated.

    Returns:
        ``(records kept, records skipped, skip reasons)``.
    """
    signals, rows, skips = [], [], []
    for key in keys:
        try:
            rec = read_checked(reader, key)
        except RecordError as exc:
            skips.append({"record_id": key, "reason": exc.reason, "detail": exc.detail})
            continue
        scaled = np.rint(rec.signal * GAIN_PER_MV)
        clipped = int((np.abs(scaled) > 32767).sum())
        signals.append(np.clip(scaled, -32767, 32767).astype(np.int16))
        warnings = quality_warnings(rec, key, clipped, reader.options.window, warn_clipped, warn_interpolated)
        rows.append(
            {
                "key": key,
                "record_id": rec.record_id,
                "subject_id": rec.subject_id,
                "row": len(rows),
                "labels": json.dumps({k: list(v) for k, v in rec.labels.items()}),
                "report": rec.report,
                "fs": float(rec.fs),
                "n_samples": int(rec.n_samples),
                "repaired": int(rec.repaired),
                "degraded": bool(rec.degraded),
                "clipped": clipped,
                "meta": json.dumps(rec.meta, default=str),
                "warnings": json.dumps([list(w) for w in warnings]),
            }
        )
    length = reader.options.length
    stack = np.stack(signals) if signals else np.zeros((0, 12, length), np.int16)
    stem = shard_dir / f"shard_{number:05d}"
    digest = hashlib.sha256()
    with atomic_writer(stem.with_suffix(".npy"), "cache shard") as fh:
        # header + raw bytes: file.write reports a full disk as ENOSPC (np.save's tofile does not)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(stack))
        payload = np.ascontiguousarray(stack).data
        for part in (header.getvalue(), payload):
            fh.write(part)
            digest.update(part)
    size = len(header.getvalue()) + payload.nbytes
    atomic_write_text(stem.with_suffix(".sha256"), json.dumps({"bytes": size, "sha256": digest.hexdigest()}))
    atomic_write_text(
        stem.with_suffix(".skipped.csv"),
        pd.DataFrame(skips, columns=["record_id", "reason", "detail"]).to_csv(index=False),
    )
    table = (
        pd.DataFrame(rows).astype({"subject_id": "string", "report": "string"})
        if rows
        else pd.DataFrame(columns=["key"])
    )
    buffer = table.assign(shard=number).to_parquet(index=False)
    atomic_write_bytes(stem.with_suffix(".parquet"), buffer)
    return len(rows), len(skips), Counter(s["reason"] for s in skips)


LOCK_FILE = ".prepare.lock"


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s build lock: a second ``prepare`` into the same folder is refused, not mixed in.

    The lock is an advisory ``flock`` on ``out/.prepare.lock`` (:func:`file_lock`); the
    kernel drops it when the holder dies, so a killed build never leaves a stale lock.

    Raises:
        CacheError: another process holds the lock.
    """
    try:
        with file_lock(out / LOCK_FILE):
            yield
    except LockHeld as held:
        raise CacheError(
            f"{out}: another prepare ({held.holder}) is building this cache; wait for it to finish "
            "(then this command reuses its result) or pass another --out"
        ) from None


def _check_settings(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Return the existing cache.json when it matches, refuse one that does not."""
    meta = out / "cache.json"
    if not meta.exists():
        if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
            raise CacheError(f"{out}: folder exists and is not a deri-sweep cache; choose another --out")
        return None
    info = json.loads(meta.read_text())
    if info.get("settings") == fingerprint:
        return info
    if overwrite:
        log.warning("%s: removing a cache built with other settings (--overwrite)", out)
        for path in out.iterdir():  # all but the lock this process holds (a new lock file would be a second lock)
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return None
    old = info.get("settings", {})
    diff = "; ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in fingerprint.items() if old.get(k) != v)
    raise CacheError(
        f"{out}: cache was built with other settings ({diff}); pass another --out, or --overwrite to rebuild it"
    )


def _label_matrix(parts: pd.DataFrame, label_sets: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """One uint8 column per class of each label set, from the JSON label lists."""
    decoded = [json.loads(text) for text in parts["labels"]]
    columns = {}
    for name, classes in label_sets.items():
        position = {c: i for i, c in enumerate(classes)}
        matrix = np.zeros((len(decoded), len(classes)), np.uint8)
        for r, labels in enumerate(decoded):
            for c in labels.get(name, ()):
                if c in position:
                    matrix[r, position[c]] = 1
        for i, c in enumerate(classes):
            columns[label_column(name, c)] = matrix[:, i]
    return pd.DataFrame(columns, index=parts.index)


def _finish(out: Path, reader: Reader, opts: PrepareOptions, n_found: int) -> dict[str, Any]:
    """Merge shard parts into index.parquet, reports.parquet and skipped.csv."""
    shard_dir = out / "shards"
    parts = [pd.read_parquet(p) for p in sorted(shard_dir.glob("shard_*.parquet"))]
    index = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    skipped = pd.concat(
        [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(shard_dir.glob("shard_*.skipped.csv"))],
        ignore_index=True,
    )
    if index is None:
        index = pd.DataFrame(
            columns=["key", "record_id", "subject_id", "labels", "report", "shard", "row", "meta", "warnings"]
        )
    label_sets = {k: tuple(v) for k, v in reader.label_sets.items()}
    meta = [json.loads(m) for m in index["meta"]]
    if "strat_fold" in (meta[0] if meta else {}):
        index["strat_fold"] = [m.get("strat_fold") for m in meta]
    filtered = []
    if opts.split_files:
        table, classes = read_split_files({s: Path(p) for s, p in opts.split_files}, opts.split_id_column)
        keyed = table.set_index("key")
        ids = index["record_id"].map(normalise_id)
        index["split"] = ids.map(keyed["split"]).fillna("unused").astype(str)
        label_sets = {opts.split_task: tuple(classes)}
        labels = keyed.reindex(ids)[classes].fillna(0).astype(np.uint8)
        labels.columns = [label_column(opts.split_task, c) for c in classes]
        labels.index = index.index
        missing = sorted(set(table["key"]) - set(ids))
        if missing:
            log.warning("%d record(s) of the split files are not in the cache, e.g. %s", len(missing), missing[:3])
    else:
        index["split"] = default_split(opts.fmt, index, opts.seed) if len(index) else []
        labels = _label_matrix(index, label_sets)
        if label_sets and len(index):
            keep = labels.to_numpy().any(axis=1)
            for key, meta_text in zip(index.loc[~keep, "key"], index.loc[~keep, "meta"], strict=True):
                filtered.append({"record_id": key, "reason": "no_labels", "detail": _no_labels(label_sets, meta_text)})
            index, labels = index[keep], labels[keep]
    warnings = [
        {"record_id": rid, "reason": reason, "detail": detail}
        for rid, text in zip(index["record_id"], index["warnings"], strict=True)
        for reason, detail in json.loads(text)
    ]
    reports = sorted(set(index["report"].dropna()))
    report_ids = {text: i for i, text in enumerate(reports)}
    index = index.assign(report_id=index["report"].map(report_ids).fillna(-1).astype(np.int64))
    index = pd.concat([index.drop(columns=["labels", "report", "key", "warnings"]), labels], axis=1)
    index = index.reset_index(drop=True)
    skipped = pd.concat([skipped, pd.DataFrame(filtered, columns=["record_id", "reason", "detail"])], ignore_index=True)
    atomic_write_text(out / "skipped.csv", skipped.to_csv(index=False))
    atomic_write_text(
        out / "warnings.csv", pd.DataFrame(warnings, columns=["record_id", "reason", "detail"]).to_csv(index=False)
    )
    atomic_write_bytes(
        out / "reports.parquet",
        pd.DataFrame({"report_id": np.arange(len(reports), dtype=np.int64), "text": reports}).to_parquet(index=False),
    )
    atomic_write_bytes(out / "index.parquet", index.to_parquet(index=False))
    reasons = Counter(skipped["reason"])
    unreadable = sum(n for r, n in reasons.items() if r not in FILTER_REASONS)
    summary = {
        "records_found": n_found,
        "records_used": len(index),
        "skipped": dict(sorted(reasons.items())),
        "unreadable": unreadable,
        "warnings": dict(sorted(Counter(w["reason"] for w in warnings).items())),
        "degraded": int(index["degraded"].sum()) if len(index) else 0,
        "repaired_samples": int(index["repaired"].sum()) if len(index) else 0,
        "clipped_samples": int(index["clipped"].sum()) if len(index) else 0,
        "splits": {str(k): int(v) for k, v in index["split"].value_counts().sort_index().items()},
        "unique_reports": len(reports),
    }
    described = {k: v for k, v in reader.class_descriptions.items() if k in label_sets}
    shards = {p.name.replace(".sha256", ".npy"): json.loads(p.read_text()) for p in sorted(shard_dir.glob("*.sha256"))}
    return {
        "label_sets": {k: list(v) for k, v in label_sets.items()},
        "class_descriptions": described,
        "summary": summary,
        "shards": shards,
    }


def _no_labels(label_sets: dict[str, tuple[str, ...]], meta_text: str) -> str:
    """Why a record has no label: the sets it has no class of, and the codes that fall outside them."""
    meta = json.loads(meta_text)
    detail = "no class of " + ", ".join(label_sets)
    codes = meta.get("unmapped_codes") or []
    if codes:
        detail += (
            f"; its codes {', '.join(map(str, codes))} are outside the class list ({meta.get('label_source', '#Dx')})"
        )
    return detail


def prepare(root: str | Path, out: str | Path, opts: PrepareOptions, *, overwrite: bool = False) -> dict[str, Any]:
    """Build (or resume, or reuse) the cache of one dataset root.

    Args:
        root: dataset root as released (see ``shared/spec/datasets.md``).
        out: cache directory to create.
        opts: build settings.
        overwrite: rebuild a cache that was built with other settings.

    Returns:
        The cache's ``cache.json`` content (settings, label sets, summary).

    Raises:
        DatasetError: the root is missing or not of this format.
        CacheError: ``out`` holds a cache built with other settings.
        TooManySkipped: more than ``opts.max_skip_fraction`` of the records are
            unreadable; ``skipped.csv`` names each one and its reason.
    """
    root, out = Path(root).expanduser(), Path(out).expanduser()
    reader = open_reader(opts.fmt, root, opts.signal)
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: is a file, not a folder; choose another --out")
    if out.resolve().is_relative_to(root.resolve()):
        raise CacheError(
            f"{out}: the cache folder is inside the dataset root {root}, where readers look for records; "
            "choose an --out outside it"
        )
    fingerprint = _fingerprint(root, opts)
    meta = out / "cache.json"
    if meta.is_file() and json.loads(meta.read_text()).get("settings") == fingerprint:
        info = json.loads(meta.read_text())
        if info.get("complete"):
            log.info("%s: cache is complete and matches; nothing to do", out)
            return info
    check_writable(out, what="cache")
    with _build_lock(out):  # every check that may change the folder runs under the lock
        info = _check_settings(out, fingerprint, overwrite)
        if info is not None and info.get("complete"):
            log.info("%s: cache is complete and matches; nothing to do", out)
            return info
        return _build(reader, root, out, opts, fingerprint)


def _build(reader: Reader, root: Path, out: Path, opts: PrepareOptions, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Build or resume the cache (the caller holds the build lock)."""
    keys = reader.keys()
    if opts.limit:
        keys = keys[: opts.limit]
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    if remove_partial_writes(shard_dir):
        log.info("%s: removed the partial files of an interrupted build", out)
    atomic_write_text(out / "cache.json", json.dumps({"settings": fingerprint, "complete": False}, indent=2))
    chunks = [keys[i : i + opts.shard_size] for i in range(0, len(keys), opts.shard_size)]
    todo = [n for n in range(len(chunks)) if not (shard_dir / f"shard_{n:05d}.parquet").exists()]
    done_records = sum(len(chunks[n]) for n in range(len(chunks)) if n not in set(todo))
    if done_records:
        log.info("%s: resuming, %d of %d shards already built", out, len(chunks) - len(todo), len(chunks))
    work = {n: chunks[n] for n in todo}
    build = functools.partial(
        build_shard,
        shard_dir=shard_dir,
        warn_clipped=opts.warn_clipped_fraction,
        warn_interpolated=opts.warn_interpolated_fraction,
    )
    progress = {"total": len(keys), "initial": done_records, "desc": f"prepare {opts.fmt}"}
    for _ in map_chunks(reader, work, build, workers=opts.workers, progress=opts.progress, **progress):
        pass
    result = _finish(out, reader, opts, len(keys))
    info = {"settings": fingerprint, "complete": True, "signal": dataclasses.asdict(opts.signal), **result}
    summary = result["summary"]
    if summary["records_used"] == 0:
        atomic_write_text(out / "cache.json", json.dumps({**info, "complete": False}, indent=2))
        reasons = ", ".join(f"{r}: {n}" for r, n in summary["skipped"].items()) or "the root lists no record"
        raise CacheError(
            f"{root}: no record is usable ({reasons}); each skipped record is named with its reason in "
            f"{out / 'skipped.csv'}"
        )
    if len(keys) and summary["unreadable"] > opts.max_skip_fraction * len(keys):
        atomic_write_text(out / "cache.json", json.dumps({**info, "complete": False}, indent=2))
        reasons = ", ".join(f"{r}: {n}" for r, n in summary["skipped"].items() if r not in FILTER_REASONS)
        raise TooManySkipped(
            f"{root}: {summary['unreadable']} of {len(keys)} records are unreadable "
            f"(limit {opts.max_skip_fraction:.0%}): {reasons}. Each is listed with its reason in "
            f"{out / 'skipped.csv'}; fix the files, or accept the loss with --max-skip-fraction"
        )
    atomic_write_text(out / "cache.json", json.dumps(info, indent=2))
    log.info("%s: %d records cached, %d skipped", out, summary["records_used"], sum(summary["skipped"].values()))
    return info


def _split_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SPLIT=PATH, e.g. train=ptbxl_super_train.csv")
    return name, path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from deri_sweep.data.readers import READERS, DatasetError

    parser = argparse.ArgumentParser(
        prog="python -m deri_sweep.data.prepare",
        description="Convert a dataset root (as released by PhysioNet) into a deri-sweep training cache: "
        "int16 signal shards, an index of ids/subjects/splits/labels/report ids, and skipped.csv.",
    )
    parser.add_argument("root", type=Path, help="dataset root folder, e.g. ~/data/ptb-xl")
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="layout of the root")
    parser.add_argument("--out", type=Path, required=True, help="cache directory to create (resumed if it exists)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader processes (default: up to 4)"
    )
    parser.add_argument("--shard-size", type=int, default=256, help="records per shard (the unit of resume)")
    parser.add_argument("--fs", type=int, default=500, help="target sampling rate in Hz")
    parser.add_argument("--length", type=int, default=5000, help="samples per record after padding")
    parser.add_argument(
        "--window", type=int, default=5000, help="samples kept before zero-padding (2500: CPSC2018 reference)"
    )
    parser.add_argument("--allow-flat-leads", action="store_true", help="keep records with a constant lead")
    parser.add_argument(
        "--max-nonfinite-fraction", type=float, default=0.5, help="skip a record with more NaN/inf than this"
    )
    parser.add_argument(
        "--max-dead-leads",
        type=int,
        default=2,
        help="skip a record with more leads than this without any finite sample (fewer: zeroed, a warning)",
    )
    parser.add_argument(
        "--min-seconds", type=float, default=4.0, help="skip source records shorter than this (seconds)"
    )
    parser.add_argument(
        "--source-fs-range",
        type=float,
        nargs=2,
        default=(50.0, 10000.0),
        metavar=("LOW", "HIGH"),
        help="sampling rates (Hz) a header may declare; outside: a typo, the record is skipped",
    )
    parser.add_argument(
        "--amplitude-range",
        type=float,
        nargs=2,
        default=(0.05, 30.0),
        metavar=("LOW", "HIGH"),
        help="median lead peak-to-peak amplitude (mV) of a plausible record; outside: wrong gain/units, skipped",
    )
    parser.add_argument(
        "--max-skip-fraction", type=float, default=0.05, help="stop if more records than this are unreadable"
    )
    parser.add_argument(
        "--warn-clipped-fraction",
        type=float,
        default=WARN_CLIPPED_FRACTION,
        help="name a kept record in warnings.csv when more than this fraction of its samples is clipped",
    )
    parser.add_argument(
        "--warn-interpolated-fraction",
        type=float,
        default=WARN_INTERPOLATED_FRACTION,
        help="name a kept record in warnings.csv when more than this fraction of its live samples is interpolated",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random 7:1:2 / 2%%-of-subjects splits")
    parser.add_argument(
        "--split-files", nargs="+", type=_split_arg, default=[], metavar="SPLIT=CSV", help="user split files"
    )
    parser.add_argument("--split-id-column", default="ecg_id", help="record-id column of the split files")
    parser.add_argument("--split-task", default="task", help="label-set name for the split files' label columns")
    parser.add_argument("--limit", type=int, default=0, help="only the first N records (0: all)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild a cache that was built with other settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        signal = SignalOptions(
            fs=args.fs,
            length=args.length,
            window=args.window,
            allow_flat_leads=args.allow_flat_leads,
            max_nonfinite_fraction=args.max_nonfinite_fraction,
            max_dead_leads=args.max_dead_leads,
            min_seconds=args.min_seconds,
            source_fs_range=tuple(args.source_fs_range),
            amplitude_range_mv=tuple(args.amplitude_range),
        )
        opts = PrepareOptions(
            args.format,
            signal,
            args.shard_size,
            args.seed,
            tuple(args.split_files),
            args.split_id_column,
            args.split_task,
            args.limit,
            args.workers,
            args.max_skip_fraction,
            not args.quiet,
            args.warn_clipped_fraction,
            args.warn_interpolated_fraction,
        )
        info = prepare(args.root, args.out, opts, overwrite=args.overwrite)
    except (DatasetError, CacheError, TooManySkipped, StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = len(list((args.out / "shards").glob("shard_*.parquet"))) if (args.out / "shards").is_dir() else 0
        print(
            f"interrupted: {done} shard(s) in {args.out} are complete; run the same command to resume", file=sys.stderr
        )
        return 130
    print(json.dumps(info["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

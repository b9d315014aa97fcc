"""The reader interface and the helpers every dataset reader shares.

A reader turns one dataset's folder, exactly as released, into
:class:`~deri_sweep.data.record.Record` objects. Readers hold only plain data
(paths, dicts, tuples), never open files, so they pickle to worker processes.
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from deri_sweep.data.record import CANONICAL_LEADS, Record, RecordError
from deri_sweep.data.signal import SignalOptions, conform, source_samples_needed
from deri_sweep.data.wfdb_io import Header, parse_header, read_signal

log = logging.getLogger(__name__)


class DatasetError(Exception):
    """A dataset root that is missing or is not in the expected format.

    The message names the root, the file that was expected and how to fix it.
    """


class Reader(ABC):
    """Reads the records of one dataset.

    Attributes:
        format: the format name used by :func:`~deri_sweep.data.readers.open_reader`.
        root: the dataset folder.
        options: how signals are conformed (rate, length, policies).
    """

    format: ClassVar[str]

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        self.root = Path(root).expanduser()
        self.options = options
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"{self.root}: is a file, not a folder; pass the dataset's root folder")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found (format {self.format!r}); {self._download_hint()}")
        #: keys that are listed but unusable for a reason found in the metadata (duplicate id, bad cell);
        #: ``read`` raises the stored error, so they are counted and named like any other skip.
        self._bad: dict[str, RecordError] = {}

    @property
    @abstractmethod
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """Label-set name -> ordered class names (``{}`` for unlabelled data)."""

    @property
    def class_descriptions(self) -> dict[str, dict[str, str]]:
        """Label-set name -> class -> plain-text description (zero-shot prompts)."""
        return {}

    @abstractmethod
    def keys(self) -> list[str]:
        """Every record found, in a stable sorted order (no signal is read)."""

    @abstractmethod
    def read(self, key: str) -> Record:
        """Read one record.

        Args:
            key: one of :meth:`keys`.

        Returns:
            The record with a (12, options.length) float32 signal.

        Raises:
            RecordError: with a named reason and the file concerned.
            KeyError: for a key this reader does not know.
        """

    def _download_hint(self) -> str:
        return "check the path"

    def _bad_key(self, key: str) -> None:
        """Raise the stored metadata error of a key that is listed but unusable (no-op for a good key)."""
        if key in self._bad:
            raise self._bad[key]

    def _require(self, name: str, fix: str) -> Path:
        """Return ``root/name`` or raise a DatasetError naming it and the fix."""
        path = self.root / name
        if not path.exists():
            raise DatasetError(f"{self.root}: no {name} here, so this is not a {self.format} root; {fix}")
        if name.endswith(".csv") and not path.is_file():  # a FIFO would block the read forever
            raise DatasetError(
                f"{path}: is not a regular file (a folder, FIFO or device); replace it by the released file"
            )
        return path

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, options={self.options!r})"


def read_text_file(path: Path, what: str) -> str:
    """Decode a small per-dataset text file (a class list, REFERENCE.csv), naming any encoding problem.

    UTF-8 is expected (a UTF-8 BOM is dropped). A UTF-16 file with a BOM (as
    Excel's "Unicode text" writes) is read as UTF-16, and a file that is not
    UTF-8 but decodes as Windows-1252 (a Windows editor's "ANSI") is read as
    that, each with a warning saying so.

    Args:
        path: the file.
        what: the release it belongs to, for the message.

    Returns:
        The text.

    Raises:
        DatasetError: the file cannot be read or decoded; the message names the
            file, the problem and the fix (re-save it as UTF-8).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: is not a regular file (a folder, FIFO or device); replace it by the released file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    fix = f"re-save it as UTF-8 or download it again from the {what} release"
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path}: starts with a UTF-16 byte-order mark but is not UTF-16 ({exc.reason}); {fix}"
            ) from None
        log.warning("%s: read as UTF-16 (it has a UTF-16 byte-order mark); %s to silence this", path, fix)
        return text
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\x00" in raw:
            raise DatasetError(
                f"{path}: byte {exc.start} is not UTF-8 and the file holds NUL bytes (UTF-16 without a "
                f"byte-order mark?); {fix}"
            ) from None
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: byte {exc.start} is not UTF-8 ({exc.reason}); {fix}") from None
        log.warning(
            "%s: byte %d is not UTF-8; the file is read as Windows-1252 (cp1252) instead; %s to silence this",
            path,
            exc.start,
            fix,
        )
        return text


def read_table(path: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    """Read a metadata CSV of a release as strings; a damaged file is a DatasetError naming it.

    Args:
        path: the CSV file.
        what: the release it belongs to, for the message (e.g. ``"MIMIC-IV-ECG v1.0"``).
        **kwargs: further ``pandas.read_csv`` arguments.

    Returns:
        The table, every cell a string (``""`` for an empty one).

    Raises:
        DatasetError: the file is empty, not CSV, or not UTF-8 (outside the
            columns a reader decodes itself).
    """
    try:
        return pd.read_csv(path, **{"dtype": str, "keep_default_na": False, **kwargs})
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty; download it again from the {what} release") from None
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc}); download it again") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: byte {exc.start} is not UTF-8 ({exc.reason}); download the file again from the {what} release"
        ) from None


def duplicate_rows(ids: pd.Series) -> dict[str, list[int]]:
    """Ids that appear on more than one row: id -> the 1-based data row numbers."""
    rows: dict[str, list[int]] = {}
    for number, value in enumerate(ids, start=1):
        rows.setdefault(str(value).strip(), []).append(number)
    return {k: v for k, v in rows.items() if len(v) > 1}


def parse_age(value: Any) -> int | None:
    """Parse an age field (``"74"``, ``"56.0"``, ``"NaN"``, ``""``) into an int or ``None``."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else None
        return parse_age(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return round(number) if math.isfinite(number) and number >= 0 else None


def parse_sex(value: Any) -> str | None:
    """Normalise a sex field to ``"Male"``, ``"Female"`` or ``None``."""
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else None
    text = str(value).strip().lower() if value is not None else ""
    if text in ("male", "m"):
        return "Male"
    if text in ("female", "f"):
        return "Female"
    return None


def split_codes(text: str | None) -> list[str]:
    """Split a ``#Dx`` value into codes, tolerating spaces and empty items.

    Args:
        text: e.g. ``"164889003,59118001,"`` or ``"AF,,RBBB"``.

    Returns:
        The distinct non-empty codes in their written order.
    """
    codes: list[str] = []
    for token in (text or "").split(","):
        token = token.strip()
        if token and token not in codes:
            codes.append(token)
    return codes


def header_meta(header: Header) -> dict[str, Any]:
    """Age and sex from a header's comments (``#Age:``/``# Age:``, ``#Sex:``)."""
    return {"age": parse_age(header.comments.get("age")), "sex": parse_sex(header.comments.get("sex"))}


def conform_record(
    signal: np.ndarray,
    lead_names: list[str],
    fs: float,
    options: SignalOptions,
    source: str,
    record_id: str,
    **fields: Any,
) -> Record:
    """Conform a raw signal and wrap it into a :class:`Record`.

    Args:
        signal: (L, N) raw samples in mV, rows named by ``lead_names``.
        lead_names: lead names in row order.
        fs: sampling rate of ``signal`` in Hz.
        options: target rate, length and policies.
        source: file name used in error messages.
        record_id: the dataset's own id.
        **fields: further :class:`Record` fields (labels, report, subject_id, meta); ``total_samples``
            is the whole source length when ``signal`` holds only its start.

    Returns:
        The record, signal (12, options.length) float32.
    """
    total = fields.pop("total_samples", None)
    x, repaired, dead_leads = conform(signal, lead_names, fs, options, source, total)
    interpolated = repaired - len(dead_leads) * signal.shape[1]
    live = (len(CANONICAL_LEADS) - len(dead_leads)) * signal.shape[1]
    if repaired:
        log.debug("%s: repaired %d non-finite samples (dead leads %s)", source, repaired, dead_leads)
    warnings = (
        (("dead_leads", f"{source}: lead(s) {', '.join(dead_leads)} have no finite sample and are zeros"),)
        if dead_leads
        else ()
    )
    return Record(
        record_id=record_id,
        signal=x,
        fs=float(fs),
        n_samples=int(signal.shape[1] if total is None else max(total, signal.shape[1])),
        repaired=repaired,
        degraded=bool(dead_leads),
        warnings=warnings,
        interpolated_fraction=interpolated / live if live else 0.0,
        **fields,
    )


def read_wfdb(path: Path, options: SignalOptions, record_id: str, *, root: Path, **fields: Any) -> Record:
    """Read a WFDB record (header + signal) into a conformed :class:`Record`.

    Age and sex from the header's comments are added to ``meta`` unless
    ``fields["meta"]`` already holds them.

    Args:
        path: the ``.hea`` file.
        options: target rate, length and policies.
        record_id: the dataset's own id.
        root: the dataset root, which every signal file must lie in.
        **fields: further :class:`Record` fields.

    Returns:
        The record, signal (12, options.length) float32.
    """
    inside, top = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    if os.path.commonpath([inside, top]) != top:  # the path comes from a metadata cell
        raise RecordError(
            "outside_root",
            f"{path}: the record's header lies outside the dataset root {root}; fix the metadata's record path",
        )
    header = parse_header(path)
    return record_from_header(header, options, record_id, root=root, **fields)


def record_from_header(header: Header, options: SignalOptions, record_id: str, *, root: Path, **fields: Any) -> Record:
    """Like :func:`read_wfdb` for an already parsed header.

    Only the samples that decide the cached window are read
    (:func:`~deri_sweep.data.signal.source_samples_needed`).
    """
    signal = read_signal(header, root=root, max_samples=source_samples_needed(header.fs, options))
    meta = {**header_meta(header), **fields.pop("meta", {})}
    source = str(header.path)
    return conform_record(
        signal, header.lead_names, header.fs, options, source, record_id, meta=meta, total_samples=header.n_samples,
        **fields,
    )  # fmt: skip


def read_checked(reader: Reader, key: str) -> Record:
    """``reader.read(key)``, with any unforeseen exception turned into a named skip of that record.

    A reader names every failure it knows as a :class:`RecordError`; anything
    else one bad record raises (a bug, or a corruption nobody foresaw) must not
    stop a build of thousands of records either.

    Raises:
        RecordError: the reader's own, or ``read_failed`` naming the exception.
    """
    try:
        return reader.read(key)
    except RecordError:
        raise
    except Exception as exc:  # the safety net of one record
        log.debug("%s: record %s raised", reader.root, key, exc_info=True)
        raise RecordError(
            "read_failed",
            f"{reader.root}: record {key}: unexpected {type(exc).__name__} ({exc}); the record is skipped, "
            "please report this with the file",
        ) from None


def unknown_key(reader: Reader, key: str) -> KeyError:
    """The KeyError raised for a key a reader does not have."""
    return KeyError(f"{key!r} is not a record of the {reader.format} dataset at {reader.root}")


__all__ = [
    "DatasetError",
    "Reader",
    "RecordError",
    "conform_record",
    "duplicate_rows",
    "header_meta",
    "parse_age",
    "parse_sex",
    "read_checked",
    "read_table",
    "read_text_file",
    "read_wfdb",
    "record_from_header",
    "split_codes",
    "unknown_key",
]

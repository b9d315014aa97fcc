"""MIMIC-IV-ECG v1.0: waveforms paired with machine-written reports (pretraining).

Layout (spec datasets.md): ``record_list.csv`` names each study's record path,
``machine_measurements.csv`` holds its report statements ``report_0..report_17``.
The two are joined on ``study_id`` (never by row position). Leads are mapped
by name (MIMIC writes aVF before aVL).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from deri_sweep.data.readers.base import DatasetError, Reader, duplicate_rows, read_table, read_wfdb, unknown_key
from deri_sweep.data.record import Record, RecordError, clean_text
from deri_sweep.data.signal import SignalOptions

log = logging.getLogger(__name__)

#: Reports with fewer words than this are dropped (spec section 1).
MIN_REPORT_WORDS = 4
N_REPORT_COLUMNS = 18
#: Longest report kept (characters); a longer one is cut, and the record named in warnings.csv.
MAX_REPORT_CHARS = 2000

_STRIP_CHARS = " *=-"
_WHITESPACE = re.compile(r"[\r\n\t]")
_SURROGATE = re.compile("[\udc80-\udcff]")


def clean_report(statements: list[str]) -> str:
    """:func:`clean_report_counted` without the count of cut characters."""
    return clean_report_counted(statements)[0]


def clean_report_counted(statements: list[str]) -> tuple[str, int]:
    """Turn machine statements into one cleaned report (spec section 1).

    Each statement has newlines/tabs turned into spaces, leading and trailing
    spaces, ``*``, ``=`` and ``-`` stripped and ``EKG``/``ekg`` replaced by
    ``ECG``/``ecg``; empty statements are dropped, the rest joined with ``". "``,
    lower-cased and ended with ``"."``.

    Args:
        statements: raw statements, e.g. ``["Sinus rhythm", "", "*** Abnormal EKG ***"]``.

    Control characters (NUL, escape, ...) are removed, and a report longer than
    :data:`MAX_REPORT_CHARS` is cut there.

    Returns:
        ``(report, characters cut)``, the report e.g. ``"sinus rhythm. abnormal
        ecg."``; ``""`` when no statement is left.
    """
    parts: list[str] = []
    for statement in statements:
        if not isinstance(statement, str):
            continue
        text = clean_text(_WHITESPACE.sub(" ", statement), len(statement))[0].strip(_STRIP_CHARS)
        text = text.replace("EKG", "ECG").replace("ekg", "ecg")
        if text:
            parts.append(text)
    if not parts:
        return "", 0
    return clean_text(". ".join(parts).lower() + ".", MAX_REPORT_CHARS)


class MimicReader(Reader):
    """Reader of MIMIC-IV-ECG v1.0. Keys are study ids; no label sets."""

    format = "mimic"

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        super().__init__(root, options)
        fix = "download MIMIC-IV-ECG v1.0 from PhysioNet (credentialed) or pass the right --format"
        record_list = self._require("record_list.csv", fix)
        measurements = self._require("machine_measurements.csv", fix)
        records = read_table(record_list, "MIMIC-IV-ECG v1.0")
        missing = {"subject_id", "study_id", "path"} - set(records.columns)
        if missing:
            raise DatasetError(f"{record_list}: columns {sorted(missing)} missing; is this MIMIC-IV-ECG v1.0?")
        times = records["ecg_time"] if "ecg_time" in records.columns else [""] * len(records)
        self._records: dict[str, tuple[str, str, str]] = {}
        for study, subject, path, time in zip(
            records["study_id"], records["subject_id"], records["path"], times, strict=True
        ):
            self._records.setdefault(study.strip(), (subject.strip(), path.strip(), time.strip()))
        for study, rows in duplicate_rows(records["study_id"]).items():
            self._bad[study] = RecordError(
                "duplicate_id", f"{record_list}: study_id {study} is on data rows {rows}; which one is meant is unclear"
            )
        self._reports = self._load_reports(measurements)
        self._keys = sorted(self._records)
        log.info("mimic %s: %d studies, %d with a report row", self.root, len(self._keys), len(self._reports))

    def _download_hint(self) -> str:
        return "download MIMIC-IV-ECG v1.0 from PhysioNet (credentialed access) and pass its folder"

    def _load_reports(self, path: Path) -> dict[str, str]:
        """Clean every study's statements once: study_id -> report.

        A row whose statements are not valid UTF-8, or a study with two different
        rows, makes that study a ``bad_report`` skip naming the file and row.
        """
        head = read_table(path, "MIMIC-IV-ECG v1.0", nrows=0).columns
        columns = [c for c in (f"report_{i}" for i in range(N_REPORT_COLUMNS)) if c in head]
        if "study_id" not in head or not columns:
            raise DatasetError(f"{path}: needs study_id and report_0..report_17 columns; is this MIMIC-IV-ECG v1.0?")
        # undecodable bytes become lone surrogates, so one bad row is named instead of failing the whole file
        table = read_table(
            path, "MIMIC-IV-ECG v1.0", usecols=["study_id", *columns], encoding_errors="surrogateescape", dtype=object
        )
        reports: dict[str, str] = {}
        self._cut: dict[str, int] = {}
        for number, (study, *statements) in enumerate(
            zip(table["study_id"], *(table[c] for c in columns), strict=True), start=1
        ):
            study = study.strip()
            bad = [c for c, text in zip(columns, statements, strict=True) if _SURROGATE.search(text)]
            if bad:
                self._bad.setdefault(
                    study, RecordError("bad_report", f"{path}: data row {number} ({', '.join(bad)}) is not valid UTF-8")
                )
                continue
            report, cut = clean_report_counted(statements)
            if cut:
                self._cut[study] = cut
            if reports.setdefault(study, report) != report:
                self._bad.setdefault(
                    study,
                    RecordError("bad_report", f"{path}: study_id {study} has two different rows (data row {number})"),
                )
        return reports

    @property
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """No label sets: MIMIC-IV-ECG is pretraining data."""
        return {}

    def keys(self) -> list[str]:
        """Study ids (strings) from record_list.csv, sorted."""
        return list(self._keys)

    def report(self, key: str) -> str | None:
        """The cleaned report of a study, or ``None`` without a measurements row."""
        return self._reports.get(key)

    def read(self, key: str) -> Record:
        """Read one study; the report is checked before the signal is read.

        Args:
            key: a study id.

        Returns:
            The record with ``report`` set and ``meta["ecg_time"]``.

        Raises:
            RecordError: ``no_report``, ``short_report`` or any signal reason.
        """
        if key not in self._records:
            raise unknown_key(self, key)
        self._bad_key(key)
        subject, rel_path, ecg_time = self._records[key]
        report = self._reports.get(key)
        if report is None:
            raise RecordError("no_report", f"study {key}: no row in {self.root / 'machine_measurements.csv'}")
        n_words = len(report.split())
        if n_words < MIN_REPORT_WORDS:
            raise RecordError("short_report", f"study {key}: report {report!r} has {n_words} words (< 4)")
        warnings = ()
        if key in self._cut:
            warnings = ((
                "report_truncated",
                f"study {key}: report cut to {MAX_REPORT_CHARS} characters ({self._cut[key]} more in "
                f"{self.root / 'machine_measurements.csv'})",
            ),)  # fmt: skip
        record = read_wfdb(
            self.root / f"{rel_path}.hea",
            self.options,
            key,
            root=self.root,
            subject_id=subject or None,
            report=report,
            meta={"ecg_time": ecg_time or None},
        )
        record.warnings = record.warnings + warnings
        return record

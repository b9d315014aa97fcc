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

import pandas as pd

from deri_sweep.data.readers.base import DatasetError, Reader, read_wfdb, unknown_key
from deri_sweep.data.record import Record, RecordError
from deri_sweep.data.signal import SignalOptions

log = logging.getLogger(__name__)

#: Reports with fewer words than this are dropped (spec section 1).
MIN_REPORT_WORDS = 4
N_REPORT_COLUMNS = 18

_STRIP_CHARS = " *=-"
_WHITESPACE = re.compile(r"[\r\n\t]")


def clean_report(statements: list[str]) -> str:
    """Turn machine statements into one cleaned report (spec section 1).

    Each statement has newlines/tabs turned into spaces, leading and trailing
    spaces, ``*``, ``=`` and ``-`` stripped and ``EKG``/``ekg`` replaced by
    ``ECG``/``ecg``; empty statements are dropped, the rest joined with ``". "``,
    lower-cased and ended with ``"."``.

    Args:
        statements: raw statements, e.g. ``["Sinus rhythm", "", "*** Abnormal EKG ***"]``.

    Returns:
        The report, e.g. ``"sinus rhythm. abnormal ecg."``; ``""`` when no
        statement is left.
    """
    parts: list[str] = []
    for statement in statements:
        if not isinstance(statement, str):
            continue
        text = _WHITESPACE.sub(" ", statement).strip(_STRIP_CHARS)
        text = text.replace("EKG", "ECG").replace("ekg", "ecg")
        if text:
            parts.append(text)
    if not parts:
        return ""
    return ". ".join(parts).lower() + "."


class MimicReader(Reader):
    """Reader of MIMIC-IV-ECG v1.0. Keys are study ids; no label sets."""

    format = "mimic"

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        super().__init__(root, options)
        fix = "download MIMIC-IV-ECG v1.0 from PhysioNet (credentialed) or pass the right --format"
        record_list = self._require("record_list.csv", fix)
        measurements = self._require("machine_measurements.csv", fix)
        records = pd.read_csv(record_list, dtype=str, keep_default_na=False)
        missing = {"subject_id", "study_id", "path"} - set(records.columns)
        if missing:
            raise DatasetError(f"{record_list}: columns {sorted(missing)} missing; is this MIMIC-IV-ECG v1.0?")
        times = records["ecg_time"] if "ecg_time" in records.columns else [""] * len(records)
        self._records: dict[str, tuple[str, str, str]] = {}
        for study, subject, path, time in zip(
            records["study_id"], records["subject_id"], records["path"], times, strict=True
        ):
            self._records.setdefault(study.strip(), (subject.strip(), path.strip(), time.strip()))
        if len(self._records) < len(records):
            log.warning("%s: %d duplicate study_id rows ignored", record_list, len(records) - len(self._records))
        self._reports = self._load_reports(measurements)
        self._keys = sorted(self._records)
        log.info("mimic %s: %d studies, %d with a report row", self.root, len(self._keys), len(self._reports))

    def _download_hint(self) -> str:
        return "download MIMIC-IV-ECG v1.0 from PhysioNet (credentialed access) and pass its folder"

    @staticmethod
    def _load_reports(path: Path) -> dict[str, str]:
        """Clean every study's statements once: study_id -> report."""
        head = pd.read_csv(path, nrows=0).columns
        columns = [c for c in (f"report_{i}" for i in range(N_REPORT_COLUMNS)) if c in head]
        if "study_id" not in head or not columns:
            raise DatasetError(f"{path}: needs study_id and report_0..report_17 columns; is this MIMIC-IV-ECG v1.0?")
        table = pd.read_csv(path, usecols=["study_id", *columns], dtype=str, keep_default_na=False)
        reports: dict[str, str] = {}
        for study, *statements in zip(table["study_id"], *(table[c] for c in columns), strict=True):
            reports.setdefault(study.strip(), clean_report(statements))
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
        subject, rel_path, ecg_time = self._records[key]
        report = self._reports.get(key)
        if report is None:
            raise RecordError("no_report", f"study {key}: no row in {self.root / 'machine_measurements.csv'}")
        n_words = len(report.split())
        if n_words < MIN_REPORT_WORDS:
            raise RecordError("short_report", f"study {key}: report {report!r} has {n_words} words (< 4)")
        return read_wfdb(
            self.root / f"{rel_path}.hea",
            self.options,
            key,
            subject_id=subject or None,
            report=report,
            meta={"ecg_time": ecg_time or None},
        )

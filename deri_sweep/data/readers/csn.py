"""Chapman-Shaoxing-Ningbo ("ecg-arrhythmia" v1.0.0): SNOMED ``#Dx`` mapped to acronyms.

Records lie in ``WFDBRecords/**/JS*.hea`` (+ ``.mat``); the class list is
``ConditionNames_SNOMED-CT.csv`` at the root, read with either header spelling
(``Acronym Name,Full Name,Snomed_CT`` with a UTF-8 BOM, or
``AcronymName,FullName,Snomed_CT``). Several acronyms share one SNOMED code in
that file (e.g. LBBB, LBBBB, LFBBB -> 164909002); a code is mapped to the FIRST
acronym that carries it in file order, so one diagnosis yields one label.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from deri_sweep.data.readers.base import (
    DatasetError,
    Reader,
    read_text_file,
    record_from_header,
    split_codes,
    unknown_key,
)
from deri_sweep.data.record import Record
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.wfdb_io import parse_header

log = logging.getLogger(__name__)

CONDITIONS_FILE = "ConditionNames_SNOMED-CT.csv"
RECORDS_DIR = "WFDBRecords"


def _column_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def load_conditions(path: Path) -> list[tuple[str, str, str]]:
    """Read ConditionNames_SNOMED-CT.csv in either header spelling.

    Args:
        path: the csv file.

    Returns:
        ``(acronym, full name, snomed code)`` rows in file order.

    Raises:
        DatasetError: when the acronym, name or code column is missing, or the
            file cannot be decoded (see :func:`~deri_sweep.data.readers.base.read_text_file`).
    """
    text = read_text_file(path, "ecg-arrhythmia v1.0.0")  # UTF-8 (BOM or not); UTF-16 / cp1252 with a warning
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [_column_key(h) for h in next(reader, [])]
    try:
        i_acr, i_name, i_code = header.index("acronymname"), header.index("fullname"), header.index("snomedct")
    except ValueError:
        raise DatasetError(
            f"{path}: expected columns 'Acronym Name,Full Name,Snomed_CT' (or 'AcronymName,FullName,Snomed_CT'), "
            f"found {header[:10]}"
        ) from None
    rows = []
    for row in reader:
        if len(row) > max(i_acr, i_name, i_code) and row[i_acr].strip():
            rows.append((row[i_acr].strip(), row[i_name].strip(), row[i_code].strip()))
    return rows


class CsnReader(Reader):
    """Reader of Chapman-Shaoxing-Ningbo. Keys are record names (``"JS00001"``).

    Attributes:
        condition_names: acronym -> full name, in file order (for zero-shot prompts).
        code_to_acronym: SNOMED code -> the first acronym carrying it.
    """

    format = "csn"

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        super().__init__(root, options)
        conditions = load_conditions(self._require(CONDITIONS_FILE, self._download_hint()))
        self.condition_names: dict[str, str] = {}
        self.code_to_acronym: dict[str, str] = {}
        for acronym, name, code in conditions:
            self.condition_names.setdefault(acronym, name)
            self.code_to_acronym.setdefault(code, acronym)
        self._classes = tuple(self.condition_names)
        records = self._require(RECORDS_DIR, self._download_hint())
        self._files = {p.stem: p.relative_to(self.root).as_posix() for p in sorted(records.rglob("JS*.hea"))}
        if not self._files:
            raise DatasetError(f"{records}: no JS*.hea record below; {self._download_hint()}")
        self._keys = sorted(self._files)
        log.info("csn %s: %d records, %d conditions", self.root, len(self._keys), len(self._classes))

    def _download_hint(self) -> str:
        return "download 'ecg-arrhythmia' v1.0.0 (Chapman-Shaoxing-Ningbo) from PhysioNet and pass its folder"

    @property
    def class_descriptions(self) -> dict[str, dict[str, str]]:
        """The ``Full Name`` of each acronym, as ConditionNames_SNOMED-CT.csv gives it."""
        return {"csn": dict(self.condition_names)}

    @property
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """One set ``csn``: the acronyms of ConditionNames_SNOMED-CT.csv, in file order."""
        return {"csn": self._classes}

    def keys(self) -> list[str]:
        """Record names, sorted."""
        return list(self._keys)

    def read(self, key: str) -> Record:
        """Read one record.

        Returns:
            The record with ``labels["csn"]`` (acronyms in class order) and meta
            ``age``, ``sex``, ``unmapped_codes`` (SNOMED codes absent from the csv).
        """
        if key not in self._files:
            raise unknown_key(self, key)
        header = parse_header(self.root / self._files[key])
        codes = split_codes(header.comments.get("dx"))
        found = {self.code_to_acronym[c] for c in codes if c in self.code_to_acronym}
        labels = {"csn": tuple(c for c in self._classes if c in found)}
        meta = {"unmapped_codes": [c for c in codes if c not in self.code_to_acronym]}
        return record_from_header(header, self.options, key, root=self.root, labels=labels, meta=meta)

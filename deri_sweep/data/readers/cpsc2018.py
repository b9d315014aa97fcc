"""CPSC2018 in both releases: the original MATLAB structs and the CinC WFDB copy.

1. Original: ``A*.mat`` holding a MATLAB struct ``ECG`` (``sex``, ``age``,
   ``data`` 12xN float64 mV at 500 Hz, leads in canonical order), anywhere
   under the root, with labels from ``REFERENCE.csv`` (codes 1..9) if present.
2. PhysioNet/CinC 2020/2021: ``A*.hea`` + ``A*.mat`` (MATLAB v4, format 16+24)
   whose ``#Dx`` holds SNOMED codes or, in an early release, abbreviations.
Codes outside the nine classes go to ``meta["unmapped_codes"]``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import scipy.io

from deri_sweep.data.readers.base import (
    DatasetError,
    Reader,
    conform_record,
    parse_age,
    parse_sex,
    read_text_file,
    record_from_header,
    split_codes,
    unknown_key,
)
from deri_sweep.data.record import CANONICAL_LEADS, Record, RecordError
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.wfdb_io import parse_header, regular_file

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
SNOMED: dict[str, str] = {
    "426783006": "Normal", "164889003": "AF", "270492004": "I-AVB", "164909002": "LBBB", "59118001": "RBBB",
    "284470004": "PAC", "164884008": "PVC", "429622005": "STD", "164931005": "STE",
}  # fmt: skip
#: REFERENCE.csv codes 1..9 -> class names.
DESCRIPTIONS: dict[str, str] = {
    "Normal": "normal sinus rhythm",
    "AF": "atrial fibrillation",
    "I-AVB": "first degree atrioventricular block",
    "LBBB": "left bundle branch block",
    "RBBB": "right bundle branch block",
    "PAC": "premature atrial contraction",
    "PVC": "premature ventricular contraction",
    "STD": "st segment depression",
    "STE": "st segment elevation",
}
REFERENCE_CODES: dict[str, str] = {str(i + 1): name for i, name in enumerate(CLASSES)}
_ABBREVIATIONS = {name.upper(): name for name in CLASSES} | {"IAVB": "I-AVB"}
ORIGINAL_FS = 500.0


def map_code(code: str) -> str | None:
    """Map one ``#Dx`` token (SNOMED code or abbreviation, any case) to a class, or ``None``."""
    code = code.strip()
    return SNOMED.get(code) or _ABBREVIATIONS.get(code.upper())


class Cpsc2018Reader(Reader):
    """Reader of CPSC2018 (original or CinC WFDB release). Keys are record names (``"A0001"``)."""

    format = "cpsc2018"

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        super().__init__(root, options)
        self._files: dict[str, tuple[str, bool]] = {}  # key -> (path relative to root, is WFDB)
        duplicates = 0
        for path in sorted(self.root.rglob("A*.hea")) + sorted(self.root.rglob("A*.mat")):
            is_wfdb = path.suffix == ".hea"
            if not is_wfdb and path.with_suffix(".hea").exists():
                continue  # the signal file of a WFDB record
            if path.stem in self._files:
                duplicates += 1
                continue
            self._files[path.stem] = (path.relative_to(self.root).as_posix(), is_wfdb)
        if not self._files:
            raise DatasetError(
                f"{self.root}: no A*.mat or A*.hea record anywhere below, so this is not a cpsc2018 root; "
                f"{self._download_hint()}"
            )
        if duplicates:
            log.warning(
                "cpsc2018 %s: %d records found twice; the first (WFDB, then path order) is used",
                self.root,
                duplicates,
            )
        self._reference = self._load_references()
        self._keys = sorted(self._files)
        log.info("cpsc2018 %s: %d records, %d with REFERENCE labels", self.root, len(self._keys), len(self._reference))

    def _download_hint(self) -> str:
        return "download CPSC2018 (TrainingSet*.zip + REFERENCE.csv) or the CinC 2020/2021 copy from PhysioNet"

    def _load_references(self) -> dict[str, tuple[str, ...]]:
        """Labels of the original release: record -> classes, from every REFERENCE.csv under the root.

        Codes outside 1..9 are kept per record (with the file) for the skip message.
        """
        labels: dict[str, tuple[str, ...]] = {}
        self._reference_unmapped: dict[str, tuple[list[str], str]] = {}
        for path in sorted(self.root.rglob("REFERENCE.csv")):
            text = read_text_file(path, "CPSC2018")  # UTF-8 (BOM or not); UTF-16 / cp1252 with a warning
            for row in csv.DictReader(io.StringIO(text, newline="")):
                name = (row.get("Recording") or "").strip()
                if not name:
                    continue
                codes = [(row.get(c) or "").strip() for c in ("First_label", "Second_label", "Third_label")]
                codes = [c.split(".")[0] for c in codes if c]
                found = {REFERENCE_CODES[c] for c in codes if c in REFERENCE_CODES}
                labels[name] = tuple(c for c in CLASSES if c in found)
                unmapped = [c[:40] for c in codes if c not in REFERENCE_CODES]
                if unmapped:
                    self._reference_unmapped[name] = (unmapped, str(path))
        return labels

    @property
    def class_descriptions(self) -> dict[str, dict[str, str]]:
        """Plain-text names of the nine CPSC2018 classes."""
        return {"cpsc2018": dict(DESCRIPTIONS)}

    @property
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """One set ``cpsc2018`` with the nine classes."""
        return {"cpsc2018": CLASSES}

    def keys(self) -> list[str]:
        """Record names, sorted."""
        return list(self._keys)

    def read(self, key: str) -> Record:
        """Read one record of either release.

        Returns:
            The record with ``labels["cpsc2018"]`` (no label set for an original
            record without a REFERENCE.csv row) and meta ``age``, ``sex``,
            ``release`` and ``unmapped_codes``.
        """
        if key not in self._files:
            raise unknown_key(self, key)
        rel_path, is_wfdb = self._files[key]
        return self._read_wfdb(key, self.root / rel_path) if is_wfdb else self._read_original(key, self.root / rel_path)

    def _read_wfdb(self, key: str, path: Path) -> Record:
        header = parse_header(path)
        codes = split_codes(header.comments.get("dx"))
        found = {map_code(c) for c in codes} - {None}
        meta = {"release": "wfdb", "unmapped_codes": [c for c in codes if map_code(c) is None]}
        labels = {"cpsc2018": tuple(c for c in CLASSES if c in found)}
        return record_from_header(header, self.options, key, root=self.root, labels=labels, meta=meta)

    def _read_original(self, key: str, path: Path) -> Record:
        regular_file(path, "MATLAB file")  # a FIFO would block loadmat forever
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head[:2] == b"\x1f\x8b":
            raise RecordError("unreadable_mat", f"{path}: is gzip-compressed; decompress it (gunzip) and try again")
        if head[:4] == b"\x89HDF":
            raise RecordError("unreadable_mat", f"{path}: is a MATLAB v7.3 (HDF5) file; re-save it with save -v7")
        try:
            mat = scipy.io.loadmat(path)
        except FileNotFoundError:
            raise RecordError("missing_file", f"{path}: file not found") from None
        except NotImplementedError:  # scipy's answer to a v7.3 file without the HDF5 signature first
            raise RecordError(
                "unreadable_mat", f"{path}: is a MATLAB v7.3 (HDF5) file; re-save it with save -v7"
            ) from None
        except Exception as exc:  # scipy raises ValueError, TypeError, OSError ... for a damaged file
            raise RecordError("unreadable_mat", f"{path}: scipy.io.loadmat failed ({exc})") from None
        ecg = mat.get("ECG")
        if not isinstance(ecg, np.ndarray) or ecg.dtype.names is None or "data" not in ecg.dtype.names:
            raise RecordError("unreadable_mat", f"{path}: no MATLAB struct 'ECG' with a 'data' field")
        if ecg.size == 0:
            raise RecordError("unreadable_mat", f"{path}: the MATLAB struct 'ECG' is empty (0 elements)")
        entry = ecg.ravel()[0]
        raw = np.asarray(entry["data"])
        if raw.dtype.kind not in "iuf":
            kind = {"U": "text", "S": "text", "O": "a cell array or struct"}.get(raw.dtype.kind, f"dtype {raw.dtype}")
            raise RecordError("unreadable_mat", f"{path}: ECG.data is {kind}, expected a 12xN numeric matrix (mV)")
        data = raw.astype(np.float64)
        if data.ndim != 2 or data.shape[0] != len(CANONICAL_LEADS):
            raise RecordError("unreadable_mat", f"{path}: ECG.data has shape {data.shape}, expected (12, N)")
        names = entry.dtype.names
        unmapped, label_file = self._reference_unmapped.get(key, ([], ""))
        meta = {
            "release": "original",
            "age": parse_age(entry["age"]) if "age" in names else None,
            "sex": parse_sex(entry["sex"]) if "sex" in names else None,
            "unmapped_codes": unmapped,
        }
        if unmapped:
            meta["label_source"] = label_file
        labels = {"cpsc2018": self._reference[key]} if key in self._reference else {}
        return conform_record(
            data, list(CANONICAL_LEADS), ORIGINAL_FS, self.options, str(path), key, labels=labels, meta=meta
        )

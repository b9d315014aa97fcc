"""PTB-XL v1.0.3: four label sets (super, sub, form, rhythm) from SCP codes.

``ptbxl_database.csv`` lists the records and their ``scp_codes`` (a Python dict
literal); ``scp_statements.csv`` (first header cell empty: the code) flags each
code as diagnostic/form/rhythm and gives the diagnostic class and subclass.
Every code of a record counts, whatever its likelihood.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deri_sweep.data.readers.base import DatasetError, Reader, parse_age, read_table, read_wfdb, unknown_key
from deri_sweep.data.readers.mimic import MAX_REPORT_CHARS, clean_report_counted
from deri_sweep.data.record import Record, RecordError
from deri_sweep.data.signal import SignalOptions

log = logging.getLogger(__name__)

LABEL_SETS = ("super", "sub", "form", "rhythm")
_SEX = {"0": "Male", "1": "Female"}  # PTB-XL codes sex as 0 = male, 1 = female


SUPERCLASS_NAMES: dict[str, str] = {
    "NORM": "normal ecg",
    "MI": "myocardial infarction",
    "STTC": "st/t change",
    "CD": "conduction disturbance",
    "HYP": "hypertrophy",
}


@dataclass(frozen=True)
class _Statement:
    diagnostic: bool
    form: bool
    rhythm: bool
    diagnostic_class: str
    diagnostic_subclass: str
    description: str


@dataclass(frozen=True)
class _Row:
    patient_id: str
    age: int | None
    sex: str | None
    report: str
    scp_codes: str
    strat_fold: int | None
    strat_fold_text: str
    filename_lr: str
    filename_hr: str


def _flag(value: str) -> bool:
    try:
        return float(value) != 0.0
    except ValueError:
        return False


def _int_or_none(value: str) -> int | None:
    """A whole number written as ``"3"`` or ``"3.0"`` (pandas' float ids), else ``None``.

    Never raises: ``inf``, ``1e999``, ``nan``, ``3.5`` and cells longer than 20
    characters are ``None``.
    """
    text = value.strip()
    if len(text) > 20:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or abs(number) > 1e15:
        return None
    return int(number)


#: The longest scp_codes cell parsed (the real ones are < 200 characters).
MAX_SCP_CHARS = 10_000
_SCP_ITEM = re.compile(
    r"""\s*(?:'([^'\\]{1,40})'|"([^"\\]{1,40})")\s*:\s*([-+]?(?:\d{1,10}(?:\.\d{0,10})?|\.\d{1,10}))\s*"""
)


def parse_scp_codes(text: str) -> dict[str, float]:
    """Parse an ``scp_codes`` cell, a Python dict literal of code -> likelihood, without evaluating it.

    Args:
        text: e.g. ``"{'NORM': 100.0, 'SR': 0.0}"``; empty: ``{}``.

    Returns:
        Code -> likelihood in written order (a repeated code keeps its last value).

    Raises:
        ValueError: the cell is longer than :data:`MAX_SCP_CHARS`, or not a dict of
            quoted codes (1-40 characters) to plain numbers.
    """
    text = text.strip()
    if not text:
        return {}
    if len(text) > MAX_SCP_CHARS:
        raise ValueError(f"{len(text)} characters, more than the {MAX_SCP_CHARS} a cell may have")
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError("not a dict literal")
    body = text[1:-1].strip()
    codes: dict[str, float] = {}
    if not body:
        return codes
    items = body.split(",")
    if items[-1].strip() == "":  # a trailing comma, as Python allows
        items = items[:-1]
    for item in items:
        m = _SCP_ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"item {item.strip()[:60]!r} is not 'CODE': number")
        codes[m.group(1) or m.group(2)] = float(m.group(3))
    return codes


class PtbxlReader(Reader):
    """Reader of PTB-XL. Keys are 5-digit ecg ids (``"00001"``).

    Attributes:
        descriptions: SCP code -> its description from scp_statements.csv.
        prefer: ``"hr"`` reads records500 first, ``"lr"`` records100 first; the
            other is used when the preferred file is absent.
    """

    format = "ptbxl"

    def __init__(
        self,
        root: str | Path,
        options: SignalOptions = SignalOptions(),  # noqa: B008
        *,
        prefer: Literal["hr", "lr"] = "hr",
    ) -> None:
        super().__init__(root, options)
        if prefer not in ("hr", "lr"):
            raise ValueError(f"prefer must be 'hr' or 'lr', got {prefer!r}")
        self.prefer = prefer
        fix = "download PTB-XL v1.0.3 from PhysioNet or pass the right --format"
        self._statements = self._load_statements(self._require("scp_statements.csv", fix))
        self.descriptions: dict[str, str] = {code: s.description for code, s in self._statements.items()}
        self._rows = self._load_database(self._require("ptbxl_database.csv", fix))
        self._keys = sorted(self._rows)
        stm = self._statements.values()
        self._label_sets = {
            "super": tuple(sorted({s.diagnostic_class for s in stm if s.diagnostic and s.diagnostic_class})),
            "sub": tuple(sorted({s.diagnostic_subclass for s in stm if s.diagnostic and s.diagnostic_subclass})),
            "form": tuple(sorted(c for c, s in self._statements.items() if s.form)),
            "rhythm": tuple(sorted(c for c, s in self._statements.items() if s.rhythm)),
        }
        log.info("ptbxl %s: %d records, %d SCP statements", self.root, len(self._keys), len(self._statements))

    def _download_hint(self) -> str:
        return "download PTB-XL v1.0.3 from PhysioNet and pass its folder"

    @staticmethod
    def _load_statements(path: Path) -> dict[str, _Statement]:
        table = read_table(path, "PTB-XL v1.0.3", index_col=0)
        needed = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass", "description"}
        if needed - set(table.columns):
            raise DatasetError(f"{path}: columns {sorted(needed - set(table.columns))} missing; is this PTB-XL?")
        return {
            str(code).strip(): _Statement(
                _flag(r["diagnostic"]),
                _flag(r["form"]),
                _flag(r["rhythm"]),
                r["diagnostic_class"].strip(),
                r["diagnostic_subclass"].strip(),
                r["description"].strip(),
            )
            for code, r in table.iterrows()
        }

    def _load_database(self, path: Path) -> dict[str, _Row]:
        """Rows of ptbxl_database.csv by 5-digit ecg id; a bad id cell or a repeated id is a named skip."""
        table = read_table(path, "PTB-XL v1.0.3")
        needed = {"ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", "filename_lr"}
        if needed - set(table.columns):
            raise DatasetError(f"{path}: columns {sorted(needed - set(table.columns))} missing; is this PTB-XL?")
        hr = table["filename_hr"] if "filename_hr" in table.columns else [""] * len(table)
        rows: dict[str, _Row] = {}
        numbers: dict[str, list[int]] = {}
        for number, (r, filename_hr) in enumerate(zip(table.itertuples(index=False), hr, strict=True), start=1):
            ecg_id = _int_or_none(r.ecg_id)
            if ecg_id is None or ecg_id < 0:
                key = r.ecg_id.strip()[:40] or f"row{number}"
                self._bad[key] = RecordError(
                    "bad_metadata", f"{path}: data row {number}: ecg_id {r.ecg_id[:40]!r} is not a whole number"
                )
                rows[key] = _Row("", None, None, "", "", None, "", "", "")
                continue
            numbers.setdefault(f"{ecg_id:05d}", []).append(number)
            patient = _int_or_none(r.patient_id)
            rows[f"{ecg_id:05d}"] = _Row(
                patient_id=str(patient) if patient is not None else "",
                age=parse_age(r.age),
                sex=_SEX.get(r.sex.strip().split(".")[0]),
                report=r.report,
                scp_codes=r.scp_codes,
                strat_fold=_int_or_none(r.strat_fold),
                strat_fold_text=r.strat_fold,
                filename_lr=r.filename_lr.strip(),
                filename_hr=filename_hr.strip(),
            )
        for key, found in numbers.items():
            if len(found) > 1:
                self._bad[key] = RecordError(
                    "duplicate_id", f"{path}: ecg_id {int(key)} is on data rows {found}; which one is meant is unclear"
                )
        return rows

    @property
    def class_descriptions(self) -> dict[str, dict[str, str]]:
        """Descriptions per label set: scp_statements.csv's for codes, fixed names for the superclasses.

        A subclass that is not itself a code is described by its member codes' descriptions.
        """
        members: dict[str, list[str]] = {}
        for code, stm in self._statements.items():
            if stm.diagnostic and stm.diagnostic_subclass:
                members.setdefault(stm.diagnostic_subclass, []).append(self.descriptions[code])
        out = {"super": {c: SUPERCLASS_NAMES.get(c, c) for c in self._label_sets["super"]}}
        out["sub"] = {c: self.descriptions.get(c) or ", ".join(members.get(c, [c])) for c in self._label_sets["sub"]}
        for name in ("form", "rhythm"):
            out[name] = {c: self.descriptions.get(c, c) for c in self._label_sets[name]}
        return out

    @property
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """``super`` (5), ``sub`` (23), ``form`` (19), ``rhythm`` (12) class names, sorted."""
        return dict(self._label_sets)

    def keys(self) -> list[str]:
        """5-digit ecg ids, sorted."""
        return list(self._keys)

    def labels(self, key: str) -> tuple[dict[str, tuple[str, ...]], dict[str, float], list[str]]:
        """Labels of one record without reading its signal.

        Returns:
            ``(labels, scp_codes, unmapped)``: set name -> classes in class-list
            order (empty tuple when the record has none of that set), the
            record's code -> likelihood, and codes absent from scp_statements.csv.
        """
        row = self._rows[key]
        try:
            codes = likelihoods = parse_scp_codes(row.scp_codes)
        except ValueError as exc:
            shown = row.scp_codes if len(row.scp_codes) <= 200 else row.scp_codes[:200] + "..."
            raise RecordError(
                "bad_labels",
                f"{self.root / 'ptbxl_database.csv'}: ecg_id {key}: scp_codes {shown!r} is not a dict of "
                f"code -> likelihood ({exc})",
            ) from None
        found: dict[str, set[str]] = {name: set() for name in LABEL_SETS}
        unmapped: list[str] = []
        for code in codes:
            s = self._statements.get(str(code))
            if s is None:
                unmapped.append(str(code))
                continue
            if s.diagnostic:
                found["super"].add(s.diagnostic_class)
                found["sub"].add(s.diagnostic_subclass)
            if s.form:
                found["form"].add(str(code))
            if s.rhythm:
                found["rhythm"].add(str(code))
        labels = {name: tuple(c for c in self._label_sets[name] if c in found[name]) for name in LABEL_SETS}
        return labels, likelihoods, unmapped

    def _header_path(self, row: _Row, key: str) -> Path:
        order = [row.filename_hr, row.filename_lr] if self.prefer == "hr" else [row.filename_lr, row.filename_hr]
        candidates = [self.root / f"{name}.hea" for name in order if name]
        for path in candidates:
            if path.is_file():
                return path
        named = candidates[0] if candidates else self.root / f"records500/{key}_hr.hea"
        raise RecordError(
            "missing_file", f"{named}: not found (ecg_id {key}; neither records500 nor records100 has it)"
        )

    def read(self, key: str) -> Record:
        """Read one record (records500 preferred; records100 resampled when it is the only one).

        Returns:
            The record with the four label sets, ``report`` and meta
            ``strat_fold``, ``age``, ``sex``, ``scp_codes`` (and ``unmapped_codes``).
        """
        if key not in self._rows:
            raise unknown_key(self, key)
        self._bad_key(key)
        row = self._rows[key]
        if row.strat_fold not in range(1, 11):
            raise RecordError(
                "bad_metadata",
                f"{self.root / 'ptbxl_database.csv'}: ecg_id {key}: strat_fold {row.strat_fold_text[:40]!r} is not "
                "a whole number in 1..10",
            )
        labels, codes, unmapped = self.labels(key)
        meta = {"strat_fold": row.strat_fold, "age": row.age, "sex": row.sex, "scp_codes": codes}
        if unmapped:
            meta["unmapped_codes"] = unmapped
            meta["label_source"] = f"{self.root / 'scp_statements.csv'} (ecg_id {key}'s scp_codes)"
        report, cut = clean_report_counted([row.report])
        record = read_wfdb(
            self._header_path(row, key),
            self.options,
            key,
            root=self.root,
            subject_id=row.patient_id or None,
            labels=labels,
            report=report or None,
            meta=meta,
        )
        if cut:
            record.warnings = (
                *record.warnings,
                ("report_truncated", f"ecg_id {key}: report cut to {MAX_REPORT_CHARS} characters ({cut} more)"),
            )
        return record

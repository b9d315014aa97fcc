"""The record every reader yields, and the error a reader raises for a bad one.

All readers in :mod:`deri_sweep.data` turn a dataset's own files into
:class:`Record` objects with one canonical shape: 12 leads in the order
:data:`CANONICAL_LEADS`, 500 Hz, 5000 samples, float32 millivolts. A record
that cannot be read raises :class:`RecordError` with a short machine-readable
reason (e.g. ``"bad_header"``) so that callers can skip, count and report it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The project's lead order. Readers map leads BY NAME into this order.
CANONICAL_LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)

#: Target sampling rate (Hz) and length (samples) of every record.
TARGET_FS: int = 500
TARGET_LEN: int = 5000

_LEAD_ALIASES = {name.upper(): name for name in CANONICAL_LEADS}


def canonical_lead(name: str) -> str | None:
    """Map a header's lead name to its canonical spelling.

    Args:
        name: lead name as written in a header, e.g. ``"AVF"``, ``"aVF"``, ``" v1"``.

    Returns:
        The canonical name (``"aVF"``) or ``None`` for a lead that is not one of
        the 12 standard leads.
    """
    return _LEAD_ALIASES.get(name.strip().upper())


#: Longest skip or warning detail kept (a hostile header line could be a megabyte long).
MAX_DETAIL_CHARS = 2000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def clean_text(text: str, max_chars: int) -> tuple[str, int]:
    """Remove control characters (NUL, escape, C1 ...) and cut to ``max_chars``.

    Args:
        text: any text, e.g. a report or a message quoting a header line.
        max_chars: the longest result.

    Returns:
        ``(text, characters cut)``; a cut text ends with ``"..."`` (within ``max_chars``).
    """
    text = _CONTROL.sub("", text)
    if len(text) <= max_chars:
        return text, 0
    kept = max(max_chars - 3, 0)
    return text[:kept] + "..."[: max_chars - kept], len(text) - kept


class RecordError(Exception):
    """A record that cannot be used.

    Attributes:
        reason: short snake_case category used to count skips, e.g.
            ``"bad_header"``, ``"missing_file"``, ``"truncated_signal"``,
            ``"missing_leads"``, ``"flat_lead"``, ``"nonfinite"``,
            ``"short_report"``, ``"no_labels"``, ``"unreadable_mat"``; a signal file
            that is not the header's: ``"not_a_file"``, ``"outside_root"``,
            ``"wrong_signal_file"``, ``"size_mismatch"``, ``"checksum_mismatch"``;
            numbers that give no millivolts: ``"not_ecg_units"``, ``"uncalibrated"``,
            ``"bad_baseline"``; ``"read_failed"`` for an exception nobody foresaw.
        detail: human-readable explanation naming the file and what is wrong
            (control characters removed, at most :data:`MAX_DETAIL_CHARS` characters).
    """

    def __init__(self, reason: str, detail: str) -> None:
        detail = clean_text(detail, MAX_DETAIL_CHARS)[0]
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Record:
    """One 12-lead ECG in canonical form.

    Attributes:
        record_id: the dataset's own id (``"00001"``, ``"A0001"``, ``"40689238"``).
        signal: (12, 5000) float32 in mV, leads in :data:`CANONICAL_LEADS` order,
            500 Hz, first samples kept, zero-padded at the end when shorter.
        subject_id: patient id where the dataset has one, else ``None``.
        labels: label-set name -> tuple of class names present, e.g.
            ``{"super": ("NORM",), "rhythm": ("SR",)}``. Empty for pretraining data.
        report: cleaned report text, or ``None`` where the dataset has none.
        fs: sampling rate of the source file (Hz).
        n_samples: length of the source signal (samples at ``fs``).
        repaired: number of non-finite samples that were interpolated.
        degraded: True when at least one lead was entirely non-finite and was
            replaced by zeros (spec section 1).
        meta: extra per-record fields (``strat_fold``, ``age``, ``sex``,
            ``unmapped_codes`` ...), JSON-serialisable values only.
        warnings: ``(reason, detail)`` pairs of a record that is kept but not
            clean (e.g. ``dead_leads``); ``prepare`` lists them in ``warnings.csv``.
        interpolated_fraction: share of the read samples of the live leads that
            were interpolated (non-finite); ``prepare`` warns above a threshold.
    """

    record_id: str
    signal: np.ndarray
    subject_id: str | None = None
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    report: str | None = None
    fs: float = float(TARGET_FS)
    n_samples: int = TARGET_LEN
    repaired: int = 0
    degraded: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[tuple[str, str], ...] = ()
    interpolated_fraction: float = 0.0

r"""Byte-level writers of the real on-disk formats, and the defects injected into them.

* WFDB format 16 ``.dat``: little-endian int16, frame-interleaved (sample-major);
  header signal lines carry the first sample (``init``) and a 16-bit checksum
  (sum of the samples mod 2^16: signed as the WFDB C library writes it, or
  unsigned as wfdb-python writes it, which is what PTB-XL holds).
* MATLAB v4 ``.mat`` (PhysioNet/CinC Challenge): a 20-byte header (type 30 =
  little-endian int16 full matrix, 12 rows, N columns, no imaginary part, name
  length 4), the name ``val\0``, then the 12 x N matrix column-major, i.e. the
  same interleaved int16 frames as format 16 at byte offset 24 (``16+24``).

Defects (:data:`DEFECTS`) and the reader reason each must produce:
``nan_run`` (WFDB invalid value -32768 over a run of one lead; repaired, no skip),
``flat_lead`` (``flat_lead``), ``truncated_dat`` (``truncated_signal``),
``malformed_header`` (``bad_header``), ``missing_file`` (``missing_file``),
``empty_report`` (MIMIC only: ``short_report``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Defects that apply to every dataset, in round-robin order; MIMIC adds ``empty_report``.
DEFECTS: tuple[str, ...] = ("nan_run", "flat_lead", "truncated_dat", "malformed_header", "missing_file")
MIMIC_DEFECTS: tuple[str, ...] = (*DEFECTS, "empty_report")
#: What a reader must report for each defect (``""``: the record is kept and repaired).
EXPECTED_REASON: dict[str, str] = {
    "nan_run": "", "flat_lead": "flat_lead", "truncated_dat": "truncated_signal",
    "malformed_header": "bad_header", "missing_file": "missing_file", "empty_report": "short_report",
}  # fmt: skip
INVALID16 = -32768
_MAT_HEADER = struct.Struct("<5i")


def to_adc(signal_mv: np.ndarray, gain: float) -> np.ndarray:
    """Quantise a signal to int16 frames.

    Args:
        signal_mv: (L, N) float signal in mV.
        gain: ADC units per mV (200 for MIMIC-IV-ECG, 1000 elsewhere).

    Returns:
        (N, L) int16 frames, clipped to +-32767 so that -32768 stays the invalid marker.
    """
    with np.errstate(over="ignore"):  # huge or infinite values (the bad-input cases) clip to the rail
        scaled = np.rint(np.asarray(signal_mv, dtype=np.float64) * gain)
    return np.clip(scaled, -32767, 32767).astype("<i2").T.copy()


def checksums(frames: np.ndarray, *, signed: bool) -> list[int]:
    """16-bit checksum of each signal.

    Args:
        frames: (N, L) int16.
        signed: write it as a signed 16-bit value (WFDB C library) or unsigned (wfdb-python).

    Returns:
        L checksums.
    """
    sums = frames.astype(np.int64).sum(axis=0) % 65536
    return [int(c - 65536 if signed and c >= 32768 else c) for c in sums]


def header_text(
    record_line: str,
    file_name: str,
    fmt: str,
    gain: str,
    frames: np.ndarray,
    leads: Sequence[str],
    comments: Sequence[str] = (),
    *,
    signed_checksum: bool = True,
    newline: str = "\n",
) -> str:
    r"""A WFDB header.

    Args:
        record_line: first line, e.g. ``"40689238 12 500 5000 08:44:00 23/07/2180"``.
        file_name: signal file name written on every signal line.
        fmt: format field, ``"16"`` or ``"16+24"``.
        gain: gain field, e.g. ``"200.0(0)/mV"`` or ``"1000/mV"``.
        frames: (N, L) int16 samples as written (defects included).
        leads: L lead names in file order.
        comments: comment lines including their ``#``.
        signed_checksum: see :func:`checksums`.
        newline: ``"\n"`` or ``"\r\n"`` (Chapman headers use CRLF).

    Returns:
        The header text.
    """
    init = frames[0] if len(frames) else np.zeros(frames.shape[1], dtype=np.int16)
    sums = checksums(frames, signed=signed_checksum)
    signals = [f"{file_name} {fmt} {gain} 16 0 {v} {c} 0 {lead}" for v, c, lead in zip(init, sums, leads, strict=True)]
    return newline.join([record_line, *signals, *comments]) + newline


def dat_bytes(frames: np.ndarray) -> bytes:
    """Format 16 payload of (N, L) int16 frames."""
    return frames.astype("<i2", copy=False).tobytes()


def mat_bytes(frames: np.ndarray) -> bytes:
    """MATLAB v4 file holding the (L, N) int16 matrix ``val`` given as (N, L) frames."""
    n, n_leads = frames.shape
    return _MAT_HEADER.pack(30, n_leads, n, 0, 4) + b"val\x00" + dat_bytes(frames)


def defect_plan(n: int, rate: float, kinds: Sequence[str], rng: np.random.Generator) -> dict[int, str]:
    """Choose which records get a defect and which one.

    Args:
        n: number of records.
        rate: fraction of records with one defect (``round(rate * n)`` records).
        kinds: defect kinds, assigned round-robin in record order.
        rng: dataset-level generator.

    Returns:
        record index -> defect kind.
    """
    k = min(n, round(rate * n))
    chosen = np.sort(rng.choice(n, size=k, replace=False)) if k else np.array([], dtype=int)
    return {int(i): kinds[j % len(kinds)] for j, i in enumerate(chosen)}


def damage_frames(frames: np.ndarray, defect: str, rng: np.random.Generator, step: int = 1) -> np.ndarray:
    """Apply a sample-level defect (``nan_run`` or ``flat_lead``) to a copy of (N, L) frames.

    Args:
        frames: (N, L) int16.
        defect: defect kind; other kinds return ``frames`` unchanged.
        rng: record generator (draws the lead and run; same draws for every rate of one record).
        step: decimation factor of ``frames`` relative to the rate the run was drawn at.

    Returns:
        (N, L) int16.
    """
    lead, start, length = int(rng.integers(0, frames.shape[1])), int(rng.integers(0, 2000)), int(rng.integers(50, 400))
    if defect not in ("nan_run", "flat_lead"):
        return frames
    out = frames.copy()
    if defect == "nan_run":
        out[start // step : (start + length) // step + 1, lead] = INVALID16
    else:
        out[:, lead] = out[0, lead]
    return out


def damage_files(header: Path, signal: Path, defect: str, variant: int, rng: np.random.Generator) -> None:
    """Apply a file-level defect after a record was written.

    Args:
        header: the ``.hea`` path.
        signal: the ``.dat`` / ``.mat`` path.
        defect: ``truncated_dat``, ``malformed_header`` or ``missing_file``; others do nothing.
        variant: which malformation (0: the record line names ``<record>.<ext>``, as a known Georgia
            header does; 1: a signal line whose format field is garbage). wfdb rejects both.
        rng: record generator.
    """
    if defect == "missing_file":
        signal.unlink()
    elif defect == "truncated_dat":
        size = signal.stat().st_size
        with signal.open("r+b") as fh:
            fh.truncate(int(size * rng.uniform(0.3, 0.7)) | 1)
    elif defect == "malformed_header":
        newline = "\r\n" if b"\r\n" in header.read_bytes() else "\n"
        lines = header.read_text().splitlines()
        if variant % 2 == 0:
            lines[0] = f"{signal.name} " + lines[0].split(" ", 1)[1]
        else:
            row = int(rng.integers(1, 13))
            fields = lines[row].split()
            lines[row] = " ".join([fields[0], "garbage", *fields[2:]])
        header.write_bytes((newline.join(lines) + newline).encode())

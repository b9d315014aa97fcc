"""A fast, tolerant reader for WFDB headers and signals.

``wfdb.rdrecord`` is strict about a few quirks of the released 12-lead sets
(e.g. a Georgia header whose record line reads ``E00666.mat 12 ...``) and slow
for the common case. This module parses headers itself and reads format 16
(little-endian int16, frame-interleaved; a MATLAB v4 CinC ``.mat`` is exactly
format 16 with a 24-byte offset, its column-major ``val`` matrix being
frame-interleaved) with numpy directly. Any other format is read through
``wfdb.rdrecord``. Every failure is a :class:`~deri_sweep.data.record.RecordError`
with a named reason and the offending path.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deri_sweep.data.record import RecordError

log = logging.getLogger(__name__)

#: WFDB's defaults for an absent/zero gain and an absent sampling rate.
DEFAULT_GAIN = 200.0
DEFAULT_FS = 250.0
#: Format-16 sample value that WFDB reserves for "invalid sample".
INVALID_16 = -32768

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
#: Bytes per sample of WFDB formats, used to detect truncated files.
_BYTES_PER_SAMPLE = {
    "8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "24": 3.0, "32": 4.0,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}  # fmt: skip

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RX_FS = re.compile(rf"^({_NUM})(?:/({_NUM})(?:\(({_NUM})\))?)?$")
_RX_FMT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_RX_GAIN = re.compile(rf"^({_NUM})(?:\(([-+]?\d+)\))?(?:/(\S*))?$")


@dataclass(frozen=True)
class SignalSpec:
    """One signal line of a WFDB header.

    Attributes:
        file_name: signal file name, relative to the header's folder.
        fmt: storage format as written, e.g. ``"16"``, ``"212"``.
        samples_per_frame: samples of this signal per frame (``16x2`` -> 2).
        skew: skew in frames (``16:3`` -> 3).
        byte_offset: bytes to skip at the start of the file (``16+24`` -> 24).
        gain: ADC units per physical unit (200 when absent or zero).
        baseline: digital value of 0 physical units (``adc_zero`` when absent).
        units: physical units as written (``"mV"`` when absent).
        adc_res: ADC resolution in bits (0 when absent).
        adc_zero: ADC value of the middle of the input range.
        init_value: first sample value as written (``adc_zero`` when absent).
        checksum: 16-bit checksum as written, or ``None``.
        block_size: block size (0 when absent).
        lead_name: the description field (the lead name for ECGs).
    """

    file_name: str
    fmt: str
    samples_per_frame: int
    skew: int
    byte_offset: int
    gain: float
    baseline: int
    units: str
    adc_res: int
    adc_zero: int
    init_value: int
    checksum: int | None
    block_size: int
    lead_name: str

    @property
    def to_mv(self) -> float:
        """Factor turning this signal's physical units into mV (1 for unknown units)."""
        return _UNIT_TO_MV.get(self.units.strip().lower(), 1.0)


@dataclass
class Header:
    """A parsed WFDB header.

    Attributes:
        path: the ``.hea`` file.
        record_name: record name from the record line (equals the file stem).
        n_sig: number of signals.
        fs: sampling frequency in Hz.
        n_samples: samples per signal, or ``None`` when the header leaves it out.
        signals: one :class:`SignalSpec` per signal, in header order.
        comments: lower-cased key -> value from ``#Key: value`` / ``# Key: value`` lines.
        comment_lines: every comment line without its leading ``#``, stripped.
        base_time: the record line's time field, if any.
        base_date: the record line's date field, if any.
    """

    path: Path
    record_name: str
    n_sig: int
    fs: float
    n_samples: int | None
    signals: list[SignalSpec]
    comments: dict[str, str] = field(default_factory=dict)
    comment_lines: list[str] = field(default_factory=list)
    base_time: str | None = None
    base_date: str | None = None

    @property
    def lead_names(self) -> list[str]:
        """Lead names in header order."""
        return [s.lead_name for s in self.signals]


def _int(token: str, what: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise RecordError("bad_header", f"{where}: {what} {token!r} is not an integer") from None


def _parse_record_line(line: str, path: Path) -> tuple[str, int, float, int | None, str | None, str | None]:
    tokens = line.split()
    where = f"{path}: record line {line!r}"
    name = tokens[0]
    if "/" in name:
        raise RecordError("bad_header", f"{where}: multi-segment records are not supported")
    if name != path.stem:
        raise RecordError("bad_header", f"{path}: record line names {name!r} but the file is {path.name}")
    if len(tokens) < 2:
        raise RecordError("bad_header", f"{where}: no signal count")
    n_sig = _int(tokens[1], "signal count", where)
    fs = DEFAULT_FS
    if len(tokens) > 2:
        m = _RX_FS.match(tokens[2])
        if m is None:
            raise RecordError("bad_header", f"{where}: sampling frequency {tokens[2]!r} is malformed")
        fs = float(m.group(1))
        if not math.isfinite(fs) or fs <= 0:
            raise RecordError("bad_header", f"{where}: sampling frequency {fs} is not positive")
    n_samples = _int(tokens[3], "sample count", where) if len(tokens) > 3 else None
    if n_samples is not None and n_samples < 0:
        raise RecordError("bad_header", f"{where}: negative sample count")
    base_time, base_date = ([*tokens[4:6], None, None])[:2]
    return name, n_sig, fs, (n_samples or None), base_time, base_date


def _parse_signal_line(line: str, path: Path) -> SignalSpec:
    tokens = line.split()
    where = f"{path}: signal line {line!r}"
    if len(tokens) < 2:
        raise RecordError("bad_header", f"{where}: needs at least a file name and a format")
    m = _RX_FMT.match(tokens[1])
    if m is None:
        raise RecordError("bad_header", f"{where}: format {tokens[1]!r} is malformed")
    fmt, spf, skew, offset = m.group(1), int(m.group(2) or 1), int(m.group(3) or 0), int(m.group(4) or 0)
    if spf < 1:
        raise RecordError("bad_header", f"{where}: samples per frame must be >= 1")
    names = ("ADC resolution", "ADC zero", "initial value", "checksum", "block size")
    ints: list[int | None] = [_int(t, what, where) for t, what in zip(tokens[3:8], names, strict=False)]
    adc_res, adc_zero, init_value, checksum, block_size = ints + [None] * (5 - len(ints))
    adc_res, adc_zero, block_size = adc_res or 0, adc_zero or 0, block_size or 0
    init_value = adc_zero if init_value is None else init_value
    gain, baseline, units = DEFAULT_GAIN, adc_zero, "mV"
    if len(tokens) > 2:
        g = _RX_GAIN.match(tokens[2])
        if g is None:
            raise RecordError("bad_header", f"{where}: gain {tokens[2]!r} is malformed")
        gain = float(g.group(1))
        if not math.isfinite(gain) or gain < 0:
            raise RecordError("bad_header", f"{where}: gain {tokens[2]!r} is negative or not finite")
        gain = gain or DEFAULT_GAIN
        if g.group(2) is not None:
            baseline = int(g.group(2))
        units = g.group(3) or "mV"
    lead_name = " ".join(tokens[8:])
    return SignalSpec(tokens[0], fmt, spf, skew, offset, gain, baseline, units, adc_res, adc_zero, init_value, checksum,
                      block_size, lead_name)  # fmt: skip


def parse_header(path: str | Path) -> Header:
    """Parse one WFDB ``.hea`` file.

    Args:
        path: the header file.

    Returns:
        The parsed :class:`Header`.

    Raises:
        RecordError: ``missing_file`` when the file does not exist, ``bad_header``
            when the record line's name differs from the file stem or any line
            is malformed.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise RecordError("missing_file", f"{path}: header file not found") from None
    except OSError as exc:
        raise RecordError("missing_file", f"{path}: cannot read header ({exc})") from None
    comments: dict[str, str] = {}
    comment_lines: list[str] = []
    content: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            comment_lines.append(body)
            key, sep, value = body.partition(":")
            if sep and key.strip():
                comments.setdefault(key.strip().lower(), value.strip())
            continue
        content.append(line)
    if not content:
        raise RecordError("bad_header", f"{path}: no record line")
    name, n_sig, fs, n_samples, base_time, base_date = _parse_record_line(content[0], path)
    if n_sig < 1:
        raise RecordError("bad_header", f"{path}: the record declares {n_sig} signals")
    if len(content) - 1 != n_sig:
        raise RecordError("bad_header", f"{path}: record line declares {n_sig} signals but {len(content) - 1} follow")
    signals = [_parse_signal_line(line, path) for line in content[1:]]
    return Header(path, name, n_sig, fs, n_samples, signals, comments, comment_lines, base_time, base_date)


def _file_groups(header: Header) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(header.signals):
        groups.setdefault(spec.file_name, []).append(i)
    return groups


def _check_size(path: Path, size: int, needed: int) -> None:
    if size < needed:
        raise RecordError("truncated_signal", f"{path}: has {size} bytes, header needs {needed}")


def _check_mat_v4(path: Path, raw: bytes, offset: int, n_rows: int, n_cols: int) -> None:
    """Check a MATLAB v4 ``.mat`` prologue against the header (int16 rows x cols)."""
    if path.suffix.lower() != ".mat" or offset < 20 or len(raw) < 20:
        return
    mopt, rows, cols, imag, _ = np.frombuffer(raw, dtype="<i4", count=5)
    if mopt != 30 or imag != 0:
        raise RecordError("unreadable_mat", f"{path}: not a little-endian int16 MATLAB v4 matrix (type {mopt})")
    if rows != n_rows or cols < n_cols:
        raise RecordError("truncated_signal", f"{path}: holds a {rows}x{cols} matrix, header needs {n_rows}x{n_cols}")


def _read_format16(header: Header, directory: Path) -> np.ndarray:
    groups = _file_groups(header)
    raws = {name: (directory / name).read_bytes() for name in groups}
    n_samples = header.n_samples
    if n_samples is None:  # WFDB allows leaving the length out: infer it from the first file
        name, rows = next(iter(groups.items()))
        n_samples = max(len(raws[name]) - header.signals[rows[0]].byte_offset, 0) // (2 * len(rows))
    for name, rows in groups.items():  # before allocating: a header may claim an absurd sample count
        path, raw, offset = directory / name, raws[name], header.signals[rows[0]].byte_offset
        _check_size(path, len(raw), offset + 2 * len(rows) * n_samples)
        _check_mat_v4(path, raw, offset, len(rows), n_samples)
    out = np.empty((header.n_sig, n_samples), dtype=np.float64)
    for name, rows in groups.items():
        raw, offset = raws[name], header.signals[rows[0]].byte_offset
        digital = np.frombuffer(raw, dtype="<i2", count=len(rows) * n_samples, offset=offset)
        digital = digital.reshape(n_samples, len(rows)).T
        for j, i in enumerate(rows):
            spec = header.signals[i]
            phys = (digital[j].astype(np.float64) - spec.baseline) / spec.gain
            phys[digital[j] == INVALID_16] = np.nan
            out[i] = phys * spec.to_mv
    return out


def _read_with_wfdb(header: Header, directory: Path) -> np.ndarray:
    import wfdb  # deferred: only needed for the rare non-16 formats

    if header.n_samples is not None:
        for file_name, rows in _file_groups(header).items():
            bps = _BYTES_PER_SAMPLE.get(header.signals[rows[0]].fmt)
            if bps is not None:
                path = directory / file_name
                per_frame = sum(header.signals[i].samples_per_frame for i in rows)
                needed = header.signals[rows[0]].byte_offset + math.ceil(bps * per_frame * header.n_samples)
                _check_size(path, path.stat().st_size, needed)
    try:
        rec = wfdb.rdrecord(str(directory / header.record_name), physical=True)
    except Exception as exc:  # wfdb raises many types; all mean "cannot read"
        raise RecordError("unreadable_signal", f"{header.path}: wfdb could not read the signal ({exc})") from None
    signal = np.asarray(rec.p_signal, dtype=np.float64).T
    scale = np.array([s.to_mv for s in header.signals], dtype=np.float64)[:, None]
    return signal * scale


def read_signal(header: Header, directory: str | Path | None = None) -> np.ndarray:
    """Read a record's samples as physical values in mV.

    Format 16 with one sample per frame and no skew is read with numpy; any
    other format goes through ``wfdb.rdrecord`` (which then needs the header in
    ``directory`` under its record name).

    Args:
        header: the parsed header.
        directory: folder of the signal files (default: the header's folder).

    Returns:
        (n_sig, n_samples) float64 array in mV, rows in header order;
        invalid samples (format-16 value -32768) are NaN.

    Raises:
        RecordError: ``missing_file`` when a signal file is absent,
            ``truncated_signal`` when a file is shorter than the header needs,
            ``unreadable_mat`` / ``unreadable_signal`` when it cannot be decoded.
    """
    directory = header.path.parent if directory is None else Path(directory)
    for file_name in _file_groups(header):
        if not (directory / file_name).is_file():
            raise RecordError(
                "missing_file", f"{directory / file_name}: signal file not found (named by {header.path})"
            )
    fast = all(s.fmt == "16" and s.samples_per_frame == 1 and s.skew == 0 for s in header.signals)
    return _read_format16(header, directory) if fast else _read_with_wfdb(header, directory)


def read_record(path: str | Path) -> tuple[Header, np.ndarray]:
    """Parse a header and read its signal.

    Args:
        path: the ``.hea`` file.

    Returns:
        ``(header, signal)`` with signal (n_sig, n_samples) float64 in mV.
    """
    header = parse_header(path)
    return header, read_signal(header)

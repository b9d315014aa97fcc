"""A fast, tolerant reader for WFDB headers and signals.

``wfdb.rdrecord`` is strict about a few quirks of the released 12-lead sets
(e.g. a Georgia header whose record line reads ``E00666.mat 12 ...``) and slow
for the common case. This module parses headers itself and reads format 16
(little-endian int16, frame-interleaved; a MATLAB v4 CinC ``.mat`` is exactly
format 16 with a 24-byte offset, its column-major ``val`` matrix being
frame-interleaved) with numpy directly. Any other format is read through
``wfdb.rdrecord``. Every failure is a :class:`~deri_sweep.data.record.RecordError`
with a named reason and the offending path.

Nothing in a header is trusted: a signal file must lie inside the dataset root
and be a regular file (a FIFO named ``x.hea`` or ``x.dat`` would block a read
forever), be exactly as long as the header says (for the whole-byte formats),
belong to this record, and match the header's checksums when the record is
read whole; gains, units and baselines are checked before any sample is
converted; and only the samples the caller keeps are read (``max_samples``), so
a 24-hour record costs what a 10-second one does.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deri_sweep.data.record import RecordError, canonical_lead

log = logging.getLogger(__name__)

#: WFDB's defaults for an absent/zero gain and an absent sampling rate.
DEFAULT_GAIN = 200.0
DEFAULT_FS = 250.0
#: Format-16 sample value that WFDB reserves for "invalid sample".
INVALID_16 = -32768

#: Physical units of an ECG lead (lower-cased; micro as ``u``, MICRO SIGN, GREEK MU, or the MICRO SIGN's UTF-8
#: bytes once mis-read as cp1252 and saved again, ``Âµ``, lower-cased ``âµ``) -> factor to mV.
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "\u00e2\u00b5v": 1e-3, "v": 1e3}
#: Bits of one stored sample per format: a baseline outside that signed range cannot be a digital value.
#: Format 8 stores first differences, so its samples are not bounded by 8 bits: it gets the int32 range.
_FORMAT_BITS = {"8": 32, "16": 16, "61": 16, "80": 8, "160": 16, "212": 12, "310": 10, "311": 10, "24": 24, "32": 32}
#: Whole-byte formats: a signal file's size is exactly offset + bytes per sample x samples.
_EXACT_SIZE = frozenset({"8", "16", "61", "80", "160", "24", "32"})
#: Bytes and samples of one packed group of the bit-packed formats (212: 2 samples in 3 bytes).
_GROUPS = {"212": (3, 2), "310": (4, 3), "311": (4, 3)}
#: A header larger than this is not a WFDB header (a 12-lead header is ~1 KB).
MAX_HEADER_BYTES = 1 << 20
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
        gain: ADC units per physical unit (200 when absent; 0, WFDB's "uncalibrated", is kept as 0
            and refused when the signal is read; negative inverts the polarity, as in WFDB).
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
        """Factor turning this signal's physical units into mV (1 for units that are not a voltage)."""
        return _UNIT_TO_MV.get(self.units.strip().lower(), 1.0)

    @property
    def is_voltage(self) -> bool:
        """True for mV, uV/µV/μV and V (any case), the units an ECG lead may be written in."""
        return self.units.strip().lower() in _UNIT_TO_MV


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
    except ValueError:  # also Python's 4300-digit limit of int(str)
        shown = token if len(token) <= 40 else f"{token[:20]}... ({len(token)} characters)"
        raise RecordError("bad_header", f"{where}: {what} {shown!r} is not an integer") from None


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
            raise RecordError(
                "bad_header", f"{where}: sampling frequency {tokens[2]!r} is not a finite positive number of Hz"
            )
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
    fmt = m.group(1)
    spf = _int(m.group(2) or "1", "samples per frame", where)
    skew, offset = _int(m.group(3) or "0", "skew", where), _int(m.group(4) or "0", "byte offset", where)
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
        if not math.isfinite(gain):  # a negative gain is legal (inverted polarity); 0 is "uncalibrated"
            raise RecordError("bad_header", f"{where}: gain {tokens[2]!r} is not a finite number")
        if g.group(2) is not None:
            baseline = _int(g.group(2), "baseline", where)
        units = g.group(3) or "mV"
    lead_name = " ".join(tokens[8:])
    return SignalSpec(tokens[0], fmt, spf, skew, offset, gain, baseline, units, adc_res, adc_zero, init_value, checksum,
                      block_size, lead_name)  # fmt: skip


def regular_file(path: Path, what: str, named_by: Path | None = None) -> os.stat_result:
    """Stat ``path`` and make sure it is a regular file before anything opens it.

    A FIFO would block ``open`` forever, a device could be endless, a folder
    cannot be read: each is refused by name.

    Args:
        path: the file.
        what: what it is, for the message (``"header"``, ``"signal file"``).
        named_by: the header that names it, if any.

    Returns:
        The file's ``stat`` result (symlinks followed).

    Raises:
        RecordError: ``missing_file`` when it does not exist or cannot be
            reached, ``not_a_file`` when it is a FIFO, device, socket or folder.
    """
    by = f" (named by {named_by})" if named_by is not None else ""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise RecordError("missing_file", f"{path}: {what} not found{by}") from None
    except OSError as exc:
        raise RecordError("missing_file", f"{path}: cannot reach the {what}{by} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a folder" if stat.S_ISDIR(info.st_mode)
            else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
            else "a device or socket"
        )  # fmt: skip
        raise RecordError("not_a_file", f"{path}: the {what}{by} is {kind}, not a regular file; remove or replace it")
    return info


def _decode_header(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (a BOM, as Windows Notepad writes, dropped), else Windows-1252.

    WFDB headers are ASCII; a non-ASCII byte is nearly always a ``µ`` in units
    or a comment written by a Windows editor, which cp1252 decodes right.
    """
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def parse_header(path: str | Path) -> Header:
    """Parse one WFDB ``.hea`` file.

    Args:
        path: the header file.

    Returns:
        The parsed :class:`Header`.

    Raises:
        RecordError: ``missing_file`` when the file does not exist,
            ``not_a_file`` for a FIFO, device or folder, ``bad_header`` when the
            record line's name differs from the file stem, any line is
            malformed or the file is larger than :data:`MAX_HEADER_BYTES`.
    """
    path = Path(path)
    size = regular_file(path, "header").st_size
    if size > MAX_HEADER_BYTES:
        raise RecordError(
            "bad_header", f"{path}: {size} bytes is too large for a WFDB header (limit {MAX_HEADER_BYTES})"
        )
    try:
        text = _decode_header(path.read_bytes())
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


def _is_lead(spec: SignalSpec) -> bool:
    return canonical_lead(spec.lead_name) is not None


def check_calibration(header: Header) -> None:
    """Refuse a header whose numbers cannot turn its samples into millivolts.

    Only the 12 standard leads need a voltage unit and a gain (another signal of
    the record, e.g. a respiration channel in mmHg, is read and then dropped);
    every signal's baseline must be a value its format can store.

    Raises:
        RecordError: ``not_ecg_units`` (units other than mV, uV/µV, V),
            ``uncalibrated`` (gain 0) or ``bad_baseline`` (a baseline outside
            the format's digital range).
    """
    for spec in header.signals:
        bits = _FORMAT_BITS.get(spec.fmt, 32)
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if not low <= spec.baseline <= high:
            shown = (
                str(spec.baseline)
                if len(str(spec.baseline)) <= 24
                else f"{str(spec.baseline)[:20]}... ({len(str(spec.baseline))} digits)"
            )
            raise RecordError(
                "bad_baseline",
                f"{header.path}: lead {spec.lead_name or '?'}: baseline {shown} is outside the {low}..{high} range "
                f"of format {spec.fmt}; fix the header's gain field (gain(baseline)/units)",
            )
        if not _is_lead(spec):
            continue
        if not spec.is_voltage:
            raise RecordError(
                "not_ecg_units",
                f"{header.path}: lead {spec.lead_name} is in {spec.units!r}, not a voltage (mV, uV, V); "
                "this is not an ECG lead or the header's units are wrong",
            )
        if spec.gain == 0:
            raise RecordError(
                "uncalibrated",
                f"{header.path}: lead {spec.lead_name} has gain 0, which WFDB defines as uncalibrated; "
                "its amplitude in mV is unknown (write the ADC gain into the header to use it)",
            )


def _signal_path(header: Header, directory: Path, root: Path, file_name: str) -> tuple[Path, int]:
    """The checked path and size of one signal file of ``header``."""
    path = directory / file_name
    inside = os.path.normpath(os.path.abspath(path))
    top = os.path.normpath(os.path.abspath(root))
    if os.path.commonpath([inside, top]) != top:
        raise RecordError(
            "outside_root",
            f"{header.path}: signal file {file_name!r} lies outside the dataset root {root} ({inside}); "
            "a record's files must be inside the root: fix the header's file name",
        )
    stem = Path(file_name).name.split(".")[0]
    if stem != header.record_name and (path.parent / f"{stem}.hea").exists():
        raise RecordError(
            "wrong_signal_file",
            f"{header.path}: names signal file {file_name!r}, which belongs to record {stem} "
            f"({path.parent / (stem + '.hea')}); fix the header to name {header.record_name}'s own file",
        )
    return path, regular_file(path, "signal file", header.path).st_size


def _check_mat_prologue(path: Path, head: bytes) -> None:
    """Name the files that end in ``.mat`` but are not the MATLAB v4 matrix a WFDB record stores."""
    if path.suffix.lower() != ".mat":
        return
    if head[:2] == b"\x1f\x8b":
        raise RecordError("unreadable_mat", f"{path}: is gzip-compressed; decompress it (gunzip) and try again")
    if head[:4] == b"\x89HDF" or head[:10] == b"MATLAB 7.3":
        raise RecordError(
            "unreadable_mat", f"{path}: is a MATLAB v7.3 (HDF5) file; a WFDB .mat must be a MATLAB v4 matrix"
        )
    if head[:6] == b"MATLAB":
        raise RecordError(
            "unreadable_mat", f"{path}: is a MATLAB v5 file; a WFDB .mat must be a MATLAB v4 matrix (save -v4)"
        )


def _check_size(path: Path, size: int, needed: int, *, exact: bool, group: int = 1) -> None:
    """A file shorter than the header needs is truncated; for exact formats a longer one is a mismatch."""
    if size < needed:
        raise RecordError("truncated_signal", f"{path}: has {size} bytes, header needs {needed}")
    allowed = needed if exact else needed + group - 1
    if size > allowed:
        raise RecordError(
            "size_mismatch",
            f"{path}: has {size} bytes, {size - needed} more than the header's signals need ({needed}); "
            "the header does not describe this file (other signal count, format or length)",
        )


def _check_mat_v4(path: Path, raw: bytes, offset: int, n_rows: int, n_cols: int) -> None:
    """Check a MATLAB v4 ``.mat`` prologue against the header (int16 rows x cols)."""
    if path.suffix.lower() != ".mat" or offset < 20 or len(raw) < 20:
        return
    mopt, rows, cols, imag, _ = np.frombuffer(raw, dtype="<i4", count=5)
    if mopt != 30 or imag != 0:
        raise RecordError("unreadable_mat", f"{path}: not a little-endian int16 MATLAB v4 matrix (type {mopt})")
    if rows != n_rows or cols != n_cols:
        raise RecordError(
            "size_mismatch" if cols > n_cols else "truncated_signal",
            f"{path}: holds a {rows}x{cols} matrix, header needs {n_rows}x{n_cols}",
        )


def _check_checksums(header: Header, rows: list[int], sums: list[int], path: Path) -> None:
    """Compare 16-bit sums of the digital samples with the header's checksums (where written)."""
    for i, total in zip(rows, sums, strict=True):
        spec = header.signals[i]
        if spec.checksum is not None and (total - spec.checksum) % 65536:
            raise RecordError(
                "checksum_mismatch",
                f"{header.path}: lead {spec.lead_name or i + 1}: the samples of {path.name} sum to "
                f"{total % 65536} (mod 65536), the header's checksum is {spec.checksum % 65536}; "
                "the signal file is not this header's (or is damaged)",
            )


def _read_format16(header: Header, files: dict[str, tuple[Path, int]], max_samples: int | None) -> np.ndarray:
    groups = _file_groups(header)
    n_samples = header.n_samples
    if n_samples is None:  # WFDB allows leaving the length out: infer it from the first file
        name, rows = next(iter(groups.items()))
        n_samples = max(files[name][1] - header.signals[rows[0]].byte_offset, 0) // (2 * len(rows))
    for name, rows in groups.items():  # before allocating: a header may claim an absurd sample count
        (path, size), offset = files[name], header.signals[rows[0]].byte_offset
        with open(path, "rb") as fh:
            head = fh.read(max(offset, 20))
        _check_mat_prologue(path, head)
        exact = header.n_samples is not None  # an inferred length may leave a partial frame at the end
        _check_size(path, size, offset + 2 * len(rows) * n_samples, exact=exact, group=1 if exact else 2 * len(rows))
        _check_mat_v4(path, head, offset, len(rows), n_samples)
    n_read = n_samples if max_samples is None else min(n_samples, max_samples)
    out = np.empty((header.n_sig, n_read), dtype=np.float64)
    for name, rows in groups.items():
        (path, _), offset = files[name], header.signals[rows[0]].byte_offset
        with open(path, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(2 * len(rows) * n_read)
        digital = np.frombuffer(raw, dtype="<i2", count=len(rows) * n_read).reshape(n_read, len(rows)).T
        if n_read == n_samples:  # the whole record is in hand: its checksums cost nothing
            _check_checksums(header, rows, [int(v) for v in digital.astype(np.int64).sum(axis=1)], path)
        for j, i in enumerate(rows):
            spec = header.signals[i]
            phys = (digital[j].astype(np.float64) - spec.baseline) / (spec.gain or DEFAULT_GAIN)
            phys[digital[j] == INVALID_16] = np.nan
            out[i] = phys * spec.to_mv
    return out


def _read_with_wfdb(
    header: Header, files: dict[str, tuple[Path, int]], directory: Path, max_samples: int | None
) -> np.ndarray:
    import wfdb  # deferred: only needed for the rare non-16 formats

    for file_name, rows in _file_groups(header).items():
        path, size = files[file_name]
        spec = header.signals[rows[0]]
        with open(path, "rb") as fh:
            _check_mat_prologue(path, fh.read(16))
        bps = _BYTES_PER_SAMPLE.get(spec.fmt)
        if bps is not None and header.n_samples is not None:
            per_frame = sum(header.signals[i].samples_per_frame for i in rows)
            needed = spec.byte_offset + math.ceil(bps * per_frame * header.n_samples)
            group = _GROUPS.get(spec.fmt, (1, 1))[0]
            _check_size(path, size, needed, exact=spec.fmt in _EXACT_SIZE and spec.skew == 0, group=group)
    n_samples = header.n_samples
    sampto = None if max_samples is None or n_samples is None or max_samples >= n_samples else max_samples
    record = str(directory / header.record_name)
    verify = sampto is None and any(s.checksum is not None and s.skew == 0 for s in header.signals)
    sums: list[int] = []
    try:
        rec = wfdb.rdrecord(record, physical=True, sampto=sampto)
        if verify:  # the whole record is read: its checksums, over every sample of every frame
            digital = wfdb.rdrecord(record, physical=False, smooth_frames=False, return_res=64)
            sums = [int(np.sum(np.asarray(x, dtype=np.int64))) for x in digital.e_d_signal]
    except Exception as exc:  # wfdb raises many types; all mean "cannot read"
        raise RecordError("unreadable_signal", f"{header.path}: wfdb could not read the signal ({exc})") from None
    if verify:
        rows = [i for i, s in enumerate(header.signals) if s.skew == 0]
        _check_checksums(header, rows, [sums[i] for i in rows], directory / header.signals[0].file_name)
    signal = np.asarray(rec.p_signal, dtype=np.float64).T
    scale = np.array([s.to_mv for s in header.signals], dtype=np.float64)[:, None]
    return signal * scale


def read_signal(
    header: Header,
    directory: str | Path | None = None,
    *,
    root: str | Path | None = None,
    max_samples: int | None = None,
) -> np.ndarray:
    """Read a record's samples as physical values in mV.

    Format 16 with one sample per frame and no skew is read with numpy; any
    other format goes through ``wfdb.rdrecord`` (which then needs the header in
    ``directory`` under its record name).

    Args:
        header: the parsed header.
        directory: folder of the signal files (default: the header's folder).
        root: the dataset root; every signal file must lie inside it (default:
            ``directory``).
        max_samples: read at most this many samples per signal from the start
            (``None``: all). The checksums are verified when the whole record is read.

    Returns:
        (n_sig, min(n_samples, max_samples)) float64 array in mV, rows in header
        order; invalid samples (format-16 value -32768) are NaN.

    Raises:
        RecordError: ``missing_file`` / ``not_a_file`` / ``outside_root`` /
            ``wrong_signal_file`` for a signal file that is absent, not a regular
            file, outside the root or another record's; ``truncated_signal`` /
            ``size_mismatch`` when its size differs from the header's;
            ``checksum_mismatch``; ``not_ecg_units`` / ``uncalibrated`` /
            ``bad_baseline`` (see :func:`check_calibration`);
            ``unreadable_mat`` / ``unreadable_signal`` when it cannot be decoded.
    """
    directory = header.path.parent if directory is None else Path(directory)
    root = directory if root is None else Path(root)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    check_calibration(header)
    files = {name: _signal_path(header, directory, root, name) for name in _file_groups(header)}
    fast = all(s.fmt == "16" and s.samples_per_frame == 1 and s.skew == 0 for s in header.signals)
    if fast:
        return _read_format16(header, files, max_samples)
    return _read_with_wfdb(header, files, directory, max_samples)


def read_record(path: str | Path, max_samples: int | None = None) -> tuple[Header, np.ndarray]:
    """Parse a header and read its signal.

    Args:
        path: the ``.hea`` file.
        max_samples: read at most this many samples per signal (``None``: all).

    Returns:
        ``(header, signal)`` with signal (n_sig, n_samples) float64 in mV.
    """
    header = parse_header(path)
    return header, read_signal(header, max_samples=max_samples)

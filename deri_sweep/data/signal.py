"""Signal conditioning shared by every reader: lead mapping, repair, resampling, length.

The order of operations for one record (spec sections 1 and 8) is

1. map leads by name into :data:`~deri_sweep.data.record.CANONICAL_LEADS`;
2. repair non-finite samples by linear interpolation along time, zeroing a lead
   that has no finite sample (the record is then *degraded*);
3. reject flat leads (a disconnected electrode) unless allowed;
4. resample to 500 Hz with a polyphase filter;
5. keep the first ``window`` samples and zero-pad at the end to ``length``.

Normalisation (``minmax_record`` / ``zscore_lead``) is applied when batches are
read for training, not here, so that caches store physical units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from deri_sweep.data.record import CANONICAL_LEADS, TARGET_FS, TARGET_LEN, RecordError, canonical_lead

NormMode = Literal["minmax_record", "zscore_lead", "none"]


@dataclass(frozen=True)
class SignalOptions:
    """How raw signals become canonical arrays.

    Attributes:
        fs: target sampling rate in Hz.
        length: output length in samples at ``fs``.
        window: samples kept from the start before zero-padding to ``length``
            (5000: the project default; 2500: the CPSC2018 reference protocol).
        allow_flat_leads: keep records with a constant (disconnected) lead.
        max_nonfinite_fraction: skip a record when more than this fraction of
            its samples are non-finite (NaN/inf), even though it could be repaired.
        max_dead_leads: skip a record with more leads than this that have no
            finite sample (fewer are zeroed, and the record is kept with a warning).
        min_seconds: skip a source record shorter than this (a 2-sample record
            would otherwise be 4998 samples of padding).
        source_fs_range: (low, high) Hz; a header rate outside it is a typo (5 Hz
            for 500 Hz stretches a 10 s record to 1000 s), the record is skipped.
        amplitude_range_mv: (low, high) mV for the median peak-to-peak amplitude
            of the live leads; outside it the header's gain or units are wrong
            (``1000/uV`` makes a signal 1000x too small), the record is skipped.
    """

    fs: int = TARGET_FS
    length: int = TARGET_LEN
    window: int = TARGET_LEN
    allow_flat_leads: bool = False
    max_nonfinite_fraction: float = 0.5
    max_dead_leads: int = 2
    min_seconds: float = 4.0
    source_fs_range: tuple[float, float] = (50.0, 10000.0)
    amplitude_range_mv: tuple[float, float] = (0.05, 30.0)

    def __post_init__(self) -> None:
        if self.fs <= 0 or self.length <= 0 or self.window <= 0:
            raise ValueError(f"SignalOptions needs positive fs/length/window, got {self}")
        if self.window > self.length:
            raise ValueError(f"SignalOptions.window ({self.window}) exceeds length ({self.length})")
        if not 0.0 <= self.max_nonfinite_fraction <= 1.0 or not 0 <= self.max_dead_leads <= 12:
            raise ValueError(
                f"--max-nonfinite-fraction must lie in [0, 1] and --max-dead-leads in 0..12, got "
                f"{self.max_nonfinite_fraction} and {self.max_dead_leads}"
            )
        if self.min_seconds < 0:
            raise ValueError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        for name, (low, high) in (
            ("--source-fs-range", self.source_fs_range),
            ("--amplitude-range", self.amplitude_range_mv),
        ):
            if not 0 <= low < high:
                raise ValueError(f"{name} needs 0 <= LOW < HIGH, got {low} {high}")


def order_leads(signal: np.ndarray, lead_names: list[str], source: str) -> np.ndarray:
    """Put the rows of ``signal`` into canonical lead order by name.

    Args:
        signal: (L, N) array, one row per lead named in ``lead_names``.
        lead_names: names as written in the header, any case.
        source: file name used in error messages.

    Returns:
        (12, N) float64 array in :data:`CANONICAL_LEADS` order.

    Raises:
        RecordError: ``missing_leads`` when a standard lead is absent,
            ``bad_header`` when a lead is listed twice.
    """
    rows: dict[str, int] = {}
    for i, name in enumerate(lead_names):
        canon = canonical_lead(name)
        if canon is None:
            continue
        if canon in rows:
            raise RecordError("bad_header", f"{source}: lead {canon} appears twice")
        rows[canon] = i
    missing = [lead for lead in CANONICAL_LEADS if lead not in rows]
    if missing:
        raise RecordError("missing_leads", f"{source}: no lead(s) {', '.join(missing)} (has {lead_names})")
    return np.asarray(signal, dtype=np.float64)[[rows[lead] for lead in CANONICAL_LEADS]]


def repair_nonfinite(signal: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Interpolate non-finite samples linearly along time, lead by lead.

    Args:
        signal: (L, N) float array; a repaired copy is returned.

    Returns:
        ``(repaired (L, N), number of samples repaired, dead (L,) bool)`` where
        ``dead`` marks leads with no finite sample, which became zeros (the
        record is then *degraded*).
    """
    bad = ~np.isfinite(signal)
    dead = np.zeros(signal.shape[0], dtype=bool)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return signal, 0, dead
    out = np.array(signal, dtype=np.float64, copy=True)
    t = np.arange(out.shape[1])
    for lead in np.flatnonzero(bad.any(axis=1)):
        good = ~bad[lead]
        if not good.any():
            out[lead] = 0.0
            dead[lead] = True
        else:
            out[lead, ~good] = np.interp(t[~good], t[good], out[lead, good])
    return out, n_bad, dead


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resample along the last axis with a polyphase anti-aliasing filter.

    Args:
        signal: (L, N) array at ``fs_in`` Hz.
        fs_in: source rate, any positive value (100, 257, 1000 ...).
        fs_out: target rate.

    Returns:
        (L, round(N * fs_out / fs_in)) array at ``fs_out`` Hz.
    """
    if fs_in == fs_out:
        return signal
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    from scipy.signal import resample_poly  # here: readers of a prepared cache never resample (1.5 s import)

    return resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)


def source_samples_needed(fs_in: float, options: SignalOptions) -> int:
    """Source samples that decide the kept output exactly: the window plus the resampling filter's reach.

    ``resample_poly``'s output sample ``k`` depends only on the input samples
    within its filter's half-length around ``k * fs_in / fs_out``, so reading
    this many samples from the start gives the same first ``window`` output
    samples, bit for bit, as resampling the whole record.

    Args:
        fs_in: source rate in Hz.
        options: target rate and window.

    Returns:
        Samples per lead to read from the start of the source.
    """
    if fs_in == options.fs:
        return options.window
    ratio = Fraction(options.fs / fs_in).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    if up == 0:  # an absurd rate (1e300 Hz): conform refuses it (--source-fs-range); read no more than the window
        return options.window
    reach = 10 * max(up, down) // up + 2  # resample_poly's default filter: 10 zero crossings per side
    return math.ceil(options.window * down / up) + reach


def fit_length(signal: np.ndarray, window: int, length: int) -> np.ndarray:
    """Keep the first ``window`` samples and zero-pad at the end to ``length``.

    Args:
        signal: (L, N) array.
        window: samples kept from the start.
        length: output length.

    Returns:
        (L, length) float32 array.
    """
    out = np.zeros((signal.shape[0], length), dtype=np.float32)
    n = min(window, signal.shape[1])
    out[:, :n] = signal[:, :n]
    return out


def conform(
    signal: np.ndarray,
    lead_names: list[str],
    fs: float,
    options: SignalOptions,
    source: str,
    total_samples: int | None = None,
) -> tuple[np.ndarray, int, tuple[str, ...]]:
    """Run the whole conditioning pipeline on one raw record, with its plausibility checks.

    Args:
        signal: (L, N) raw samples in mV, rows named by ``lead_names``.
        lead_names: lead names from the header.
        fs: sampling rate of ``signal`` in Hz.
        options: target rate, length, policies and plausibility limits.
        source: file name used in error messages.
        total_samples: length of the whole source record when ``signal`` holds
            only its start (see :func:`source_samples_needed`); the minimum
            duration is checked on it. ``None``: ``signal`` is the whole record.

    Returns:
        ``(signal (12, options.length) float32, repaired samples, dead leads)``;
        the dead leads (no finite sample, now zeros) make the record *degraded*.

    Raises:
        RecordError: ``missing_leads``, ``empty_signal``, ``implausible_rate``,
            ``too_short``, ``nonfinite`` (too many bad samples), ``dead_leads``
            (too many leads without a finite sample), ``flat_lead`` or
            ``implausible_amplitude``.
    """
    x = order_leads(signal, lead_names, source)
    if x.shape[1] == 0:
        raise RecordError("empty_signal", f"{source}: the signal has no samples")
    low, high = options.source_fs_range
    if not low <= fs <= high:
        raise RecordError(
            "implausible_rate",
            f"{source}: sampling rate {fs:g} Hz is outside {low:g}-{high:g} Hz (a typo in the header?)",
        )
    n_total = x.shape[1] if total_samples is None else max(total_samples, x.shape[1])
    seconds = n_total / fs
    if seconds < options.min_seconds:
        raise RecordError(
            "too_short",
            f"{source}: {n_total} samples at {fs:g} Hz = {seconds:.1f} s, shorter than the minimum "
            f"{options.min_seconds:g} s (--min-seconds)",
        )
    x, n_bad, dead = repair_nonfinite(x)
    if n_bad > options.max_nonfinite_fraction * x.size:
        raise RecordError(
            "nonfinite",
            f"{source}: {n_bad} of {x.size} samples are NaN/inf (limit {options.max_nonfinite_fraction:.0%})",
        )
    dead_leads = tuple(CANONICAL_LEADS[i] for i in np.flatnonzero(dead))
    if len(dead_leads) > options.max_dead_leads:
        raise RecordError(
            "dead_leads",
            f"{source}: {len(dead_leads)} of 12 leads have no finite sample ({', '.join(dead_leads)}); "
            f"limit {options.max_dead_leads} (--max-dead-leads)",
        )
    ptp = np.ptp(x, axis=1)
    if not options.allow_flat_leads:
        flat = [CANONICAL_LEADS[i] for i in np.flatnonzero((ptp < 1e-6) & ~dead)]
        if flat:
            raise RecordError("flat_lead", f"{source}: constant lead(s) {', '.join(flat)} (electrode off?)")
    live = ptp[~dead & (ptp >= 1e-6)]
    amplitude = float(np.median(live)) if live.size else 0.0
    low, high = options.amplitude_range_mv
    if live.size and not low <= amplitude <= high:
        raise RecordError(
            "implausible_amplitude",
            f"{source}: median peak-to-peak amplitude {amplitude:.3g} mV is outside {low:g}-{high:g} mV "
            "(wrong gain or units in the header?)",
        )
    x = resample(x, fs, options.fs)
    return fit_length(x, options.window, options.length), n_bad, dead_leads


def normalise(batch: np.ndarray, mode: NormMode) -> np.ndarray:
    """Normalise a batch of canonical signals (spec section 1).

    Args:
        batch: (B, 12, N) float32 in mV.
        mode: ``minmax_record`` scales each record by one min and max over its
            whole 12 x N array to [0, 1] (the reference); ``zscore_lead``
            standardises each lead of each record; ``none`` returns the input.

    Returns:
        (B, 12, N) float32.
    """
    if mode == "none":
        return batch
    if mode == "minmax_record":
        lo = batch.min(axis=(1, 2), keepdims=True)
        hi = batch.max(axis=(1, 2), keepdims=True)
        return (batch - lo) / np.maximum(hi - lo, 1e-8)
    if mode == "zscore_lead":
        mu = batch.mean(axis=2, keepdims=True)
        sd = batch.std(axis=2, keepdims=True)
        return (batch - mu) / np.maximum(sd, 1e-8)
    raise ValueError(f"unknown normalisation {mode!r}; choose minmax_record, zscore_lead or none")

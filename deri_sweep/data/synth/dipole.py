"""Procedural 12-lead ECG generator: a cardiac dipole projected on the standard leads.

The heart is one 3-D dipole ``d(t)`` in body axes x (patient's left), y (inferior),
z (anterior). Each beat adds Gaussian-shaped waves to it (P, QRS, ST, T), each with
its own time offset from the R peak, width and 3-D direction, so every wave forms
a loop. Leads I, II and V1..V6 are projections of ``d(t)`` on fixed lead vectors
(rotated per subject: random heart axis); III, aVR, aVL and aVF are then derived
from I and II exactly as Einthoven and Goldberger define them. Conditions change
the beat timing (RR series, PR) and the wave set (BBB, LVH, ST-T, ectopic beats).

Condition strings (:class:`Condition`): one rhythm out of SR, SBRAD, STACH, AFIB
(SR when none is given; ``NORM`` is accepted as SR) plus any compatible subset of
1AVB, RBBB, LBBB, STE, STD, TINV, LVH, PAC, PVC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Condition(str, Enum):
    """Conditions the generator renders; the values are the strings used everywhere."""

    SR = "SR"  # sinus rhythm 60-95 bpm
    SBRAD = "SBRAD"  # sinus bradycardia < 60 bpm
    STACH = "STACH"  # sinus tachycardia > 100 bpm
    AFIB = "AFIB"  # atrial fibrillation: irregular RR, f-waves, no P
    PAC = "PAC"  # premature atrial beats with abnormal P
    PVC = "PVC"  # premature wide bizarre beats without P
    AVB1 = "1AVB"  # first-degree AV block: PR > 200 ms
    RBBB = "RBBB"  # wide QRS with late R' in V1, terminal S in I/V6
    LBBB = "LBBB"  # wide notched R in I/V5/V6, deep S in V1, discordant ST-T
    LVH = "LVH"  # high QRS voltage
    STE = "STE"  # anterior ST elevation (injury)
    STD = "STD"  # lateral/inferior ST depression
    TINV = "TINV"  # T-wave inversion


CONDITIONS: frozenset[str] = frozenset(c.value for c in Condition)
RHYTHMS: tuple[str, ...] = ("SR", "SBRAD", "STACH", "AFIB")
#: Pairs that may not occur together (clinically incompatible or label-ambiguous).
EXCLUSIVE: tuple[tuple[str, str], ...] = (
    ("AFIB", "1AVB"), ("AFIB", "PAC"), ("STACH", "1AVB"), ("RBBB", "LBBB"),
    ("LBBB", "LVH"), ("LBBB", "STE"), ("LBBB", "STD"), ("LBBB", "TINV"), ("STE", "STD"),
)  # fmt: skip
_RATES = {"SR": (60.0, 95.0), "SBRAD": (40.0, 57.0), "STACH": (105.0, 150.0), "AFIB": (65.0, 140.0)}
_CHEST_ANGLES = np.radians([120.0, 100.0, 80.0, 60.0, 30.0, 0.0])  # V1..V6, from +x toward +z
_CHEST_GAIN = np.array([1.0, 1.6, 1.6, 1.5, 1.2, 1.0])
_CHEST_Y = np.array([0.0, 0.0, 0.05, 0.1, 0.1, 0.1])
_LEADS8 = np.vstack(
    [[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]]
    + [[g * math.cos(a), y, g * math.sin(a)] for a, g, y in zip(_CHEST_ANGLES, _CHEST_GAIN, _CHEST_Y, strict=True)]
)  # (8, 3)
P_, QRS_, ST_, T_ = 0, 1, 2, 3  # wave kinds; ST and T move with the QT interval
# Waves relative to the R peak: (offset s, sigma s, kind, direction x y z, amplitude mV).
_QRS_NORMAL = [(-0.022, 0.007, QRS_, -0.3, 0.1, 0.5, 0.35), (-0.006, 0.009, QRS_, 0.5, 0.6, 0.25, 1.1),
               (0.008, 0.009, QRS_, 0.6, 0.6, -0.5, 1.2), (0.026, 0.008, QRS_, -0.3, -0.4, -0.5, 0.5)]  # fmt: skip
_QRS_LBBB = [(-0.035, 0.010, QRS_, 0.4, 0.1, -0.3, 0.2), (-0.005, 0.016, QRS_, 0.75, 0.35, -0.45, 1.3),
             (0.045, 0.016, QRS_, 0.75, 0.25, -0.6, 1.4), (0.14, 0.05, ST_, -0.5, -0.2, 0.6, 0.15)]  # fmt: skip


def validate_conditions(conditions: Iterable[str]) -> frozenset[str]:
    """Check a condition set and fill in the rhythm.

    Args:
        conditions: condition strings (``NORM`` is read as ``SR``).

    Returns:
        The set with exactly one rhythm.

    Raises:
        ValueError: unknown condition, two rhythms, or an incompatible pair.
    """
    conds = {c.value if isinstance(c, Condition) else str(c) for c in conditions}
    conds = {"SR" if c == "NORM" else c for c in conds}
    unknown = conds - CONDITIONS
    if unknown:
        raise ValueError(f"unknown condition(s) {sorted(unknown)}; known: {sorted(CONDITIONS)}")
    rhythms = conds.intersection(RHYTHMS)
    if len(rhythms) > 1:
        raise ValueError(f"more than one rhythm in {sorted(conds)}")
    if not rhythms:
        conds.add("SR")
    for a, b in EXCLUSIVE:
        if a in conds and b in conds:
            raise ValueError(f"conditions {a} and {b} cannot be combined")
    return frozenset(conds)


@dataclass(frozen=True)
class Subject:
    """Per-subject constants: heart orientation, size, electrode placement, noise.

    Attributes:
        rotation: (3, 3) rotation of the heart (frontal axis and horizontal turn).
        amplitude: overall voltage scale.
        chest_gain: (6,) per-electrode gain of V1..V6.
        noise_mv: standard deviation of white noise in mV.
    """

    rotation: np.ndarray
    amplitude: float
    chest_gain: np.ndarray
    noise_mv: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Subject:
        """Draw a random subject (frontal axis turned by N(0, 18) deg, clipped at 40, from about +50 deg)."""
        a, b = np.radians(np.clip(rng.normal(0.0, 18.0), -40, 40)), np.radians(np.clip(rng.normal(0.0, 8.0), -15, 15))
        rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[math.cos(b), 0.0, -math.sin(b)], [0.0, 1.0, 0.0], [math.sin(b), 0.0, math.cos(b)]])
        gains = rng.lognormal(0.0, 0.08, 6)
        return cls(rz @ ry, float(rng.lognormal(0.0, 0.18)), gains, float(rng.uniform(0.005, 0.03)))


@dataclass(frozen=True)
class EcgInfo:
    """What was drawn for one record (for machine measurements and tests).

    Attributes:
        r_times: (B,) R-peak times in seconds of beats inside the strip.
        beat_types: (B,) 0 conducted, 1 PAC, 2 PVC.
        heart_rate: mean rate in bpm.
        pr_ms: PR interval (``None`` in AF); qrs_ms / qt_ms: nominal durations.
        p_axis, qrs_axis, t_axis: frontal-plane axes in degrees (p ``None`` in AF).
    """

    r_times: np.ndarray
    beat_types: np.ndarray
    heart_rate: float
    pr_ms: float | None
    qrs_ms: float
    qt_ms: float
    p_axis: float | None
    qrs_axis: float
    t_axis: float


def _unit(v: Iterable[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _template(conds: frozenset[str], rng: np.random.Generator, pr: float) -> dict[int, np.ndarray]:
    """Build the wave table of each beat type: rows (offset s, sigma s, kind, vx, vy, vz)."""
    c = conds
    qrs: list[tuple] = list(_QRS_NORMAL)
    t_vec, t_amp = (0.55, 0.55, 0.45), rng.uniform(0.25, 0.4)
    if "RBBB" in c:
        r2 = rng.uniform(0.6, 0.9)  # late R' loop: rightward and anterior
        qrs += [(0.052, 0.014, QRS_, -0.7, 0.0, 0.7, r2), (0.076, 0.014, QRS_, -0.5, 0.3, 0.6, 0.6 * r2)]
        t_vec = (0.6, 0.5, 0.1)
    if "LBBB" in c:
        qrs = list(_QRS_LBBB)
        t_vec = (-0.6, -0.2, 0.7)
    if "LVH" in c:
        k = rng.uniform(1.8, 2.4)
        qrs = [(*w[:6], w[6] * k) for w in qrs]
    if "TINV" in c:
        t_amp = -t_amp * rng.uniform(0.6, 1.1)
    beat = [*qrs, (0.21, 0.05, T_, *t_vec, 0.7 * t_amp), (0.27, 0.04, T_, *t_vec, t_amp)]
    if "STE" in c:
        beat.append((0.13, 0.055, ST_, 0.15, -0.15, 0.95, rng.uniform(0.15, 0.3)))
    if "STD" in c:
        beat.append((0.12, 0.05, ST_, -0.6, -0.5, -0.3, rng.uniform(0.12, 0.22)))
    p_c = -pr + 0.01  # P centre: P onset = centre - 50 ms, QRS onset = R - 40 ms
    p_waves = [(p_c - 0.012, 0.018, P_, 0.2, 0.7, 0.35, 0.10), (p_c + 0.014, 0.018, P_, 0.55, 0.5, -0.3, 0.09)]
    sinus = beat if "AFIB" in c else beat + p_waves
    pac = [*beat, (p_c, 0.02, P_, 0.35, -0.7, 0.3, 0.12)]
    u = _unit(rng.normal(size=3))
    w = _unit(u + 0.9 * _unit(rng.normal(size=3)))
    pvc = [(0.0, 0.02, QRS_, *u, 1.6), (0.045, 0.025, QRS_, *w, 1.1), (0.30, 0.06, T_, *(-u), 0.5)]
    out = {}
    for kind, rows in ((0, sinus), (1, pac), (2, pvc)):
        a = np.array(rows, dtype=np.float64)
        out[kind] = np.column_stack([a[:, :3], _unit(a[:, 3:6]) * a[:, 6:7]])
    return out


def _beats(conds: frozenset[str], rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw R-peak times (s) and beat types (0 normal, 1 PAC, 2 PVC) from a little before 0 to past the end."""
    rhythm = next(r for r in RHYTHMS if r in conds)
    rr0 = 60.0 / rng.uniform(*_RATES[rhythm])
    n_exp = max(3, int(seconds / rr0))
    ectopic: dict[int, int] = {}
    for kind, name in ((1, "PAC"), (2, "PVC")):
        if name in conds:
            k = int(rng.integers(1, 4)) * max(1, round(seconds / 10.0))
            for i in rng.choice(np.arange(1, n_exp), size=min(k, n_exp - 1), replace=False):
                ectopic.setdefault(int(i), kind)
    resp, phase = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * math.pi)
    t, times, types, i = -rng.uniform(0.2, 1.0) * rr0, [], [], 0
    while t < seconds + 0.4:
        times.append(t)
        kind = ectopic.get(i, 0)
        types.append(kind)
        if "AFIB" in conds:
            rr = float(np.clip(rr0 * rng.lognormal(0.0, 0.24), 0.3, 2.0))
        else:
            rr = rr0 * (1.0 + 0.03 * math.sin(2 * math.pi * t / resp + phase) + 0.01 * rng.normal())
        if ectopic.get(i + 1, 0):
            rr *= rng.uniform(0.55, 0.72)
        elif kind == 2:
            rr = 2.0 * rr0 - (t - times[-2]) if len(times) > 1 else rr
        elif kind == 1:
            rr *= rng.uniform(1.0, 1.12)
        t, i = t + max(rr, 0.25), i + 1
    return np.asarray(times), np.asarray(types)


def _render(waves: np.ndarray, fs: int, n: int) -> np.ndarray:
    """Sum (W, 6) Gaussian waves (centre s, sigma s, kind, vx, vy, vz) into a (3, n) dipole in mV."""
    out = np.zeros((3, n + 2))
    narrow = waves[:, 1] <= 0.025
    for group in (waves[narrow], waves[~narrow]):
        if not len(group):
            continue
        half = math.ceil(4.0 * group[:, 1].max() * fs)
        idx = np.rint(group[:, 0] * fs).astype(np.int64)[:, None] + np.arange(-half, half + 1)  # (W, K)
        g = np.exp(-0.5 * ((idx / fs - group[:, 0:1]) / group[:, 1:2]) ** 2)  # (W, K)
        bins = (np.clip(idx, -1, n) + 1).ravel()
        for c in range(3):
            out[c] += np.bincount(bins, (g * group[:, 3 + c, None]).ravel(), n + 2)
    return out[:, 1 : n + 1]


def _slow_sines(freq: np.ndarray, phase: np.ndarray, amp: np.ndarray, fs: int, n: int, step: int) -> np.ndarray:
    """(R, n) sums of S sines per row, (R, S) ``freq`` Hz / ``phase`` rad / ``amp``, on a coarse grid, interpolated."""
    tc = np.arange(-(-n // step) + 1) * (step / fs)
    coarse = (amp[..., None] * np.sin(2 * math.pi * freq[..., None] * tc + phase[..., None])).sum(axis=1)  # (R, m)
    w = np.arange(step) / step  # (step,)
    fine = coarse[:, :-1, None] * (1.0 - w) + coarse[:, 1:, None] * w  # (R, m - 1, step)
    return fine.reshape(len(coarse), -1)[:, :n]


def _dipole(
    tpl: dict[int, np.ndarray], times: np.ndarray, types: np.ndarray, rng: np.random.Generator, fs: int, n: int
) -> np.ndarray:
    """Place every beat's waves (ST and T moved with the preceding RR) and render the (3, n) dipole."""
    rr_prev = np.diff(times, prepend=times[0] - np.diff(times).mean() if len(times) > 1 else 1.0)
    shift = 0.4 * np.clip(rr_prev, 0.3, 2.0) ** (1 / 3) - 0.4  # QT adaptation (Fridericia), 0 at RR = 1 s
    parts = []
    for kind, table in tpl.items():
        sel = types == kind
        if not sel.any():
            continue
        moves = table[:, 2] >= ST_
        centre = times[sel, None] + table[None, :, 0] + shift[sel, None] * moves  # (b, K)
        jitter = 1.0 + 0.04 * rng.normal(size=(int(sel.sum()), 1, 1))
        vec = np.broadcast_to(table[None, :, 3:6], (*centre.shape, 3)) * jitter
        sig = np.broadcast_to(table[None, :, 1], centre.shape)
        parts.append(np.column_stack([centre.ravel(), sig.ravel(), np.zeros(centre.size), vec.reshape(-1, 3)]))
    return _render(np.vstack(parts), fs, n)


def _axis(vecs: np.ndarray, rot: np.ndarray) -> float:
    """Frontal-plane angle in degrees of the summed (3,) vectors after rotation."""
    v = rot @ vecs.sum(axis=0)
    return float(np.degrees(math.atan2(v[1], v[0])))


def generate_with_info(
    conditions: Iterable[str],
    rng: np.random.Generator,
    fs: int = 500,
    seconds: float = 10.0,
    subject: Subject | None = None,
) -> tuple[np.ndarray, EcgInfo]:
    """Generate one 12-lead ECG and describe what was drawn.

    Args:
        conditions: condition strings (see :class:`Condition`).
        rng: random generator; the result is a pure function of its state.
        fs: sampling rate in Hz.
        seconds: duration in seconds.
        subject: per-subject constants; drawn from ``rng`` when ``None``.

    Returns:
        ``(signal, info)``: signal is (12, round(fs * seconds)) float32 in mV,
        leads in :data:`~deri_sweep.data.record.CANONICAL_LEADS` order.
    """
    conds = validate_conditions(conditions)
    subj = subject if subject is not None else Subject.sample(rng)
    n = round(fs * seconds)
    pr = rng.uniform(0.22, 0.32) if "1AVB" in conds else rng.uniform(0.12, 0.19)
    tpl = _template(conds, rng, pr)
    times, types = _beats(conds, rng, seconds)
    dipole = _dipole(tpl, times, types, rng, fs, n)  # (3, n)
    if "AFIB" in conds:  # fibrillatory waves 5-8 Hz along an atrial direction
        fib = _slow_sines(rng.uniform(5.0, 8.0, (1, 3)), rng.uniform(0, 2 * math.pi, (1, 3)),
                          rng.uniform(0.015, 0.04, (1, 3)), fs, n, max(1, fs // 125))  # fmt: skip
        dipole += np.outer(_unit([0.3, 0.5, 0.8]), fib[0])
    leads = _LEADS8 @ subj.rotation  # (8, 3)
    leads[2:] *= subj.chest_gain[:, None]
    x = subj.amplitude * (leads @ dipole)  # (8, n): I, II, V1..V6
    wander = _slow_sines(rng.uniform(0.05, 0.5, (8, 2)), rng.uniform(0, 2 * math.pi, (8, 2)),
                         rng.uniform(0.0, 0.12, (8, 2)), fs, n, max(1, fs // 25))  # fmt: skip
    x += wander + subj.noise_mv * rng.standard_normal(size=x.shape)
    x32 = x.astype(np.float32)
    i, ii, two = x32[0], x32[1], np.float32(2.0)  # Einthoven and Goldberger, in float32: exact identities
    out = np.stack([i, ii, ii - i, -(i + ii) / two, i - ii / two, ii - i / two, *x32[2:]])  # (12, n)
    sinus = tpl[0]
    qrs_rows = sinus[sinus[:, 2] == QRS_]
    edges = qrs_rows[:, :1] + np.array([-2.5, 2.5]) * qrs_rows[:, 1:2]  # (Q, 2) onset/end of each QRS wave
    inside = (times >= 0) & (times < seconds)
    rr_mean = float(np.diff(times).mean()) if len(times) > 1 else 1.0
    p_rows = sinus[sinus[:, 2] == P_]
    info = EcgInfo(
        r_times=times[inside],
        beat_types=types[inside],
        heart_rate=60.0 / rr_mean,
        pr_ms=None if "AFIB" in conds else 1000.0 * pr,
        qrs_ms=1000.0 * float(np.ptp(edges)),
        qt_ms=1000.0 * 0.4 * rr_mean ** (1 / 3),
        p_axis=_axis(p_rows[:, 3:6], subj.rotation) if len(p_rows) else None,
        qrs_axis=_axis(qrs_rows[:, 3:6], subj.rotation),
        t_axis=_axis(sinus[sinus[:, 2] == T_][:, 3:6], subj.rotation),
    )
    return out, info


def generate(conditions: set[str], rng: np.random.Generator, fs: int = 500, seconds: float = 10.0) -> np.ndarray:
    """Generate one 12-lead ECG.

    Args:
        conditions: condition strings (see :class:`Condition`); empty means normal sinus rhythm.
        rng: random generator.
        fs: sampling rate in Hz.
        seconds: duration in seconds.

    Returns:
        (12, round(fs * seconds)) float32 in mV, leads in ``CANONICAL_LEADS`` order.
    """
    return generate_with_info(conditions, rng, fs, seconds)[0]

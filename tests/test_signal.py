from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from deri_sweep.data.record import CANONICAL_LEADS, RecordError
from deri_sweep.data.signal import SignalOptions, conform, normalise, repair_nonfinite, resample

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def _ramp(n: int = 5000) -> np.ndarray:
    return np.stack([np.sin(np.linspace(0, 20, n)) * (i + 1) for i in range(12)])


def test_leads_are_mapped_by_name_not_position():
    raw = _ramp()
    out, repaired, degraded = conform(raw, MIMIC_ORDER, 500, SignalOptions(), "x.hea")
    assert (repaired, degraded) == (0, ())
    np.testing.assert_allclose(out[CANONICAL_LEADS.index("aVL")], raw[5], atol=1e-6)
    np.testing.assert_allclose(out[CANONICAL_LEADS.index("aVF")], raw[4], atol=1e-6)
    upper = [n.upper() for n in CANONICAL_LEADS]
    out2, _, _ = conform(raw, upper, 500, SignalOptions(), "x.hea")
    np.testing.assert_array_equal(out2, raw.astype(np.float32))


def test_nan_runs_are_interpolated_and_dead_leads_zeroed():
    raw = _ramp()
    raw[3, 100:110] = np.nan
    raw[7] = np.nan
    fixed, n_bad, dead = repair_nonfinite(raw)
    assert n_bad == 10 + 5000 and dead.tolist() == [i == 7 for i in range(12)]
    expected = np.linspace(raw[3, 99], raw[3, 110], 12)[1:-1]
    np.testing.assert_allclose(fixed[3, 100:110], expected)
    out, repaired, degraded = conform(raw, list(CANONICAL_LEADS), 500, SignalOptions(), "x.hea")
    assert repaired == 5010 and degraded and not out[7].any() and np.isfinite(out).all()


def test_too_many_nonfinite_and_flat_leads_are_rejected():
    raw = _ramp()
    raw[:7] = np.nan
    with pytest.raises(RecordError, match="nonfinite"):
        conform(raw, list(CANONICAL_LEADS), 500, SignalOptions(), "x.hea")
    flat = _ramp()
    flat[9] = 0.25
    with pytest.raises(RecordError) as info:
        conform(flat, list(CANONICAL_LEADS), 500, SignalOptions(), "rec.hea")
    assert info.value.reason == "flat_lead" and "V4" in info.value.detail and "rec.hea" in info.value.detail
    out, _, _ = conform(flat, list(CANONICAL_LEADS), 500, SignalOptions(allow_flat_leads=True), "rec.hea")
    assert out.shape == (12, 5000)


def test_missing_lead_is_reported():
    with pytest.raises(RecordError, match="missing_leads.*V6"):
        conform(_ramp()[:11], list(CANONICAL_LEADS[:11]), 500, SignalOptions(), "x.hea")


@pytest.mark.parametrize(("fs", "n"), [(100, 1000), (257, 2570), (1000, 10000), (500, 3000), (500, 30000)])
def test_resampled_to_500_and_cropped_or_padded(fs, n):
    t = np.arange(n) / fs
    raw = np.stack([np.sin(2 * np.pi * 1.3 * t)] * 12)
    out, _, _ = conform(raw, list(CANONICAL_LEADS), fs, SignalOptions(), "x.hea")
    assert out.shape == (12, 5000) and out.dtype == np.float32
    kept = min(5000, round(n * 500 / fs))
    t500 = np.arange(kept) / 500
    # away from the filter's edge effects the resampled sine matches the analytic one
    np.testing.assert_allclose(out[0, 50 : kept - 50], np.sin(2 * np.pi * 1.3 * t500)[50 : kept - 50], atol=2e-2)
    assert not out[:, kept:].any()


def test_reference_cpsc_window_keeps_2500_samples():
    out, _, _ = conform(_ramp(7500) + 1.0, list(CANONICAL_LEADS), 500, SignalOptions(window=2500), "x.hea")
    assert out[:, :2500].all() and not out[:, 2500:].any()


def test_resample_matches_polyphase_for_integer_ratio():
    x = np.random.default_rng(0).normal(size=(12, 1000))
    np.testing.assert_allclose(resample(x, 100, 500), resample_poly(x, 5, 1, axis=-1))


def test_normalisation_modes():
    batch = np.random.default_rng(1).normal(size=(3, 12, 500)).astype(np.float32)
    mm = normalise(batch, "minmax_record")
    assert np.allclose(mm.min(axis=(1, 2)), 0) and np.allclose(mm.max(axis=(1, 2)), 1)
    z = normalise(batch, "zscore_lead")
    assert np.allclose(z.mean(axis=2), 0, atol=1e-5) and np.allclose(z.std(axis=2), 1, atol=1e-4)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(batch, "l2")


@pytest.mark.parametrize("fs_in", [100.0, 257.0, 360.0, 500.0, 1000.0])
def test_reading_only_the_needed_samples_gives_the_same_window_bit_for_bit(fs_in: float):
    from deri_sweep.data.signal import source_samples_needed

    options = SignalOptions(fs=500, length=5000, window=5000)
    rng = np.random.default_rng(0)
    whole = rng.normal(size=(12, int(fs_in * 60)))  # a 60 s record
    need = source_samples_needed(fs_in, options)
    assert need < whole.shape[1]
    full, _, _ = conform(whole, list(CANONICAL_LEADS), fs_in, options, "x.hea")
    part, _, _ = conform(whole[:, :need], list(CANONICAL_LEADS), fs_in, options, "x.hea", whole.shape[1])
    np.testing.assert_array_equal(part, full)

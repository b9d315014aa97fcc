"""Our WFDB header parser and signal reader against wfdb itself, on real PhysioNet records."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from helpers import rewrite_checksums

from deri_sweep.data.record import RecordError
from deri_sweep.data.wfdb_io import parse_header, read_record, read_signal

SAMPLE_HEADERS = [
    "chapman/JS00001.hea",
    "ptbxl/00001_lr.hea",
    *(f"cinc2021/{name}.hea" for name in ("E07500", "E07504", "E07509", "HR06000", "HR06004", "JS20000", "JS20004")),
    *(f"cpsc2018_cinc2020_early/A{i:04d}.hea" for i in (1, 2, 7, 12, 25, 50)),
]
PTBXL_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _copy_record(src_dir: Path, name: str, dst: Path) -> Path:
    """Copy NAME.hea + its signal file into dst (writable); return the new header path."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src_dir.glob(f"{name}.*"):
        target = dst / path.name
        shutil.copyfile(path, target)
    return dst / f"{name}.hea"


def _write_header(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("rel", SAMPLE_HEADERS)
def test_values_equal_wfdb_physical_values(real_ecg_dir: Path, rel: str):
    header, signal = read_record(real_ecg_dir / rel)
    expected, fields = wfdb.rdsamp(str(real_ecg_dir / rel)[:-4])
    assert signal.shape == (fields["n_sig"], fields["sig_len"]) == expected.T.shape
    assert header.lead_names == fields["sig_name"]
    assert header.fs == fields["fs"]
    np.testing.assert_allclose(signal, expected.T, rtol=0, atol=1e-12)


def test_parse_chapman_header_fields(real_ecg_dir: Path):
    h = parse_header(real_ecg_dir / "chapman/JS00001.hea")
    assert (h.record_name, h.n_sig, h.fs, h.n_samples) == ("JS00001", 12, 500.0, 5000)
    s = h.signals[0]
    assert (s.file_name, s.fmt, s.samples_per_frame, s.byte_offset) == ("JS00001.mat", "16", 1, 24)
    assert (s.gain, s.baseline, s.units, s.adc_res, s.adc_zero) == (1000.0, 0, "mV", 16, 0)
    assert (s.init_value, s.checksum, s.lead_name) == (-254, 21756, "I")
    assert h.lead_names[3:6] == ["aVR", "aVL", "aVF"]
    assert h.comments == {
        "age": "85",
        "sex": "Male",
        "dx": "164889003,59118001,164934002",
        "rx": "Unknown",
        "hx": "Unknown",
        "sx": "Unknown",
    }
    assert h.comment_lines[0] == "Age: 85"


def test_comment_keys_with_and_without_space(real_ecg_dir: Path):
    spaced = parse_header(real_ecg_dir / "cinc2021/E07500.hea")  # "# Age: 78"
    tight = parse_header(real_ecg_dir / "cpsc2018_cinc2020_early/A0001.hea")  # "#Age: 74"
    assert (spaced.comments["age"], spaced.comments["sex"], spaced.comments["dx"]) == (
        "78",
        "Male",
        "67741000119109,426177001",
    )
    assert (tight.comments["age"], tight.comments["sex"], tight.comments["dx"]) == ("74", "Male", "RBBB")


def test_format_variants_and_units(real_ecg_dir: Path):
    e = parse_header(real_ecg_dir / "cinc2021/E07500.hea").signals[0]  # 16x1+24 1000.0(0)/mV
    assert (e.fmt, e.samples_per_frame, e.byte_offset, e.gain, e.baseline) == ("16", 1, 24, 1000.0, 0)
    hr = parse_header(real_ecg_dir / "cinc2021/HR06000.hea").signals[0]  # .../mv
    assert hr.units == "mv" and hr.to_mv == 1.0
    a = parse_header(real_ecg_dir / "cpsc2018_cinc2020_early/A0001.hea")  # record line with date and time
    assert (a.n_samples, a.fs, a.base_time, a.base_date) == (7500, 500.0, "05-Feb-2020", "11:39:16")


def test_gain_spellings_defaults_and_uv(real_ecg_dir: Path, tmp_path: Path):
    _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    digital = wfdb.rdrecord(str(real_ecg_dir / "ptbxl/00001_lr"), physical=False).d_signal.T.astype(float)
    gains = [
        "200.0(0)/mV",
        "1000/mV",
        "1000.0(0)/mV",
        "4880/mv",
        "1000(-5)/uV",
        "",
        "-1000(0)/mV",
        "500(3)",
        "1000/MV",
        "200.0(0)/mV",
        "1e3/mV",
        "1000.0(0)/mV",
    ]
    lines = ["00001_lr 12 100/1000(0) 1000 10:00:00 01/01/2000"]
    sums = [int(row.sum()) % 65536 for row in digital]  # the header's checksums are verified
    for gain, lead, total in zip(gains, PTBXL_LEADS, sums, strict=True):
        lines.append(f"00001_lr.dat 16 {gain} 16 7 0 {total} 0 {lead}" if gain else "00001_lr.dat 16")
    h = parse_header(_write_header(tmp_path / "00001_lr.hea", lines))
    assert h.fs == 100.0 and h.base_time == "10:00:00"
    got = [(s.gain, s.baseline, s.units) for s in h.signals]
    assert got[0] == (200.0, 0, "mV")
    assert got[1] == (1000.0, 7, "mV")  # no baseline: adc_zero
    assert got[3] == (4880.0, 7, "mv")
    assert got[4] == (1000.0, -5, "uV")
    assert got[5] == (200.0, 0, "mV")  # missing gain: WFDB default 200, baseline = adc_zero (0: absent)
    assert got[6] == (-1000.0, 0, "mV")  # a negative gain: inverted polarity, legal in WFDB
    assert got[7] == (500.0, 3, "mV")
    assert got[10] == (1000.0, 7, "mV")
    assert h.signals[5].lead_name == ""
    signal = read_signal(h)
    np.testing.assert_allclose(signal[1], (digital[1] - 7) / 1000.0)
    np.testing.assert_allclose(signal[3], (digital[3] - 7) / 4880.0)
    np.testing.assert_allclose(signal[4], (digital[4] + 5) / 1000.0 / 1000.0)  # uV -> mV
    np.testing.assert_allclose(signal[5], digital[5] / 200.0)
    np.testing.assert_array_equal(signal[6], digital[6] / -1000.0)
    by_wfdb, _ = wfdb.rdsamp(str(tmp_path / "00001_lr"), channels=[6])
    np.testing.assert_array_equal(signal[6], by_wfdb[:, 0])  # read as WFDB reads it


def test_missing_sample_count_is_inferred_from_file_size(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "chapman", "JS00001", tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = "JS00001 12 500"
    h = parse_header(_write_header(hea, lines))
    assert h.n_samples is None
    expected, _ = wfdb.rdsamp(str(real_ecg_dir / "chapman/JS00001"))
    np.testing.assert_allclose(read_signal(h), expected.T, atol=1e-12)


def test_record_name_other_than_file_stem_is_bad_header(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "cinc2021", "E07500", tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = "E07500.mat 12 500 5000"  # the Georgia E00666 quirk
    _write_header(hea, lines)
    with pytest.raises(Exception, match="record line"):
        wfdb.rdrecord(str(tmp_path / "E07500"))  # wfdb rejects it too
    with pytest.raises(RecordError) as err:
        parse_header(hea)
    assert err.value.reason == "bad_header"
    assert str(hea) in err.value.detail and "E07500.mat" in err.value.detail


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda ls: [ls[0], *ls[2:]], "declares 12 signals but 11 follow"),
        (lambda ls: [ls[0], ls[1].replace("1000/mV", "abc/mV"), *ls[2:]], "gain"),
        (lambda ls: [ls[0], ls[1].replace("16+24", "16+x"), *ls[2:]], "format"),
        (lambda ls: [ls[0].replace(" 500 ", " fast "), *ls[1:]], "sampling frequency"),
        (lambda ls: [ls[0].replace(" 12 ", " twelve "), *ls[1:]], "signal count"),
        (lambda ls: [ls[0], ls[1].replace(" 16 0 ", " 16 z "), *ls[2:]], "ADC zero"),
        (lambda ls: [ln for ln in ls if ln.startswith("#")], "no record line"),
    ],
)
def test_malformed_lines_are_bad_header(real_ecg_dir: Path, tmp_path: Path, edit, what: str):
    hea = _copy_record(real_ecg_dir / "chapman", "JS00001", tmp_path)
    lines = [ln for ln in hea.read_text().splitlines() if ln.strip()]
    _write_header(hea, edit(lines))
    with pytest.raises(RecordError, match=what) as err:
        parse_header(hea)
    assert err.value.reason == "bad_header" and str(hea) in err.value.detail


def test_truncated_mat_is_truncated_signal(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "cinc2021", "E07501", tmp_path)
    mat = tmp_path / "E07501.mat"
    mat.write_bytes(mat.read_bytes()[:50_000])
    with pytest.raises(RecordError) as err:
        read_record(hea)
    assert err.value.reason == "truncated_signal"
    assert err.value.detail == f"{mat}: has 50000 bytes, header needs {24 + 2 * 12 * 5000}"


def test_missing_mat_is_missing_file(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "cinc2021", "E07502", tmp_path)
    (tmp_path / "E07502.mat").unlink()
    with pytest.raises(RecordError) as err:
        read_record(hea)
    assert err.value.reason == "missing_file" and "E07502.mat" in err.value.detail
    with pytest.raises(RecordError) as err:
        parse_header(tmp_path / "nothere.hea")
    assert err.value.reason == "missing_file"


def test_invalid_format16_samples_become_nan(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    dat = tmp_path / "00001_lr.dat"
    digital = np.fromfile(dat, dtype="<i2").reshape(1000, 12)
    digital[100:140, 6] = -32768  # a run in V1
    digital[500, 0] = -32768
    digital.tofile(dat)
    rewrite_checksums(hea, digital)
    signal = read_signal(parse_header(hea))
    expected, _ = wfdb.rdsamp(str(tmp_path / "00001_lr"))
    assert np.isnan(signal[6, 100:140]).all() and np.isnan(signal[0, 500])
    assert np.isnan(signal).sum() == 41
    np.testing.assert_allclose(signal, expected.T, atol=1e-12)  # wfdb also gives NaN there


def test_other_formats_fall_back_to_wfdb(real_ecg_dir: Path, tmp_path: Path):
    expected, fields = wfdb.rdsamp(str(real_ecg_dir / "ptbxl/00001_lr"))
    wfdb.wrsamp(
        "rec212",
        fs=fields["fs"],
        units=fields["units"],
        sig_name=fields["sig_name"],
        p_signal=expected,
        fmt=["212"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path),
    )
    header = parse_header(tmp_path / "rec212.hea")
    assert header.signals[0].fmt == "212"
    np.testing.assert_allclose(read_signal(header), expected.T, atol=1e-3)
    dat = tmp_path / "rec212.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(RecordError) as err:
        read_signal(header)
    assert err.value.reason == "truncated_signal" and "header needs 18000" in err.value.detail


def test_an_absurd_sample_count_is_a_counted_skip_not_a_memory_error(real_ecg_dir: Path, tmp_path: Path):
    """A header claiming 10^12 samples once allocated 87 TiB before looking at the file and killed a whole build."""
    hea = _copy_record(real_ecg_dir / "chapman", "JS00001", tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = lines[0].replace(" 5000", " 1000000000000", 1)
    assert " 1000000000000" in lines[0]
    with pytest.raises(RecordError) as err:
        read_record(_write_header(hea, lines))
    assert err.value.reason == "truncated_signal"
    assert err.value.detail.endswith("has 120024 bytes, header needs 24000000000024")


def _wrsamp(tmp_path: Path, real_ecg_dir: Path, fmt: str, name: str = "rec") -> np.ndarray:
    expected, fields = wfdb.rdsamp(str(real_ecg_dir / "ptbxl/00001_lr"))
    wfdb.wrsamp(
        name,
        fs=fields["fs"],
        units=fields["units"],
        sig_name=fields["sig_name"],
        p_signal=expected,
        fmt=[fmt] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path),
    )
    return expected


@pytest.mark.parametrize("fmt", ["16", "212"])
def test_only_the_samples_asked_for_are_read_and_equal_wfdbs(real_ecg_dir: Path, tmp_path: Path, fmt: str):
    _wrsamp(tmp_path, real_ecg_dir, fmt)
    header = parse_header(tmp_path / "rec.hea")
    whole = read_signal(header)
    part = read_signal(header, max_samples=300)
    by_wfdb, _ = wfdb.rdsamp(str(tmp_path / "rec"), sampto=300)
    assert part.shape == (12, 300)
    np.testing.assert_array_equal(part, whole[:, :300])
    np.testing.assert_array_equal(part, by_wfdb.T)


@pytest.mark.parametrize("fmt", ["16", "212"])
def test_checksums_are_verified_in_both_readers(real_ecg_dir: Path, tmp_path: Path, fmt: str):
    _wrsamp(tmp_path, real_ecg_dir, fmt)
    hea = tmp_path / "rec.hea"
    lines = hea.read_text().splitlines()
    tokens = lines[3].split(" ")  # lead III: its checksum off by one
    tokens[6] = str(int(tokens[6]) + 1)
    lines[3] = " ".join(tokens)
    _write_header(hea, lines)
    with pytest.raises(RecordError) as err:
        read_signal(parse_header(hea))
    assert err.value.reason == "checksum_mismatch" and "lead III" in err.value.detail
    assert read_signal(parse_header(hea), max_samples=100).shape == (12, 100)  # a partial read cannot check it


def test_a_file_longer_than_the_header_says_is_a_size_mismatch(real_ecg_dir: Path, tmp_path: Path):
    _wrsamp(tmp_path, real_ecg_dir, "212")
    dat = tmp_path / "rec.dat"
    dat.write_bytes(dat.read_bytes() + bytes(3000))
    with pytest.raises(RecordError) as err:
        read_signal(parse_header(tmp_path / "rec.hea"))
    assert err.value.reason == "size_mismatch" and "3000 more" in err.value.detail


def test_a_folder_or_fifo_is_not_a_file(real_ecg_dir: Path, tmp_path: Path):
    (tmp_path / "dir.hea").mkdir()
    with pytest.raises(RecordError) as err:
        parse_header(tmp_path / "dir.hea")
    assert err.value.reason == "not_a_file" and "a folder" in err.value.detail
    hea = _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    (tmp_path / "00001_lr.dat").unlink()
    os.mkfifo(tmp_path / "00001_lr.dat")
    with pytest.raises(RecordError) as err:
        read_signal(parse_header(hea))  # returns at once: a FIFO is never opened
    assert err.value.reason == "not_a_file" and "FIFO" in err.value.detail


@pytest.mark.parametrize(
    ("units", "scale"),
    [
        (b"1/uV", 1.0),
        (b"1/\xc2\xb5V", 1.0),  # MICRO SIGN in UTF-8
        (b"1/\xb5V", 1.0),  # MICRO SIGN in cp1252, as a Windows editor saves it
        (b"1/\xce\xbcV", 1.0),  # GREEK SMALL LETTER MU in UTF-8
        (b"1/\xc3\x82\xc2\xb5V", 1.0),  # UTF-8 read as cp1252 and saved again
        (b"1000000/V", 1.0),
        (b"1000/mv", 1.0),
        (b"-1000/mV", -1.0),  # inverted polarity
    ],
)
def test_voltage_units_in_any_spelling_are_millivolts(real_ecg_dir: Path, tmp_path: Path, units: bytes, scale: float):
    hea = _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    expected, _ = wfdb.rdsamp(str(real_ecg_dir / "ptbxl/00001_lr"))
    hea.write_bytes(hea.read_bytes().replace(b"1000.0(0)/mV", units.replace(b"/", b"(0)/", 1)))
    np.testing.assert_allclose(read_signal(parse_header(hea)), scale * expected.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("gain", "reason"),
    [("1000.0(0)/mmHg", "not_ecg_units"), ("0(0)/mV", "uncalibrated"), ("1000.0(40000)/mV", "bad_baseline")],
)
def test_numbers_that_give_no_millivolts_are_named_skips(real_ecg_dir: Path, tmp_path: Path, gain: str, reason: str):
    hea = _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    hea.write_text(hea.read_text().replace("1000.0(0)/mV", gain, 1))  # lead I only
    with pytest.raises(RecordError) as err:
        read_signal(parse_header(hea))
    assert err.value.reason == reason and "lead I" in err.value.detail

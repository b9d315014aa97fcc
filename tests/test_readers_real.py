"""The dataset readers on real PhysioNet records (and small roots built from them in tmp_path)."""

from __future__ import annotations

import csv
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb
from helpers import rewrite_checksums
from scipy.signal import resample, resample_poly

from deri_sweep.data.readers import READERS, DatasetError, open_reader
from deri_sweep.data.readers.base import parse_age, parse_sex, split_codes
from deri_sweep.data.readers.mimic import clean_report
from deri_sweep.data.record import CANONICAL_LEADS, RecordError
from deri_sweep.data.signal import SignalOptions

AVL, AVF = CANONICAL_LEADS.index("aVL"), CANONICAL_LEADS.index("aVF")


def _by_name(record_path: Path) -> tuple[np.ndarray, dict]:
    """wfdb.rdsamp's physical values, rows put in canonical order by looking each lead up BY NAME."""
    values, fields = wfdb.rdsamp(str(record_path))
    names = [n.upper() for n in fields["sig_name"]]
    return np.stack([values[:, names.index(lead.upper())] for lead in CANONICAL_LEADS]), fields


def _copy(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    target = dst_dir / (name or src.name)
    shutil.copyfile(src, target)
    return target


def _copy_record(src_dir: Path, name: str, dst_dir: Path) -> Path:
    for path in src_dir.glob(f"{name}.*"):
        _copy(path, dst_dir)
    return dst_dir / f"{name}.hea"


# ---------------------------------------------------------------- wfdb-dir (CinC 2021)


def test_wfdb_dir_values_equal_wfdb_by_name(real_ecg_dir: Path):
    reader = open_reader("wfdb-dir", real_ecg_dir / "cinc2021")
    assert len(reader.keys()) == 25 and reader.keys()[0] == "E07500"
    for key in ["E07500", "E07507", "HR06000", "HR06003", "JS20000", "JS20009"]:
        rec = reader.read(key)
        expected, fields = _by_name(real_ecg_dir / "cinc2021" / key)
        assert rec.signal.shape == (12, 5000) and rec.signal.dtype == np.float32
        assert (rec.fs, rec.n_samples, rec.record_id) == (500.0, 5000, key)
        np.testing.assert_allclose(rec.signal, expected, rtol=1e-6, atol=1e-6)
        col_avl = [n.upper() for n in fields["sig_name"]].index("AVL")
        np.testing.assert_allclose(rec.signal[AVL], wfdb.rdsamp(str(real_ecg_dir / "cinc2021" / key))[0][:, col_avl])
    rec = reader.read("E07500")
    assert rec.labels == {"dx": ("426177001", "67741000119109")}
    assert rec.meta == {"age": 78, "sex": "Male"}


def test_wfdb_dir_label_set_and_real_flat_leads(real_ecg_dir: Path):
    reader = open_reader("wfdb-dir", real_ecg_dir / "cinc2021")
    dx = reader.label_sets["dx"]
    assert len(dx) == 20 and list(dx) == sorted(dx) and "59118001" in dx and "67741000119109" in dx
    for key in ["JS20004", "JS20008"]:  # Ningbo records with disconnected chest leads
        with pytest.raises(RecordError) as err:
            reader.read(key)
        assert err.value.reason == "flat_lead" and "V2, V4, V6" in err.value.detail
    relaxed = open_reader("wfdb-dir", real_ecg_dir / "cinc2021", SignalOptions(allow_flat_leads=True))
    assert np.ptp(relaxed.read("JS20004").signal[CANONICAL_LEADS.index("V2")]) == 0.0
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.keys() == reader.keys() and clone.label_sets == reader.label_sets


def test_wfdb_dir_nested_keys_and_quirks(real_ecg_dir: Path, tmp_path: Path):
    src = real_ecg_dir / "cinc2021"
    for i, name in enumerate(["E07503", "E07504", "E07505", "E07506", "HR06001"]):
        _copy_record(src, name, tmp_path / f"g{i % 2}")
    hea = tmp_path / "g0/E07503.hea"  # Georgia E00666 quirk: record line names the .mat
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(["E07503.mat 12 500 5000", *lines[1:]]) + "\n")
    mat = tmp_path / "g1/E07504.mat"
    mat.write_bytes(mat.read_bytes()[:120_000])
    (tmp_path / "g0/E07505.mat").unlink()
    reader = open_reader("wfdb-dir", tmp_path)
    keys = reader.keys()
    assert keys == ["g0/E07503", "g0/E07505", "g0/HR06001", "g1/E07504", "g1/E07506"]
    reasons = {}
    for key in keys:
        try:
            reader.read(key)
        except RecordError as exc:
            reasons[key] = exc.reason
            assert key.split("/")[1] in exc.detail
    assert reasons == {"g0/E07503": "bad_header", "g0/E07505": "missing_file", "g1/E07504": "truncated_signal"}
    assert reader.read("g0/HR06001").record_id == "g0/HR06001"
    with pytest.raises(KeyError):
        reader.read("g0/nothere")


def test_nan_runs_are_repaired_and_kept(real_ecg_dir: Path, tmp_path: Path):
    _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    dat = tmp_path / "00001_lr.dat"
    digital = np.fromfile(dat, dtype="<i2").reshape(1000, 12)
    digital[200:260, 7] = -32768  # V2 (header order = canonical for PTB-XL)
    digital.tofile(dat)
    rewrite_checksums(tmp_path / "00001_lr.hea", digital)
    rec = open_reader("wfdb-dir", tmp_path).read("00001_lr")
    assert (rec.repaired, rec.degraded) == (60, False)
    assert np.isfinite(rec.signal).all()
    clean, _ = _by_name(real_ecg_dir / "ptbxl/00001_lr")
    ok = resample_poly(clean[0], 5, 1)  # an untouched lead stays exact
    np.testing.assert_allclose(rec.signal[0], ok, atol=1e-5)
    digital[:, 9] = -32768  # V4 entirely invalid: zeroed, record degraded
    digital.tofile(dat)
    rewrite_checksums(tmp_path / "00001_lr.hea", digital)
    rec = open_reader("wfdb-dir", tmp_path).read("00001_lr")
    assert rec.degraded and not rec.signal[9].any() and rec.repaired == 1060


def test_constant_lead_is_flat_lead(real_ecg_dir: Path, tmp_path: Path):
    _copy_record(real_ecg_dir / "ptbxl", "00001_lr", tmp_path)
    dat = tmp_path / "00001_lr.dat"
    digital = np.fromfile(dat, dtype="<i2").reshape(1000, 12)
    digital[:, 4] = 37  # aVL constant
    digital.tofile(dat)
    rewrite_checksums(tmp_path / "00001_lr.hea", digital)
    with pytest.raises(RecordError) as err:
        open_reader("wfdb-dir", tmp_path).read("00001_lr")
    assert err.value.reason == "flat_lead" and "aVL" in err.value.detail


# ---------------------------------------------------------------- PTB-XL


@pytest.fixture()
def ptbxl_root(real_ecg_dir: Path, tmp_path: Path) -> Path:
    src = real_ecg_dir / "ptbxl"
    _copy(src / "ptbxl_database_first10rows.csv", tmp_path, "ptbxl_database.csv")
    _copy(src / "scp_statements.csv", tmp_path)
    _copy_record(src, "00001_lr", tmp_path / "records100/00000")
    return tmp_path


def test_ptbxl_lr_record_resampled_to_500hz(real_ecg_dir: Path, ptbxl_root: Path):
    reader = open_reader("ptbxl", ptbxl_root)
    assert reader.keys() == [f"{i:05d}" for i in range(1, 11)]
    rec = reader.read("00001")
    assert (rec.fs, rec.n_samples, rec.signal.shape) == (100.0, 1000, (12, 5000))
    raw, fields = _by_name(real_ecg_dir / "ptbxl/00001_lr")
    assert fields["sig_name"][4:6] == ["AVL", "AVF"]
    np.testing.assert_allclose(rec.signal, resample_poly(raw, 5, 1, axis=1), atol=1e-5)
    fft = resample(raw, 5000, axis=1)  # a different resampler agrees away from the edges
    np.testing.assert_allclose(rec.signal[:, 250:-250], fft[:, 250:-250], atol=0.03)
    np.testing.assert_allclose(rec.signal[AVF, ::5], raw[AVF], atol=0.05)


def test_ptbxl_labels_meta_and_report(ptbxl_root: Path):
    reader = open_reader("ptbxl", ptbxl_root)
    sets = reader.label_sets
    assert {k: len(v) for k, v in sets.items()} == {"super": 5, "sub": 23, "form": 19, "rhythm": 12}
    assert sets["super"] == ("CD", "HYP", "MI", "NORM", "STTC")
    rec = reader.read("00001")  # scp_codes {'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}
    assert rec.labels == {"super": ("NORM",), "sub": ("NORM",), "form": ("LVOLT",), "rhythm": ("SR",)}
    assert rec.subject_id == "15709"
    assert rec.meta == {
        "strat_fold": 3,
        "age": 56,
        "sex": "Female",
        "scp_codes": {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0},
    }
    assert rec.report == "sinusrhythmus periphere niederspannung."
    assert reader.descriptions["NORM"] == "normal ECG"
    with pytest.raises(RecordError) as err:
        reader.read("00002")
    assert err.value.reason == "missing_file" and "records500/00000/00002_hr.hea" in err.value.detail
    assert pickle.loads(pickle.dumps(reader)).keys() == reader.keys()


def test_ptbxl_prefers_500hz_when_present(real_ecg_dir: Path, ptbxl_root: Path):
    # put a 500 Hz record (CinC copy of a PTB-XL record) where records500 would hold 00001_hr
    hr_dir = ptbxl_root / "records500/00000"
    _copy(real_ecg_dir / "cinc2021/HR06000.mat", hr_dir, "00001_hr.mat")
    lines = (real_ecg_dir / "cinc2021/HR06000.hea").read_text().replace("HR06000", "00001_hr")
    (hr_dir / "00001_hr.hea").write_text(lines)
    expected, _ = _by_name(real_ecg_dir / "cinc2021/HR06000")
    rec = open_reader("ptbxl", ptbxl_root).read("00001")
    assert rec.fs == 500.0
    np.testing.assert_allclose(rec.signal, expected, atol=1e-6)
    assert open_reader("ptbxl", ptbxl_root, prefer="lr").read("00001").fs == 100.0


# ---------------------------------------------------------------- CPSC2018


def test_cpsc_early_abbreviation_labels(real_ecg_dir: Path):
    reader = open_reader("cpsc2018", real_ecg_dir / "cpsc2018_cinc2020_early")
    assert reader.label_sets == {"cpsc2018": ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")}
    assert len(reader.keys()) == 50
    expected = {"A0001": ("RBBB",), "A0002": ("Normal",), "A0043": ("AF", "RBBB"), "A0039": ("I-AVB",)}
    for key, labels in expected.items():
        rec = reader.read(key)
        assert rec.labels == {"cpsc2018": labels}
        assert rec.meta["unmapped_codes"] == []
    rec = reader.read("A0001")  # 15 s: the first 5000 samples are kept
    assert (rec.n_samples, rec.meta["age"], rec.meta["sex"]) == (7500, 74, "Male")
    full, _ = _by_name(real_ecg_dir / "cpsc2018_cinc2020_early/A0001")
    np.testing.assert_allclose(rec.signal, full[:, :5000], atol=1e-6)
    ref = open_reader("cpsc2018", real_ecg_dir / "cpsc2018_cinc2020_early", SignalOptions(window=2500)).read("A0001")
    np.testing.assert_allclose(ref.signal[:, :2500], full[:, :2500], atol=1e-6)
    assert not ref.signal[:, 2500:].any()


def test_cpsc_snomed_dx_and_unmapped_codes(real_ecg_dir: Path, tmp_path: Path):
    hea = _copy_record(real_ecg_dir / "cpsc2018_cinc2020_early", "A0005", tmp_path)
    lines = [ln for ln in hea.read_text().splitlines() if not ln.startswith("#Dx")]
    hea.write_text("\n".join([*lines, "# Dx: 164889003,,59118001,251238007,"]) + "\n")
    rec = open_reader("cpsc2018", tmp_path).read("A0005")
    assert rec.labels == {"cpsc2018": ("AF", "RBBB")}
    assert rec.meta["unmapped_codes"] == ["251238007"]


def test_cpsc_original_struct_matches_loadmat(real_ecg_dir: Path, tmp_path: Path):
    reader = open_reader("cpsc2018", real_ecg_dir / "cpsc2018_original")
    keys = reader.keys()
    assert keys == ["A1980", "A1981", "A1982", "A1983", "A1984"]
    for key in keys:
        ecg = scipy.io.loadmat(real_ecg_dir / f"cpsc2018_original/{key}.mat")["ECG"][0, 0]
        data = ecg["data"]
        rec = reader.read(key)
        n = min(5000, data.shape[1])
        np.testing.assert_allclose(rec.signal[:, :n], data[:, :n], rtol=1e-6, atol=1e-6)
        assert not rec.signal[:, n:].any()
        assert rec.labels == {}  # no REFERENCE.csv in this sample
        assert rec.meta["sex"] == str(ecg["sex"][0]) and rec.n_samples == data.shape[1]
        assert rec.meta["age"] == int(ecg["age"].ravel()[0])
    train = tmp_path / "TrainingSet1"
    for key in ("A1980", "A1981"):
        _copy(real_ecg_dir / f"cpsc2018_original/{key}.mat", train)
    with (tmp_path / "REFERENCE.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["Recording", "First_label", "Second_label", "Third_label"],
                ["A1980", "2", "5", ""],
                ["A1981", "1", "", ""],
            ]
        )
    labelled = open_reader("cpsc2018", tmp_path)
    assert labelled.read("A1980").labels == {"cpsc2018": ("AF", "RBBB")}
    assert labelled.read("A1981").labels == {"cpsc2018": ("Normal",)}
    broken = train / "A1981.mat"
    broken.write_bytes(broken.read_bytes()[:3000])
    with pytest.raises(RecordError) as err:
        labelled.read("A1981")
    assert err.value.reason == "unreadable_mat" and "A1981.mat" in err.value.detail


# ---------------------------------------------------------------- Chapman-Shaoxing-Ningbo


def _csn_root(real_ecg_dir: Path, root: Path, official_header: bool) -> Path:
    _copy_record(real_ecg_dir / "chapman", "JS00001", root / "WFDBRecords/01/010")
    text = (real_ecg_dir / "chapman/ConditionNames_SNOMED-CT.csv").read_text(encoding="utf-8-sig")
    if official_header:
        text = text.replace("AcronymName,FullName,Snomed_CT", "Acronym Name,Full Name,Snomed_CT", 1)
    (root / "ConditionNames_SNOMED-CT.csv").write_text(text, encoding="utf-8-sig")  # with a BOM
    return root


@pytest.mark.parametrize("official_header", [True, False])
def test_csn_snomed_labels_both_csv_spellings(real_ecg_dir: Path, tmp_path: Path, official_header: bool):
    reader = open_reader("csn", _csn_root(real_ecg_dir, tmp_path, official_header))
    classes = reader.label_sets["csn"]
    assert len(classes) == 63 and classes[:2] == ("1AVB", "2AVB") and classes[-1] == "SAAWR"
    assert reader.condition_names["AFIB"] == "Atrial Fibrillation"
    assert reader.keys() == ["JS00001"]
    rec = reader.read("JS00001")  # Dx 164889003,59118001,164934002
    assert rec.labels == {"csn": ("RBBB", "TWC", "AFIB")}
    assert rec.meta == {"age": 85, "sex": "Male", "unmapped_codes": []}
    expected, _ = _by_name(real_ecg_dir / "chapman/JS00001")
    np.testing.assert_allclose(rec.signal, expected, atol=1e-6)
    np.testing.assert_allclose(rec.signal[AVF], expected[AVF])


def test_csn_trailing_and_doubled_commas(real_ecg_dir: Path, tmp_path: Path):
    root = _csn_root(real_ecg_dir, tmp_path, official_header=True)
    hea = root / "WFDBRecords/01/010/JS00001.hea"
    text = hea.read_text().replace(
        "#Dx: 164889003,59118001,164934002", "#Dx: 164889003,,59118001, 251238007,164934002,"
    )
    hea.write_text(text)
    rec = open_reader("csn", root).read("JS00001")
    assert rec.labels == {"csn": ("RBBB", "TWC", "AFIB")}
    assert rec.meta["unmapped_codes"] == ["251238007"]


# ---------------------------------------------------------------- MIMIC-IV-ECG


def test_mimic_leads_by_name_reports_joined_by_study(real_ecg_dir: Path, tmp_path: Path):
    src = scipy.io.loadmat(real_ecg_dir / "cinc2021/HR06000.mat")["val"]  # (12, 5000) int16, canonical order
    mimic_order = [0, 1, 2, 3, 5, 4, *range(6, 12)]  # aVF before aVL
    names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    studies = {"40689238": "10000032", "41234567": "10000033", "42222222": "10000034", "43333333": "10000035"}
    rows = []
    for study, subject in studies.items():
        rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        folder = tmp_path / rel.rsplit("/", 1)[0]
        folder.mkdir(parents=True)
        frames = np.ascontiguousarray(src[mimic_order].T).astype("<i2")
        frames.tofile(folder / f"{study}.dat")
        sums = [int(total) % 65536 for total in frames.astype(np.int64).sum(axis=0)]
        lines = [f"{study} 12 500 5000 13:22:00 28/06/2180"]
        lines += [f"{study}.dat 16 200.0(0)/mV 16 0 0 {total} 0 {n}" for n, total in zip(names, sums, strict=True)]
        (folder / f"{study}.hea").write_text("\n".join([*lines, f"# {subject}: 1"]) + "\n")
        rows.append([subject, study, f"{study}.dat", "2180-06-28 13:22:00", rel])
    with (tmp_path / "record_list.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["subject_id", "study_id", "file_name", "ecg_time", "path"], *rows])
    reports = {  # rows in another order than record_list.csv; 43333333 has none
        "42222222": ["Sinus rhythm", "", ""],
        "41234567": ["Atrial fibrillation", "*** Abnormal EKG ***", "- with rapid\tventricular response ="],
        "40689238": ["Sinus rhythm", "Borderline EKG", "Normal axis"],
    }
    with (tmp_path / "machine_measurements.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", "cart_id", "ecg_time", *(f"report_{i}" for i in range(18))])
        for study, statements in reports.items():
            w.writerow([studies[study], study, "1", "", *statements, *[""] * (18 - len(statements))])
    reader = open_reader("mimic", tmp_path)
    assert reader.keys() == sorted(studies) and reader.label_sets == {}
    rec = reader.read("41234567")
    assert rec.report == "atrial fibrillation. abnormal ecg. with rapid ventricular response."
    assert (rec.subject_id, rec.meta["ecg_time"]) == ("10000033", "2180-06-28 13:22:00")
    expected, fields = _by_name(tmp_path / "files/p1000/p10000033/s41234567/41234567")
    assert fields["sig_name"][4:6] == ["aVF", "aVL"]
    np.testing.assert_allclose(rec.signal, expected, atol=1e-6)
    np.testing.assert_allclose(rec.signal[AVL], src[4] / 200.0, atol=1e-6)  # aVL of the source, not aVF
    np.testing.assert_allclose(rec.signal[AVF], src[5] / 200.0, atol=1e-6)
    assert reader.read("40689238").report == "sinus rhythm. borderline ecg. normal axis."
    for study, reason in [("42222222", "short_report"), ("43333333", "no_report")]:
        with pytest.raises(RecordError) as err:
            reader.read(study)
        assert err.value.reason == reason and study in err.value.detail
    assert pickle.loads(pickle.dumps(reader)).report("41234567") == rec.report


def test_clean_report_rules():
    assert clean_report(["Sinus rhythm", "", "Normal ECG"]) == "sinus rhythm. normal ecg."
    assert clean_report(["*** Abnormal EKG ***", "== Borderline ekg ==", " -- Poor R wave -- "]) == (
        "abnormal ecg. borderline ecg. poor r wave."
    )
    assert clean_report(["Sinus\nrhythm\twith PACs"]) == "sinus rhythm with pacs."
    assert clean_report(["***", "  ", "Left axis deviation"]) == "left axis deviation."
    assert clean_report([]) == "" and clean_report(["", "  "]) == ""
    assert clean_report(["Non-specific T-wave changes"]) == "non-specific t-wave changes."


def test_age_sex_and_dx_parsing():
    assert [parse_age(v) for v in ("74", " 56.0", "NaN", "", None, "Unknown")] == [74, 56, None, None, None, None]
    assert parse_age(np.array([[np.nan]])) is None and parse_age(np.array([[52]], dtype=np.uint8)) == 52
    assert [parse_sex(v) for v in ("Male", "female", "F", "Unknown", np.array(["Female"]))] == [
        "Male",
        "Female",
        "Female",
        None,
        "Female",
    ]
    assert split_codes("164889003,,59118001, 164934002,") == ["164889003", "59118001", "164934002"]
    assert split_codes(None) == [] and split_codes("AF,RBBB,AF") == ["AF", "RBBB"]


# ---------------------------------------------------------------- roots and formats


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_missing_root_is_dataset_error(tmp_path: Path, fmt: str):
    root = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetError, match=re.escape(str(root))):
        open_reader(fmt, root)


@pytest.mark.parametrize(
    ("fmt", "expected_file"),
    [("mimic", "record_list.csv"), ("ptbxl", "scp_statements.csv"), ("csn", "ConditionNames_SNOMED-CT.csv")],
)
def test_wrong_root_names_the_expected_file(real_ecg_dir: Path, fmt: str, expected_file: str):
    with pytest.raises(DatasetError, match=re.escape(expected_file)) as err:
        open_reader(fmt, real_ecg_dir / "cinc2021")
    assert "PhysioNet" in str(err.value)


def test_unknown_format_lists_formats():
    with pytest.raises(ValueError, match="cpsc2018, csn, mimic, ptbxl, wfdb-dir"):
        open_reader("edf", ".")

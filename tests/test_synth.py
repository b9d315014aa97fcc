"""Synthetic data twin: the ECG model's physiology, and the exact on-disk layouts the writers produce."""

from __future__ import annotations

import ast
import csv
import hashlib
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import wfdb
from scipy.signal import butter, filtfilt, find_peaks, resample_poly

from deri_sweep.data.record import CANONICAL_LEADS, canonical_lead
from deri_sweep.data.synth import DATASETS, EXPECTED_REASON, FOLDERS, main, write_all
from deri_sweep.data.synth import datasets as synth_datasets
from deri_sweep.data.synth import labels as synth_labels
from deri_sweep.data.synth.dipole import Condition, generate, generate_with_info, validate_conditions

FS = 500
SMALL = {"mimic": 10, "ptbxl": 8, "cpsc2018": 6, "csn": 6}

# ----------------------------------------------------------------------------- signal measurements


def _filt(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    b, a = butter(2, [lo / (FS / 2), hi / (FS / 2)], btype="band")
    return filtfilt(b, a, np.asarray(x, dtype=np.float64), axis=-1)


def _r_peaks(x: np.ndarray) -> np.ndarray:
    """R peaks from lead II: band-passed energy peaks refined to the lead II maximum nearby."""
    energy = np.abs(_filt(x[1], 8.0, 25.0))
    peaks, _ = find_peaks(energy, height=0.35 * np.percentile(energy, 99.5), distance=int(0.25 * FS))
    return np.array([max(p - 15, 0) + int(np.argmax(x[1, max(p - 15, 0) : p + 15])) for p in peaks])


def _mean_beat(y: np.ndarray, peaks: np.ndarray, pre: float, post: float, min_rr: float = 0.0) -> np.ndarray | None:
    a, b = int(pre * FS), int(post * FS)
    rr = np.diff(peaks, prepend=-(10**6)) / FS
    keep = (peaks >= a) & (peaks + b <= y.shape[-1]) & (rr >= min_rr)
    segs = [y[..., p - a : p + b] for p in peaks[keep]]
    return np.mean(segs, axis=0) if len(segs) >= 3 else None


def _rr_cv_and_rate(x: np.ndarray) -> tuple[float, float]:
    rr = np.diff(_r_peaks(x)) / FS
    return float(rr.std() / rr.mean()), float(60.0 / np.median(rr))


def _p_amplitude(x: np.ndarray) -> float:
    """Peak-to-peak of the averaged lead II between R-240 and R-50 ms (beats after an RR >= 0.75 s)."""
    m = _mean_beat(_filt(x[1], 0.7, 40.0), _r_peaks(x), 0.3, 0.05, min_rr=0.75)
    return np.nan if m is None else float(np.ptp(m[int(0.06 * FS) : int(0.25 * FS)]))


def _pr_ms(x: np.ndarray) -> float:
    """R-peak time minus P-peak time of the averaged lead II (P peak: maximum before R-60 ms)."""
    m = _mean_beat(_filt(x[1], 0.7, 40.0), _r_peaks(x), 0.45, 0.05)
    return 1000.0 * (0.45 - int(np.argmax(m[: int(0.39 * FS)])) / FS)


def _qrs_ms(x: np.ndarray) -> float:
    """QRS duration: span around R where the summed absolute slope of the 12 averaged leads exceeds 12 %."""
    m = _mean_beat(_filt(x, 0.7, 40.0), _r_peaks(x), 0.2, 0.3)
    slope = np.abs(np.diff(m, axis=1)).sum(axis=0)
    r, thr = int(0.2 * FS), 0.12 * slope.max()
    onset = r - int(0.1 * FS) + np.flatnonzero(slope[r - int(0.1 * FS) : r] > thr)[0]
    end = r + np.flatnonzero(slope[r : r + int(0.14 * FS)] > thr)[-1]
    return 1000.0 * (end - onset) / FS


def _records(conds: set[str], n: int = 10, seconds: float = 10.0, seed: int = 0) -> list[np.ndarray]:
    return [generate(conds, np.random.default_rng([seed, i]), FS, seconds) for i in range(n)]


# ----------------------------------------------------------------------------- the ECG model


@pytest.mark.parametrize("conds", [set(), {"AFIB", "PVC"}, {"SBRAD", "1AVB", "LVH"}, {"LBBB"}, {"STACH", "STE", "PAC"}])
def test_lead_identities_hold_exactly(conds: set[str]) -> None:
    x = generate(conds, np.random.default_rng(1))
    assert x.shape == (12, 5000) and x.dtype == np.float32
    lead = dict(zip(CANONICAL_LEADS, x, strict=True))
    i, ii = lead["I"], lead["II"]
    np.testing.assert_allclose(lead["III"], ii - i, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lead["aVR"], -(i + ii) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lead["aVL"], i - ii / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lead["aVF"], ii - i / 2, rtol=0, atol=1e-6)


def test_generate_is_a_function_of_the_rng_and_takes_any_rate() -> None:
    a, b = generate({"RBBB"}, np.random.default_rng(5)), generate({"RBBB"}, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, generate({"RBBB"}, np.random.default_rng(6)))
    assert generate(set(), np.random.default_rng(0), fs=257, seconds=7.3).shape == (12, round(257 * 7.3))
    assert validate_conditions({"NORM"}) == {"SR"} and validate_conditions({Condition.LBBB}) == {"SR", "LBBB"}
    for bad in ({"AFIB", "SR"}, {"AFIB", "1AVB"}, {"RBBB", "LBBB"}, {"XYZ"}):
        with pytest.raises(ValueError):
            validate_conditions(bad)


def test_heart_rates_match_the_rhythm() -> None:
    for conds, lo, hi in (({"SBRAD"}, 35, 60), ({"SR"}, 58, 100), ({"STACH"}, 100, 160)):
        rates = [_rr_cv_and_rate(x)[1] for x in _records(conds, 6)]
        assert all(lo < r < hi for r in rates), (conds, rates)


def test_atrial_fibrillation_is_irregular_and_has_no_p_wave() -> None:
    sinus, af = _records({"SR"}, 10, 20.0), _records({"AFIB"}, 10, 20.0)
    cv_sinus = np.median([_rr_cv_and_rate(x)[0] for x in sinus])
    cv_af = np.median([_rr_cv_and_rate(x)[0] for x in af])
    assert cv_sinus < 0.05 and cv_af > 0.12 and cv_af > 4 * cv_sinus
    p_sinus, p_af = np.nanmedian([_p_amplitude(x) for x in sinus]), np.nanmedian([_p_amplitude(x) for x in af])
    assert p_sinus > 0.08 and p_af < 0.5 * p_sinus, (p_sinus, p_af)


def test_first_degree_av_block_prolongs_pr() -> None:
    normal = np.median([_pr_ms(x) for x in _records({"SBRAD"}, 8)])
    block = np.median([_pr_ms(x) for x in _records({"SBRAD", "1AVB"}, 8)])
    assert 100 < normal < 200 < block and block - normal > 60, (normal, block)


def test_bundle_branch_blocks_widen_qrs_and_lvh_raises_voltage() -> None:
    normal = np.median([_qrs_ms(x) for x in _records({"SR"}, 8)])
    rbbb = np.median([_qrs_ms(x) for x in _records({"RBBB"}, 8)])
    lbbb = np.median([_qrs_ms(x) for x in _records({"LBBB"}, 8)])
    assert normal < 110 and rbbb > 120 and lbbb > 120 and min(rbbb, lbbb) - normal > 30, (normal, rbbb, lbbb)
    volt = [np.median([np.ptp(x, axis=1).sum() for x in _records(c, 8)]) for c in ({"SR"}, {"SR", "LVH"})]
    assert volt[1] > 1.5 * volt[0]


def test_ectopic_beats_are_premature() -> None:
    cv_sinus = np.median([_rr_cv_and_rate(x)[0] for x in _records({"SR"}, 6)])
    for conds in ({"SR", "PAC"}, {"SR", "PVC"}):
        assert np.median([_rr_cv_and_rate(x)[0] for x in _records(conds, 6)]) > 3 * cv_sinus
    _, info = generate_with_info({"SR", "PVC"}, np.random.default_rng(2))
    assert (info.beat_types == 2).any() and info.pr_ms is not None


# ----------------------------------------------------------------------------- written layouts


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A small defect-free twin, with the float signals the writers were given (in record order)."""
    out = tmp_path_factory.mktemp("twin")
    captured: list[np.ndarray] = []

    def spy(*args, **kwargs):
        x, info = generate_with_info(*args, **kwargs)
        captured.append(x)
        return x, info

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth_datasets, "generate_with_info", spy)
        write_all(out, seed=7, sizes=SMALL, defect_rate=0.0)
    starts = np.cumsum([0] + [SMALL[d] for d in DATASETS])
    return out, {d: captured[starts[k] : starts[k + 1]] for k, d in enumerate(DATASETS)}


def _record_paths(root: Path, dataset: str) -> list[Path]:
    base = root / FOLDERS[dataset]
    if dataset == "mimic":
        return [base / p for p in pd.read_csv(base / "record_list.csv")["path"]]
    if dataset == "ptbxl":
        return [base / p for p in pd.read_csv(base / "ptbxl_database.csv")["filename_hr"]]
    if dataset == "cpsc2018":
        return [base / n for n in (base / "RECORDS").read_text().split()]
    subs = (base / "RECORDS").read_text().split()
    return [base / s / n for s in subs for n in (base / s / "RECORDS").read_text().split()]


def _read(path: Path, **kwargs) -> wfdb.Record:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wfdb.rdrecord(str(path), **kwargs)


def _canonical(rec: wfdb.Record) -> np.ndarray:
    rows = {canonical_lead(n): k for k, n in enumerate(rec.sig_name)}
    return rec.p_signal.T[[rows[lead] for lead in CANONICAL_LEADS]]


def test_wfdb_reads_every_layout_back_to_the_generated_signal(written) -> None:
    root, signals = written
    gains = {"mimic": 200.0, "ptbxl": 1000.0, "cpsc2018": 1000.0, "csn": 1000.0}
    for ds in DATASETS:
        paths = _record_paths(root, ds)
        assert len(paths) == SMALL[ds]
        for path, x in zip(paths, signals[ds], strict=True):
            rec = _read(path)
            assert rec.fs == 500 and rec.n_sig == 12 and rec.units == ["mV"] * 12 and rec.adc_gain == [gains[ds]] * 12
            assert np.abs(_canonical(rec) - x).max() <= 0.5 / gains[ds] + 1e-6
            if ds == "ptbxl":
                lr = _read(Path(str(path).replace("records500", "records100").replace("_hr", "_lr")))
                assert lr.fs == 100 and lr.sig_len == 1000 and lr.sig_name == list(synth_datasets.PTBXL_LEADS)
                assert np.abs(_canonical(lr) - resample_poly(x.astype(np.float64), 1, 5, axis=1)).max() <= 5e-4 + 1e-6
            if ds == "mimic":
                assert rec.sig_name == list(synth_datasets.MIMIC_LEADS) and rec.fmt == ["16"] * 12
            if ds in ("cpsc2018", "csn"):
                assert rec.fmt == ["16"] * 12 and rec.byte_offset == [24] * 12


def test_headers_checksums_and_mat_files_follow_wfdb(written) -> None:
    root, _ = written
    for ds in DATASETS:
        for path in _record_paths(root, ds):
            rec = _read(path, physical=False)
            d = rec.d_signal.astype(np.int64)
            assert all((d[:, k].sum() - rec.checksum[k]) % 65536 == 0 for k in range(12))
            assert list(d[0]) == rec.init_value
            lo, hi = (0, 65535) if ds == "ptbxl" else (-32768, 32767)
            assert all(lo <= c <= hi for c in rec.checksum)
            text = path.with_suffix(".hea").read_bytes()
            assert (b"\r\n" in text) == (ds == "csn")
            if ds in ("cpsc2018", "csn"):
                raw = path.with_suffix(".mat").read_bytes()
                assert struct.unpack("<5i", raw[:20]) == (30, 12, rec.sig_len, 0, 4) and raw[20:24] == b"val\x00"
                val = scipy.io.loadmat(str(path.with_suffix(".mat")))["val"]
                assert val.dtype == np.int16 and np.array_equal(val, rec.d_signal.T)
    mimic_hea = _record_paths(root, "mimic")[0].with_suffix(".hea").read_text().splitlines()
    study = mimic_hea[0].split()[0]
    assert mimic_hea[0].split()[1:4] == ["12", "500", "5000"] and len(mimic_hea[0].split()) == 6
    assert mimic_hea[1].startswith(f"{study}.dat 16 200.0(0)/mV 16 0 ") and mimic_hea[-1].endswith(": N")


def test_csv_files_have_the_real_columns(written) -> None:
    root, _ = written
    mm = [
        "subject_id", "study_id", "cart_id", "ecg_time", *(f"report_{i}" for i in range(18)), "bandwidth", "filtering",
        "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis",
    ]  # fmt: skip
    ptb = [
        "ecg_id", "patient_id", "age", "sex", "height", "weight", "nurse", "site", "device", "recording_date", "report",
        "scp_codes", "heart_axis", "infarction_stadium1", "infarction_stadium2", "validated_by", "second_opinion",
        "initial_autogenerated_report", "validated_by_human", "baseline_drift", "static_noise", "burst_noise",
        "electrodes_problems", "extra_beats", "pacemaker", "strat_fold", "filename_lr", "filename_hr",
    ]  # fmt: skip
    scp = [
        "", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass",
        "Statement Category", "SCP-ECG Statement Description", "AHA code", "aECG REFID", "CDISC Code", "DICOM Code",
    ]  # fmt: skip
    links = ["subject_id", "study_id", "waveform_path", "note_id", "note_seq", "charttime"]
    expected = {
        "mimic-iv-ecg/record_list.csv": ["subject_id", "study_id", "file_name", "ecg_time", "path"],
        "mimic-iv-ecg/machine_measurements.csv": mm,
        "mimic-iv-ecg/waveform_note_links.csv": links,
        "ptb-xl/ptbxl_database.csv": ptb,
        "ptb-xl/scp_statements.csv": scp,
        "synth_manifest.csv": ["dataset", "record_id", "conditions", "defect"],
    }
    for rel, cols in expected.items():
        with (root / rel).open(newline="") as fh:
            assert next(csv.reader(fh)) == cols, rel
    names = (root / "csn/ConditionNames_SNOMED-CT.csv").read_bytes()
    assert names.startswith("\ufeffAcronym Name,Full Name,Snomed_CT".encode())
    db = pd.read_csv(root / "ptb-xl/ptbxl_database.csv")
    assert db["patient_id"].dtype == float and db["strat_fold"].between(1, 10).all()
    assert (db.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    assert db["filename_lr"].iloc[0] == "records100/00000/00001_lr"
    m = pd.read_csv(root / "mimic-iv-ecg/machine_measurements.csv")
    assert m["report_17"].isna().all() and m["report_0"].notna().all()


def test_labels_follow_the_conditions(written) -> None:
    root, _ = written
    truth = {(r["dataset"], r["record_id"]): frozenset(r["conditions"].split(";")) for _, r in
             pd.read_csv(root / "synth_manifest.csv", dtype=str).iterrows()}  # fmt: skip
    scp = pd.read_csv(root / "ptb-xl/scp_statements.csv", index_col=0)
    for _, row in pd.read_csv(root / "ptb-xl/ptbxl_database.csv").iterrows():
        conds, codes = truth["ptbxl", f"{row['ecg_id']:05d}"], ast.literal_eval(row["scp_codes"])
        assert set(codes) <= set(scp.index) and ("NORM" in codes) == synth_labels.is_normal(conds)
        assert {c for cond in conds for c in synth_labels.PTBXL_CODES[cond]} <= set(codes)
    m = pd.read_csv(root / "mimic-iv-ecg/machine_measurements.csv", dtype=str)
    for _, row in m.iterrows():
        text = " ".join(row[f"report_{i}"] for i in range(18) if isinstance(row[f"report_{i}"], str))
        assert all(synth_labels.MIMIC_STATEMENTS[c] in text for c in truth["mimic", row["study_id"]])
    known = set(pd.read_csv(root / "csn/ConditionNames_SNOMED-CT.csv", encoding="utf-8-sig", dtype=str)["Snomed_CT"])
    for ds in ("cpsc2018", "csn"):
        for path in _record_paths(root, ds):
            dx = next(c for c in _read(path).comments if c.startswith("Dx:")).split(":")[1].strip().split(",")
            conds = truth[ds, path.name]
            want = synth_labels.cpsc_labels(conds) if ds == "cpsc2018" else synth_labels.csn_codes(conds)
            assert dx == want and (ds == "cpsc2018" or set(dx) <= known)


def test_scp_statements_mirror_the_real_file(written, real_ecg_dir: Path) -> None:
    root, _ = written
    real = pd.read_csv(real_ecg_dir / "ptbxl/scp_statements.csv", index_col=0, dtype=str)
    ours = pd.read_csv(root / "ptb-xl/scp_statements.csv", index_col=0, dtype=str)
    pd.testing.assert_frame_equal(ours, real.loc[ours.index])
    chapman = pd.read_csv(real_ecg_dir / "chapman/ConditionNames_SNOMED-CT.csv", dtype=str)
    real_codes = set(zip(chapman.iloc[:, 0], chapman.iloc[:, 2], strict=True))
    assert {(a, code) for a, _, code in synth_labels.CSN_CODES.values()} <= real_codes


def _digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    sizes = {"mimic": 5, "ptbxl": 4, "cpsc2018": 3, "csn": 3}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_all(tmp_path / name, seed=seed, sizes=sizes, defect_rate=0.5)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 40
    assert a != c and sum(a[k] != c.get(k) for k in a) > 20


def test_defects_are_injected_at_the_requested_rate_and_are_what_the_manifest_says(tmp_path: Path) -> None:
    sizes = {"mimic": 24, "ptbxl": 20, "cpsc2018": 20, "csn": 20}
    write_all(tmp_path, seed=1, sizes=sizes, defect_rate=0.5)
    man = pd.read_csv(tmp_path / "synth_manifest.csv", dtype=str, keep_default_na=False)
    assert set(EXPECTED_REASON) == {"nan_run", "flat_lead", "truncated_dat", "malformed_header", "missing_file",
                                    "empty_report"}  # fmt: skip
    reports = pd.read_csv(tmp_path / "mimic-iv-ecg/machine_measurements.csv", dtype=str).set_index("study_id")
    for ds in DATASETS:
        rows = man[man["dataset"] == ds]
        bad = rows[rows["defect"] != ""]
        assert len(rows) == sizes[ds] and len(bad) == round(0.5 * sizes[ds])
        assert set(bad["defect"]) == set(EXPECTED_REASON) - ({"empty_report"} if ds != "mimic" else set())
        for path, (_, row) in zip(_record_paths(tmp_path, ds), rows.iterrows(), strict=True):
            signal = path.with_suffix(".dat" if ds in ("mimic", "ptbxl") else ".mat")
            _check_defect(path, signal, row["defect"], reports.loc[row["record_id"]] if ds == "mimic" else None)


def _check_defect(path: Path, signal: Path, defect: str, report: pd.Series | None) -> None:
    if defect == "missing_file":
        assert not signal.exists()
        return
    if defect == "malformed_header":
        with pytest.raises(Exception):  # noqa: B017 - wfdb raises its own HeaderSyntaxError
            wfdb.rdheader(str(path))
        return
    header = wfdb.rdheader(str(path))
    need = 24 * header.sig_len + (24 if signal.suffix == ".mat" else 0)
    if defect == "truncated_dat":
        assert signal.stat().st_size < need
        return
    assert signal.stat().st_size == need
    x = _read(path).p_signal
    assert np.isnan(x).any() == (defect == "nan_run")
    assert (np.ptp(np.nan_to_num(x), axis=0) == 0).sum() == (defect == "flat_lead")
    if report is not None:
        empty = report[[f"report_{i}" for i in range(18)]].isna().all()
        assert empty == (defect == "empty_report")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--datasets", "--n-mimic", "--n-ptbxl", "--n-cpsc2018", "--n-csn", "--seed", "--defect-rate",
                 "--cpsc-dx", "SYNTHETIC"):  # fmt: skip
        assert flag in text
    args = ["--out", str(tmp_path), "--datasets", "cpsc2018,csn", "--n-cpsc2018", "3", "--n-csn", "2", "--quiet"]
    assert main([*args, "--cpsc-dx", "abbrev"]) == 0
    assert (tmp_path / "README.txt").read_text().startswith("SYNTHETIC")
    assert any(line.startswith("#Dx: ") and line[5:6].isalpha() for line in (tmp_path / "cpsc2018/A0001.hea").open())
    assert not (tmp_path / "mimic-iv-ecg").exists() and len(pd.read_csv(tmp_path / "synth_manifest.csv")) == 5
    foreign = tmp_path / "other"
    (foreign / "csn").mkdir(parents=True)
    (foreign / "csn" / "mine.txt").write_text("not synthetic")
    with pytest.raises(FileExistsError):
        write_all(foreign, sizes={"csn": 1}, datasets=["csn"])

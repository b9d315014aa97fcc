"""Hostile input, case by case: every corruption ends in a clear error or a counted, named skip.

Each case copies one dataset of a small clean synthetic twin (real PhysioNet
layouts), damages it the way real downloads and hand edits do, and runs the
user's commands on it in this process (``inspect`` and ``prepare``; ``ablate
--dry-run`` for search spaces). The outcome a user needs is asserted:

* ``Skip``: the record is left out, ``skipped.csv`` names it with its reason
  and a detail naming what is wrong, ``inspect`` reports the same reason, and
  every other record is cached;
* ``Warn``: the record is kept and ``warnings.csv`` names it and why;
* ``Reads``: the record is legitimate and cached correctly (e.g. another rate);
* ``Fails``: exit status 2 with an ``error:`` line naming the file and the fix,
  no traceback, and no cache that a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from deri_sweep.data import inspect as inspect_cli
from deri_sweep.data import prepare as prepare_cli
from deri_sweep.data.cache import SignalCache
from deri_sweep.data.synth import layouts as lay
from deri_sweep.data.synth import write_all
from deri_sweep.data.synth.datasets import PTBXL_LEADS
from deri_sweep.data.wfdb_io import parse_header, read_signal

SIZES = {"mimic": 10, "ptbxl": 10, "cpsc2018": 6, "csn": 6}
FOLDERS = {"mimic": "mimic-iv-ecg", "ptbxl": "ptb-xl", "cpsc2018": "cpsc2018", "csn": "csn"}
SHORT = ["--fs", "100", "--length", "1000", "--window", "1000"]  # 10 s at 100 Hz keeps each build fast


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean-twin")
    write_all(root, seed=3, sizes=SIZES, defect_rate=0.0)
    return root


# ---------------------------------------------------------------- corruptions


def _rewrite_wfdb(
    hea: Path,
    *,
    signal_mv: np.ndarray | None = None,
    leads: list[str] | None = None,
    fs: float | None = None,
    gain: str | None = None,
    n_samples: int | None = None,
) -> None:
    """Rewrite a format-16 record (``.dat`` or CinC ``.mat``) with other samples, leads, rate or gain."""
    header = parse_header(hea)
    x = read_signal(header) if signal_mv is None else signal_mv
    leads = leads or list(header.lead_names)
    spec = header.signals[0]
    gain_value = float(gain.split("/")[0].split("(")[0]) if gain else spec.gain
    frames = lay.to_adc(np.nan_to_num(x, nan=0.0), gain_value)
    frames[~np.isfinite(x).T] = lay.INVALID16
    signal_file = hea.parent / spec.file_name
    is_mat = signal_file.suffix == ".mat"
    signal_file.write_bytes(lay.mat_bytes(frames) if is_mat else lay.dat_bytes(frames))
    first = hea.read_text().splitlines()[0].split()
    record_line = f"{first[0]} {len(leads)} {fs or header.fs:g} {n_samples or frames.shape[0]}"
    comments = [line for line in hea.read_text().splitlines() if line.startswith("#")]
    gain_text = gain or f"{spec.gain:g}/mV"
    text = lay.header_text(record_line, spec.file_name, "16+24" if is_mat else "16", gain_text, frames, leads, comments)
    hea.write_text(text)


def ptbxl_hea(root: Path, key: str = "00003") -> Path:
    return root / f"records500/00000/{key}_hr.hea"


def edit_signal(fn: Callable[[np.ndarray], np.ndarray], **kwargs) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        hea = ptbxl_hea(root)
        _rewrite_wfdb(hea, signal_mv=fn(read_signal(parse_header(hea))), **kwargs)

    return corrupt


def edit_header(fn: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        hea = ptbxl_hea(root)
        hea.write_text("\n".join(fn(hea.read_text().splitlines())) + "\n")

    return corrupt


def rename_lead(old: str, new: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [line.rsplit(" ", 1)[0] + f" {new}" if line.endswith(f" {old}") else line for line in lines]


def truncate(path_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = path_of(root)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return corrupt


def edit_csv(name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / name
        fn(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)

    return corrupt


def set_cell(column: str, row: int, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[row, column] = value
        return table

    return fn


def first_csn_hea(root: Path) -> Path:
    return sorted(root.rglob("JS*.hea"))[0]


def csn_dx(code: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        hea = first_csn_hea(root)
        lines = hea.read_bytes().decode().split("\r\n")
        hea.write_bytes("\r\n".join(f"#Dx: {code}" if line.startswith("#Dx") else line for line in lines).encode())

    return corrupt


def non_utf8_report(root: Path) -> None:
    path = root / "machine_measurements.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    study = table.loc[2, "study_id"]
    text = path.read_bytes()
    line_start = text.rindex(b"\n", 0, text.index(f",{study},".encode())) + 1  # the row holding the study id
    end = text.index(b"\n", line_start)
    row = text[line_start:end]
    cells = row.split(b",")
    cells[4] = cells[4][:2] + b"\xe9" + cells[4][2:]  # report_0, as a Latin-1 editor would write an accent
    text = text[:line_start] + b",".join(cells) + text[end:]
    path.write_bytes(text)


def cpsc_original(root: Path) -> None:
    """Replace the CinC copy by the original release: ``A*.mat`` structs + ``REFERENCE.csv`` (code 10 unknown)."""
    rows = []
    for i, hea in enumerate(sorted(root.glob("A*.hea"))):
        data = read_signal(parse_header(hea))
        (root / hea.stem).with_suffix(".mat").unlink()
        hea.unlink()
        struct = {"sex": "Male", "age": np.array([[50.0]]), "data": data}
        scipy.io.savemat(root / f"{hea.stem}.mat", {"ECG": struct})
        rows.append(
            {"Recording": hea.stem, "First_label": "10" if i == 0 else "1", "Second_label": "", "Third_label": ""}
        )
    pd.DataFrame(rows).to_csv(root / "REFERENCE.csv", index=False)


def symlink_loop(root: Path) -> None:
    os.symlink(".", root / "WFDBRecords" / "loop")


def mimic_missing_file(root: Path) -> None:
    table = pd.read_csv(root / "record_list.csv", dtype=str, keep_default_na=False)
    (root / f"{table.loc[1, 'path']}.dat").unlink()


def signal_line_edit(fn: Callable[[list[str]], list[str]], key: str = "00003") -> Callable[[Path], None]:
    """Edit every signal line's tokens of a PTB-XL record's header."""

    def corrupt(root: Path) -> None:
        hea = ptbxl_hea(root, key)
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join([lines[0], *(" ".join(fn(line.split(" "))) for line in lines[1:])]) + "\n")

    return corrupt


def set_token(index: int, value: str) -> Callable[[list[str]], list[str]]:
    return lambda tokens: [*tokens[:index], value, *tokens[index + 1 :]]


def write_bytes_of(path_of: Callable[[Path], Path], fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = path_of(root)
        path.write_bytes(fn(path.read_bytes()))

    return corrupt


def mkfifo(path_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = path_of(root)
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    return corrupt


def name_signal_file(file_name: str, hea_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    """Point every signal line of a header at ``file_name``."""

    def corrupt(root: Path) -> None:
        hea = hea_of(root)
        lines = hea.read_text().splitlines()
        named = [line if line.startswith("#") else f"{file_name} {line.split(' ', 1)[1]}" for line in lines[1:]]
        hea.write_text("\n".join([lines[0], *named]) + "\n")

    return corrupt


def outside_root_copy(root: Path) -> None:
    """A valid copy of record 00003's signal outside the root, named by its header as ``../../../outside/evil.dat``."""
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copyfile(ptbxl_hea(root).with_suffix(".dat"), outside / "evil.dat")
    name_signal_file("../../../outside/evil.dat", ptbxl_hea)(root)


def other_file_same_samples(root: Path) -> None:
    """Header 00003 names ``spare.dat``, an exact copy of record 00004's signal (same size, other samples)."""
    shutil.copyfile(ptbxl_hea(root, "00004").with_suffix(".dat"), ptbxl_hea(root).parent / "spare.dat")
    name_signal_file("spare.dat", ptbxl_hea)(root)


def fifteen_channels(root: Path) -> None:
    """Record 00003's .dat rewritten with 15 interleaved channels (its 12 + 3 more) under the 12-signal header."""
    dat = ptbxl_hea(root).with_suffix(".dat")
    frames = np.fromfile(dat, dtype="<i2").reshape(-1, 12)
    np.concatenate([frames, frames[:, :3]], axis=1).astype("<i2").tofile(dat)


def cpsc_original_with(mat_of: Callable[[], dict]) -> Callable[[Path], None]:
    """The original CPSC release, with record A0002's ``ECG`` struct replaced by ``mat_of()``."""

    def corrupt(root: Path) -> None:
        cpsc_original(root)
        scipy.io.savemat(root / "A0002.mat", mat_of())

    return corrupt


def _cell_data() -> dict:
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.ones(3), np.ones(3)
    return {"ECG": {"sex": "Male", "age": 50.0, "data": cell}}


def gzip_file(path_of: Callable[[Path], Path]) -> Callable[[Path], None]:
    import gzip

    return write_bytes_of(path_of, gzip.compress)


def cpsc_original_gzip(root: Path) -> None:
    cpsc_original(root)
    gzip_file(lambda r: r / "A0002.mat")(root)


def reference_cp1252(root: Path) -> None:
    """REFERENCE.csv as a Windows editor saves it: an accented comment column in cp1252."""
    cpsc_original(root)
    path = root / "REFERENCE.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False).assign(Comment="")
    table.loc[1, "Comment"] = "vérifié"
    path.write_bytes(table.to_csv(index=False).encode("cp1252"))


def conditions(fn: Callable[[str], bytes]) -> Callable[[Path], None]:
    return write_bytes_of(lambda r: r / "ConditionNames_SNOMED-CT.csv", lambda raw: fn(raw.decode("utf-8-sig")))


def nan_leads(n_leads: int, fraction: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        y = x.copy()
        y[:n_leads, : int(fraction * x.shape[1])] = np.nan
        return y

    return fn


def spike(x: np.ndarray) -> np.ndarray:
    """Lead I at 40 mV for 2 s: beyond the cache's +-32.767 mV."""
    y = x.copy()
    y[0, :1000] = 40.0
    return y


# ------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Skip:
    key: str | Callable[[Path], str]
    reason: str
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Warn:
    key: str
    reason: str
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reads:
    key: str
    check: Callable[[pd.Series, np.ndarray], None]


@dataclass(frozen=True)
class Fails:
    words: tuple[str, ...]
    inspect_too: bool = True
    args: Callable[[Path, Path], list[str]] | None = None  # extra prepare arguments from (root, out)


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    corrupt: Callable[[Path], None]
    outcome: Skip | Warn | Reads | Fails
    extra: tuple[str, ...] = field(default_factory=tuple)
    logged: tuple[str, ...] = ()  # words of a warning the user must see in the log


def _rate(fs: float) -> Callable[[pd.Series, np.ndarray], None]:
    def check(row: pd.Series, signal: np.ndarray) -> None:
        assert row["fs"] == fs
        assert np.abs(signal[:, 900:]).max() > 0.05  # 10 s of signal, not 5 or 2.5 s followed by padding

    return check


def _mimic_key(n: int) -> Callable[[Path], str]:
    return lambda root: pd.read_csv(root / "record_list.csv", dtype=str)["study_id"].iloc[n]


CASES = [
    Case("truncated_dat", "ptbxl", truncate(lambda r: ptbxl_hea(r).with_suffix(".dat")),
         Skip("00003", "truncated_signal", ("00003_hr.dat", "bytes"))),
    Case("truncated_mat", "csn", truncate(lambda r: first_csn_hea(r).with_suffix(".mat")),
         Skip("JS00001", "truncated_signal", ("JS00001.mat",))),
    Case("samples_exceed_data", "ptbxl", edit_header(lambda ls: [ls[0].rsplit(" ", 1)[0] + " 9000", *ls[1:]]),
         Skip("00003", "truncated_signal", ("00003_hr.dat", "needs"))),
    Case("eleven_leads", "ptbxl", edit_signal(lambda x: x[:11], leads=list(PTBXL_LEADS[:11])),
         Skip("00003", "missing_leads", ("V6",))),
    Case("duplicate_lead", "ptbxl", edit_header(rename_lead("V6", "V5")), Skip("00003", "bad_header", ("twice",))),
    Case("unknown_lead", "ptbxl", edit_header(rename_lead("V1", "X1")), Skip("00003", "missing_leads", ("V1", "X1"))),
    Case("all_nan", "ptbxl", edit_signal(lambda x: np.full_like(x, np.nan)), Skip("00003", "nonfinite", ("NaN",))),
    Case("inf_run", "ptbxl", edit_signal(lambda x: np.where(np.arange(x.shape[1]) < 4000, np.inf, x)),
         Skip("00003", "nonfinite", ("NaN/inf",))),
    Case("all_zero", "ptbxl", edit_signal(np.zeros_like), Skip("00003", "flat_lead", ("constant",))),
    Case("six_dead_leads", "ptbxl", edit_signal(lambda x: np.where(np.arange(12)[:, None] < 6, np.nan, x)),
         Skip("00003", "dead_leads", ("6 of 12", "I, II"))),
    Case("one_dead_lead", "ptbxl", edit_signal(lambda x: np.where(np.arange(12)[:, None] == 7, np.nan, x)),
         Warn("00003", "dead_leads", ("V2",))),
    Case("rate_250", "ptbxl", edit_signal(lambda x: x[:, ::2], fs=250), Reads("00003", _rate(250.0))),
    Case("rate_1000", "ptbxl", edit_signal(lambda x: np.repeat(x, 2, axis=1), fs=1000), Reads("00003", _rate(1000.0))),
    Case("two_seconds", "ptbxl", edit_signal(lambda x: x[:, :1000]), Skip("00003", "too_short", ("2.0 s",))),
    Case("two_samples", "ptbxl", edit_signal(lambda x: x[:, :2]), Skip("00003", "too_short", ("2 samples",))),
    Case("rate_typo_5hz", "ptbxl", edit_header(lambda ls: [ls[0].replace(" 500 ", " 5 "), *ls[1:]]),
         Skip("00003", "implausible_rate", ("5 Hz",))),
    Case("units_1000_per_uv", "ptbxl", edit_signal(lambda x: x, gain="1000/uV"),
         Skip("00003", "implausible_amplitude", ("mV",))),
    Case("units_uv_as_mv", "ptbxl", edit_signal(lambda x: x * 1000), Skip("00003", "implausible_amplitude", ("mV",))),
    Case("scp_not_a_dict", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("scp_codes", 2, "NORM, 100")),
         Skip("00003", "bad_labels", ("scp_codes", "ptbxl_database.csv"))),
    Case("scp_likelihood_text", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("scp_codes", 2, "{'NORM': 'high'}")),
         Skip("00003", "bad_labels", ("'high'",))),
    Case("fold_out_of_range", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("strat_fold", 2, "11")),
         Skip("00003", "bad_metadata", ("strat_fold", "1..10"))),
    Case("ecg_id_not_a_number", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("ecg_id", 2, "x3")),
         Skip("x3", "bad_metadata", ("ecg_id", "ptbxl_database.csv"))),
    Case("duplicate_ecg_id", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("ecg_id", 3, "3")),
         Skip("00003", "duplicate_id", ("ptbxl_database.csv", "rows"))),
    Case("no_strat_fold", "ptbxl", edit_csv("ptbxl_database.csv", lambda t: t.drop(columns="strat_fold")),
         Fails(("ptbxl_database.csv", "strat_fold"))),
    Case("non_utf8_report", "mimic", non_utf8_report, Skip(_mimic_key(2), "bad_report", ("UTF-8", "data row 3"))),
    Case("empty_report", "mimic", edit_csv("machine_measurements.csv", lambda t: t.assign(
        **{c: ["", *t[c][1:]] for c in t.columns if c.startswith("report_")})),
         Skip(_mimic_key(0), "short_report", ("0 words",))),
    Case("all_reports_empty", "mimic", edit_csv("machine_measurements.csv", lambda t: t.assign(
        **{c: "" for c in t.columns if c.startswith("report_")})),
         Fails(("no record", "short_report"), inspect_too=False)),
    Case("empty_measurements_file", "mimic", lambda r: (r / "machine_measurements.csv").write_bytes(b""),
         Fails(("machine_measurements.csv", "empty"))),
    Case("duplicate_study_id", "mimic", edit_csv("record_list.csv", lambda t: pd.concat([t, t.iloc[[4]]])),
         Skip(_mimic_key(4), "duplicate_id", ("record_list.csv", "rows"))),
    Case("record_list_missing_file", "mimic", mimic_missing_file,
         Skip(_mimic_key(1), "missing_file", ("not found",))),
    Case("cpsc_unknown_reference_class", "cpsc2018", cpsc_original,
         Skip("A0001", "no_labels", ("REFERENCE.csv", "10"))),
    Case("snomed_outside_mapping", "csn", csn_dx("999999999"), Skip("JS00001", "no_labels", ("999999999",))),
    Case("symlink_loop", "csn", symlink_loop, Reads("JS00002", lambda row, x: None)),
    Case("root_is_a_file", "ptbxl", lambda r: (shutil.rmtree(r), r.write_text("not a folder")),
         Fails(("is a file", "folder"))),
    Case("out_inside_root", "csn", lambda r: None, Fails(("inside the dataset root",), False,
                                                          lambda root, out: ["--out", str(root / "cache")])),
    Case("out_is_a_file", "ptbxl", lambda r: None, Fails(("is a file",), False,
                                                      lambda root, out: ["--out", str(out.parent / "file")])),
    Case("split_file_missing", "ptbxl", lambda r: None, Fails(("train.csv", "not found"), False,
                                                           lambda root, out: ["--split-files", "train=train.csv"])),
    Case("shard_size_zero", "ptbxl", lambda r: None, Fails(("--shard-size",), False,
                                                        lambda root, out: ["--shard-size", "0"])),
    # ---- second round (issue 30): tracebacks from one bad cell or file
    Case("ecg_id_inf", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("ecg_id", 2, "inf")),
         Skip("inf", "bad_metadata", ("ecg_id 'inf'", "whole number"))),
    Case("strat_fold_1e999", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("strat_fold", 2, "1e999")),
         Skip("00003", "bad_metadata", ("strat_fold '1e999'", "1..10"))),
    Case("scp_codes_200k_minus", "ptbxl", edit_csv("ptbxl_database.csv", set_cell("scp_codes", 2, "-" * 200_000 + "1")),
         Skip("00003", "bad_labels", ("200001 characters", "10000"))),
    Case("baseline_400_digits", "ptbxl", signal_line_edit(set_token(2, f"1000.0({'9' * 400})/mV")),
         Skip("00003", "bad_baseline", ("400 digits", "format 16"))),
    Case("adc_zero_400_digits", "ptbxl", signal_line_edit(lambda t: [t[0], t[1], "1000.0/mV", t[3], "9" * 400, *t[5:]]),
         Skip("00003", "bad_baseline", ("400 digits",))),
    Case("cpsc_empty_struct", "cpsc2018", cpsc_original_with(
        lambda: {"ECG": np.zeros((0, 0), dtype=[("sex", "O"), ("age", "O"), ("data", "O")])}),
         Skip("A0002", "unreadable_mat", ("A0002.mat", "empty"))),
    Case("cpsc_data_text", "cpsc2018", cpsc_original_with(lambda: {"ECG": {"sex": "Male", "age": 50.0, "data": "abc"}}),
         Skip("A0002", "unreadable_mat", ("A0002.mat", "ECG.data is text"))),
    Case("cpsc_data_cell", "cpsc2018", cpsc_original_with(_cell_data),
         Skip("A0002", "unreadable_mat", ("A0002.mat", "cell array"))),
    Case("conditions_utf16", "csn", conditions(lambda text: text.encode("utf-16")),
         Reads("JS00002", lambda row, x: None), logged=("ConditionNames_SNOMED-CT.csv", "UTF-16")),
    Case("conditions_cp1252_byte", "csn", conditions(lambda text: text.replace("Sinus", "Sinus é", 1).encode("cp1252")),
         Reads("JS00002", lambda row, x: None), logged=("ConditionNames_SNOMED-CT.csv", "Windows-1252")),
    Case("conditions_undecodable", "csn", conditions(lambda text: text.encode() + b"X,\x81\x8d,1\n"),
         Fails(("ConditionNames_SNOMED-CT.csv", "is not UTF-8", "re-save it as UTF-8"))),
    Case("reference_cp1252", "cpsc2018", reference_cp1252, Skip("A0001", "no_labels", ("REFERENCE.csv", "10")),
         logged=("REFERENCE.csv", "Windows-1252")),
    # ---- a hang
    Case("fifo_header", "csn", mkfifo(lambda r: first_csn_hea(r).parent / "JS09999.hea"),
         Skip("JS09999", "not_a_file", ("JS09999.hea", "FIFO"))),
    Case("fifo_signal_file", "csn", mkfifo(lambda r: first_csn_hea(r).with_suffix(".mat")),
         Skip("JS00001", "not_a_file", ("JS00001.mat", "FIFO"))),
    # ---- wrong data accepted without a word
    Case("names_other_records_dat", "ptbxl", name_signal_file("00004_hr.dat", ptbxl_hea),
         Skip("00003", "wrong_signal_file", ("00004_hr.dat", "record 00004_hr"))),
    Case("names_other_records_mat", "cpsc2018", name_signal_file("A0004.mat", lambda r: r / "A0003.hea"),
         Skip("A0003", "wrong_signal_file", ("A0004.mat",))),
    Case("checksum_mismatch", "ptbxl", other_file_same_samples, Skip("00003", "checksum_mismatch", ("spare.dat",))),
    Case("dat_outside_root", "ptbxl", outside_root_copy, Skip("00003", "outside_root", ("evil.dat", "outside"))),
    Case("etc_passwd", "ptbxl", name_signal_file("../../../../../../../../etc/passwd", ptbxl_hea),
         Skip("00003", "outside_root", ("etc/passwd",))),
    Case("fifteen_channels", "ptbxl", fifteen_channels, Skip("00003", "size_mismatch", ("00003_hr.dat", "30000 more"))),
    Case("gain_zero", "ptbxl", signal_line_edit(set_token(2, "0(0)/mV")),
         Skip("00003", "uncalibrated", ("gain 0", "uncalibrated"))),
    Case("units_mmhg", "ptbxl", signal_line_edit(set_token(2, "1000.0(0)/mmHg")),
         Skip("00003", "not_ecg_units", ("'mmHg'",))),
    Case("baseline_1e9", "ptbxl", signal_line_edit(set_token(2, "1000.0(1000000000)/mV")),
         Skip("00003", "bad_baseline", ("1000000000", "-32768..32767"))),
    Case("eight_leads_nan_74pct", "ptbxl", edit_signal(nan_leads(8, 0.74)),
         Warn("00003", "interpolated", ("49.3%", "--warn-interpolated-fraction"))),
    Case("clipped_lead", "ptbxl", edit_signal(spike, gain="500/mV"),
         Warn("00003", "clipped", ("clipped", "--warn-clipped-fraction"))),
    Case("report_nul_and_long", "ptbxl",
         edit_csv("ptbxl_database.csv", set_cell("report", 2, "sinus\x00 " + "x" * 5000)),
         Warn("00003", "report_truncated", ("2000 characters",))),
    # ---- good records lost
    Case("header_utf8_bom", "ptbxl", write_bytes_of(ptbxl_hea, lambda raw: b"\xef\xbb\xbf" + raw),
         Reads("00003", _rate(500.0))),
    Case("negative_gain", "ptbxl", edit_signal(lambda x: x, gain="-1000/mV"), Reads("00003", _rate(500.0))),
    Case("units_micro_cp1252", "ptbxl",
         write_bytes_of(ptbxl_hea, lambda raw: raw.replace(b"1000.0(0)/mV", b"1(0)/\xb5V")),
         Reads("00003", _rate(500.0))),
    # ---- misleading messages
    Case("mat_gzip", "csn", gzip_file(lambda r: first_csn_hea(r).with_suffix(".mat")),
         Skip("JS00001", "unreadable_mat", ("gzip",))),
    Case("mat_v73", "csn", write_bytes_of(lambda r: first_csn_hea(r).with_suffix(".mat"),
                                          lambda raw: b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF" + raw[:100]),
         Skip("JS00001", "unreadable_mat", ("v7.3",))),
    Case("cpsc_original_gzip", "cpsc2018", cpsc_original_gzip, Skip("A0002", "unreadable_mat", ("A0002.mat", "gzip"))),
    Case("ptbxl_code_outside_class_list", "ptbxl",
         edit_csv("ptbxl_database.csv", set_cell("scp_codes", 2, "{'XYZ': 100.0}")),
         Skip("00003", "no_labels", ("XYZ", "scp_statements.csv"))),
    Case("warn_fraction_out_of_range", "ptbxl", lambda r: None,
         Fails(("--warn-clipped-fraction must lie in [0, 1]",), False,
               lambda root, out: ["--warn-clipped-fraction", "2"])),
    Case("fs_1e400", "ptbxl", edit_header(lambda ls: [ls[0].replace(" 500 ", " 1e400 "), *ls[1:]]),
         Skip("00003", "bad_header", ("'1e400'", "finite positive"))),
]  # fmt: skip


def _run(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    except BaseException:  # a traceback is never a good outcome
        pytest.fail(f"{argv}: raised\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(
    case: Case, twin: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / FOLDERS[case.dataset]
    shutil.copytree(twin / FOLDERS[case.dataset], root, symlinks=True)
    case.corrupt(root)
    out = tmp_path / "out" / "cache"
    out.parent.mkdir()
    (out.parent / "file").write_text("a file where a folder should be")
    outcome = case.outcome
    args = outcome.args(root, out) if isinstance(outcome, Fails) and outcome.args else []
    argv = [str(root), "--format", case.dataset, "--workers", "1", "--quiet", "--max-skip-fraction", "0.5", *SHORT]
    if "--out" not in args:
        argv += ["--out", str(out)]
    caplog.set_level("WARNING")
    code, stdout, err = _run(prepare_cli.main, argv + args, capsys)
    for word in case.logged:
        assert word in caplog.text, (word, caplog.text)
    target = Path(args[args.index("--out") + 1]) if "--out" in args else out
    if isinstance(outcome, Fails):
        assert code == 2, (stdout, err)
        assert err.startswith("error: ") or "error:" in err, err
        for word in outcome.words:
            assert word in err, (word, err)
        meta = target / "cache.json"
        assert not (meta.is_file() and json.loads(meta.read_text()).get("complete")), "a failed build looks finished"
        if outcome.inspect_too:
            code, _, err = _run(
                inspect_cli.main, [str(root), "--format", case.dataset, "--json", "--workers", "1"], capsys
            )
            assert code == 2 and all(word in err for word in outcome.words), err
        return
    assert code == 0, err
    cache = SignalCache.open(out)
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    code, report, err = _run(
        inspect_cli.main, [str(root), "--format", case.dataset, "--json", "--workers", "1"], capsys
    )
    assert code == 0, err
    seen = {r["id"]: r for r in json.loads(report)["records"]}
    if isinstance(outcome, Skip):
        key = outcome.key(root) if callable(outcome.key) else outcome.key
        rows = skipped[skipped["record_id"] == key]
        assert list(rows["reason"]) == [outcome.reason], skipped.to_string()
        for word in outcome.words:
            assert word in rows["detail"].iloc[0], (word, rows["detail"].iloc[0])
        assert key not in set(cache.index["record_id"].astype(str))
        if outcome.reason == "no_labels":  # a filter of prepare: inspect reads the record and shows it has no class
            assert seen[key]["ok"] and not any(seen[key]["labels"].values()), seen[key]
        else:
            assert seen[key]["reason"] == outcome.reason, seen[key]
        others = skipped[skipped["record_id"] != key]
        assert set(others["reason"]) <= {"no_labels"}, others.to_string()  # the clean records are all cached
        return
    assert skipped.empty or set(skipped["reason"]) <= {"no_labels"}, skipped.to_string()
    index = cache.index.assign(record_id=cache.index["record_id"].astype(str))
    assert outcome.key in set(index["record_id"]), index["record_id"].tolist()
    row = index[index["record_id"] == outcome.key].iloc[0]
    if isinstance(outcome, Warn):
        warnings = pd.read_csv(out / "warnings.csv", dtype=str, keep_default_na=False)
        mine = warnings[warnings["record_id"] == outcome.key]
        assert list(mine["reason"]) == [outcome.reason], warnings.to_string()
        assert all(word in mine["detail"].iloc[0] for word in outcome.words), mine["detail"].iloc[0]
        assert json.loads((out / "cache.json").read_text())["summary"]["warnings"] == {outcome.reason: 1}
        assert seen[outcome.key]["ok"] and seen[outcome.key]["warnings"], seen[outcome.key]
        return
    outcome.check(row, cache.raw(np.array([int(row.name)]))[0] / 1000.0)
    assert len(index) + len(skipped) == len(seen)  # every record once, the symlink loop included


# ---------------------------------------------------------------- search spaces

SPACES = {
    "not_a_mapping": ("- search: grid\n", "expected a mapping"),
    "unknown_key": ("search: grid\nsedes: [1]\n", "unknown key(s) ['sedes']"),
    "wrong_type": ("search: grid\nseeds: one\n", "seeds: expected a list"),
    "negative_depth": ("search: grid\ngrid: {model.interaction.depth: [-1]}\n", "interaction.depth=-1 must be >= 0"),
    "empty_grid_axis": ("search: grid\ngrid: {model.interaction.depth: []}\n", "has no values"),
    "string_loss_weight": ("search: grid\nbase: {model.loss.w_cma: high}\n", "model.loss.w_cma: expected a number"),
    "infinite_lr": ("search: grid\nbase: {optim.lr: .inf}\n", "optim.lr: expected a finite number"),
    "unknown_probe_dataset": (
        "search: grid\nprobes: {datasets: [ptb_xl]}\n",
        "probes.datasets: ['ptb_xl'] have no cache",
    ),
    "metric_typo": ("search: grid\nmetric: val_totl\n", "'val_totl' is not reported"),
    "duplicate_key": ("search: grid\nseeds: [1]\nseeds: [2]\n", "duplicate key 'seeds'"),
    "fraction_out_of_range": ("search: grid\nprobes: {fractions: [0.0, 5.0]}\n", "each must be in (0, 1]"),
    "zero_workers": ("search: grid\ntrial: {workers: 0}\n", "trial.workers=0 must be >= 1"),
    "missing_file": (None, "cannot read search space"),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_bad_space(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from deri_sweep import ablate

    text, message = SPACES[name]
    path = tmp_path / "space.yaml"
    if text is not None:
        path.write_text(text)
    code, _, err = _run(ablate.main, ["--space", str(path), "--dry-run", "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 2, err
    assert err.startswith(f"error: {path}: ") and message in err, err
    assert not (tmp_path / "data").exists()  # a dry run writes nothing


# ---------------------------------------------------------------- costs and text


def test_a_24_hour_record_costs_what_a_10_second_one_costs(twin: Path, tmp_path: Path) -> None:
    """A 24-hour 12-lead Holter record (1 GiB of int16, 4 GiB as float64) is read only as far as the cache keeps.

    The .dat is sparse: the first 10 s of a twin record, then zeros up to the 24 hours its header claims, so the
    test writes 120 KB. The peak of Python/numpy allocations while reading it stays that of a 10-second record.
    """
    import tracemalloc

    from deri_sweep.data.readers import open_reader
    from deri_sweep.data.signal import SignalOptions

    src = ptbxl_hea(twin / "ptb-xl")
    header = parse_header(src)
    first = np.fromfile(src.with_suffix(".dat"), dtype="<i2")
    n = 500 * 86_400
    for name, samples in (("holter", n), ("short", 5000)):
        with open(tmp_path / f"{name}.dat", "wb") as fh:
            fh.write(first.tobytes())
            fh.truncate(2 * 12 * samples)
        lines = [f"{name} 12 500 {samples}"]
        lines += [
            f"{name}.dat 16 {s.gain:g}({s.baseline})/mV 16 0 {s.init_value} {s.checksum} 0 {s.lead_name}"
            for s in header.signals
        ]
        (tmp_path / f"{name}.hea").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "holter.dat").stat().st_size == 2 * 12 * n
    reader = open_reader("wfdb-dir", tmp_path, SignalOptions(fs=100, length=1000, window=1000))
    short = reader.read("short")  # first: the lazy imports of reading (scipy.signal) are not counted below
    tracemalloc.start()
    try:
        holter = reader.read("holter")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"reading the first 10 s of a 24-hour record peaked at {peak / 2**20:.0f} MiB"
    assert holter.n_samples == n and holter.fs == 500.0
    np.testing.assert_array_equal(holter.signal, short.signal)  # the cache's window, bit for bit


def test_report_text_loses_control_characters_and_is_cut_with_a_count() -> None:
    from deri_sweep.data.readers.mimic import MAX_REPORT_CHARS, clean_report_counted

    text, cut = clean_report_counted(["Sinus\x00 rhythm\x1b[0m", "", "x" * 3000])
    assert text.startswith("sinus rhythm[0m. xxx") and text.endswith("...")
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)
    assert len(text) == MAX_REPORT_CHARS and cut == len("sinus rhythm[0m. ") + 3000 + 1 - (MAX_REPORT_CHARS - 3)
    assert clean_report_counted(["Sinus rhythm", "Normal ECG"]) == ("sinus rhythm. normal ecg.", 0)

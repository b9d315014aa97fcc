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
def test_bad_input(case: Case, twin: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
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
    code, stdout, err = _run(prepare_cli.main, argv + args, capsys)
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

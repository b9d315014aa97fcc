"""Cache build: parallel, resumable, refuses other settings, reads back what the readers read."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from deri_sweep.data.cache import CacheDataset, CacheError, SignalCache, keep_batch
from deri_sweep.data.prepare import PrepareOptions, TooManySkipped, prepare
from deri_sweep.data.readers import open_reader
from deri_sweep.data.signal import SignalOptions

SKIP_OF_DEFECT = {
    "flat_lead": "flat_lead",
    "truncated_dat": "truncated_signal",
    "malformed_header": "bad_header",
    "missing_file": "missing_file",
    "empty_report": "short_report",
}


@pytest.fixture(scope="module")
def ptbxl_cache(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "ptbxl"
    prepare(synth_root / "ptb-xl", out, PrepareOptions("ptbxl", shard_size=32, workers=2, progress=False))
    return out


def test_cache_reads_back_what_the_reader_reads(ptbxl_cache, synth_root):
    cache = SignalCache.open(ptbxl_cache)
    reader = open_reader("ptbxl", synth_root / "ptb-xl")
    rows = np.arange(0, len(cache), 17)
    raw = cache.raw(rows)
    for i, row in enumerate(rows):
        rec = reader.read(cache.index["record_id"].iloc[row])
        np.testing.assert_allclose(raw[i] / 1000.0, rec.signal, atol=5e-4 + 1e-6)  # int16 at 1 uV
        assert cache.index["subject_id"].iloc[row] == rec.subject_id
        labels = {c for c in cache.label_sets["super"] if cache.index[f"super/{c}"].iloc[row]}
        assert labels == set(rec.labels["super"])
    x = cache.signals(rows[:4])
    assert x.shape == (4, 12, 5000)
    assert float(x.min()) == pytest.approx(0.0, abs=1e-6) and float(x.max()) == pytest.approx(1.0, abs=1e-6)


def test_skipped_csv_lists_every_defect_with_its_reason(ptbxl_cache, synth_manifest):
    skipped = pd.read_csv(ptbxl_cache / "skipped.csv", dtype=str).set_index("record_id")
    truth = synth_manifest[synth_manifest["dataset"] == "ptbxl"]
    expected = {r.record_id: SKIP_OF_DEFECT[r.defect] for r in truth.itertuples() if r.defect in SKIP_OF_DEFECT}
    assert dict(skipped["reason"]) == expected
    assert all(record_id.zfill(5) in detail for record_id, detail in skipped["detail"].items())
    info = json.loads((ptbxl_cache / "cache.json").read_text())
    assert info["summary"]["records_used"] == len(truth) - len(expected)
    assert info["summary"]["repaired_samples"] > 0  # the nan_run records were kept, repaired
    assert info["class_descriptions"]["super"]["MI"] == "myocardial infarction"


def test_ptbxl_splits_follow_folds_and_keep_patients_apart(ptbxl_cache):
    index = SignalCache.open(ptbxl_cache).index
    folds = index["strat_fold"].astype(int)
    assert (index.loc[folds <= 8, "split"] == "train").all()
    assert (index.loc[folds == 9, "split"] == "val").all() and (index.loc[folds == 10, "split"] == "test").all()
    assert index.groupby("subject_id")["split"].nunique().max() == 1


def test_mimic_reports_get_unique_ids_and_short_ones_are_dropped(synth_root, synth_manifest, tmp_path):
    info = prepare(synth_root / "mimic-iv-ecg", tmp_path / "m", PrepareOptions("mimic", shard_size=64, progress=False))
    cache = SignalCache.open(tmp_path / "m")
    reports = cache.reports()
    assert reports["report_id"].tolist() == list(range(len(reports)))
    assert reports["text"].is_unique and info["summary"]["unique_reports"] == len(reports) < len(cache)
    ids = cache.index["report_id"]
    assert ids.between(0, len(reports) - 1).all()
    n_empty = int((synth_manifest.query("dataset == 'mimic'")["defect"] == "empty_report").sum())
    assert info["summary"]["skipped"]["short_report"] == n_empty > 0
    val_subjects = set(cache.index.loc[cache.index["split"] == "val", "subject_id"])
    assert val_subjects and not val_subjects & set(cache.index.loc[cache.index["split"] == "train", "subject_id"])
    batch = CacheDataset(cache, np.arange(8)).__getitems__([0, 3, 5])
    assert batch["ecg"].shape == (3, 12, 5000) and batch["report_id"].tolist() == ids.iloc[[0, 3, 5]].tolist()
    loader = __import__("torch").utils.data.DataLoader(
        CacheDataset(cache, np.arange(16)), batch_size=4, collate_fn=keep_batch
    )
    assert [b["ecg"].shape[0] for b in loader] == [4, 4, 4, 4]


def test_resume_rebuilds_only_missing_shards_and_other_settings_are_refused(synth_root, tmp_path):
    out = tmp_path / "c"
    opts = PrepareOptions("cpsc2018", shard_size=16, progress=False)
    prepare(synth_root / "cpsc2018", out, opts)
    first = pd.read_parquet(out / "index.parquet")
    kept = out / "shards" / "shard_00001.npy"
    mtime = kept.stat().st_mtime_ns
    # simulate a crash: one shard unfinished, the cache not complete
    (out / "shards" / "shard_00003.parquet").unlink()
    info = json.loads((out / "cache.json").read_text())
    (out / "cache.json").write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(CacheError, match="did not finish"):
        SignalCache.open(out)
    prepare(synth_root / "cpsc2018", out, opts)
    assert kept.stat().st_mtime_ns == mtime  # finished shards are kept
    pd.testing.assert_frame_equal(pd.read_parquet(out / "index.parquet"), first)
    other = PrepareOptions("cpsc2018", SignalOptions(window=2500), shard_size=16, progress=False)
    with pytest.raises(CacheError, match=r"other settings \(signal: .*'window': 5000.* -> .*'window': 2500"):
        prepare(synth_root / "cpsc2018", out, other)
    prepare(synth_root / "cpsc2018", out, other, overwrite=True)
    assert not SignalCache.open(out).raw(np.arange(3))[:, :, 2500:].any()


def test_too_many_unreadable_records_stop_with_the_reasons(synth_root, tmp_path):
    opts = PrepareOptions("csn", shard_size=50, progress=False, max_skip_fraction=0.01)
    with pytest.raises(TooManySkipped, match=r"4 of 100 records are unreadable \(limit 1%\).*bad_header: 1") as info:
        prepare(synth_root / "csn", tmp_path / "csn", opts)
    assert "skipped.csv" in str(info.value) and "--max-skip-fraction" in str(info.value)
    with pytest.raises(CacheError):
        SignalCache.open(tmp_path / "csn")


def test_user_split_files_define_splits_and_labels(synth_root, tmp_path):
    db = pd.read_csv(synth_root / "ptb-xl" / "ptbxl_database.csv")
    ids = db["ecg_id"].tolist()
    for split, part in {"train": ids[:100], "val": ids[100:130], "test": ids[130:]}.items():
        frame = pd.DataFrame({"ecg_id": part, "NORM": [i % 2 for i in part], "AFIB": [int(i % 3 == 0) for i in part]})
        if split == "val":
            frame = frame[["ecg_id", "AFIB", "NORM"]]  # another column order: aligned by name
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    files = tuple((s, str(tmp_path / f"{s}.csv")) for s in ("train", "val", "test"))
    opts = PrepareOptions("ptbxl", shard_size=64, progress=False, split_files=files, split_task="af")
    prepare(synth_root / "ptb-xl", tmp_path / "p", opts)
    cache = SignalCache.open(tmp_path / "p")
    assert cache.label_sets == {"af": ["NORM", "AFIB"]}
    idx = cache.index.assign(ecg=cache.index["record_id"].astype(int))
    assert (idx.loc[idx["ecg"].isin(ids[100:130]), "split"] == "val").all()
    assert (idx["af/NORM"] == idx["ecg"] % 2).all() and (idx["af/AFIB"] == (idx["ecg"] % 3 == 0)).all()


def test_cli_and_inspect_json(synth_root, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "deri_sweep.data.inspect",
            str(synth_root / "cpsc2018"),
            "--format",
            "cpsc2018",
            "--json",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report["records_found"] == 100 and report["records_read"] == 96
    assert sum(report["skipped"].values()) == 4 and report["sampling_rates"] == {"500.0": 96}
    assert {r["id"] for r in report["records"] if not r["ok"]} and report["durations_s"]["max"] > 10
    assert sum(report["label_counts"]["cpsc2018"].values()) >= 96
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "deri_sweep.data.prepare",
            str(tmp_path / "nope"),
            "--format",
            "ptbxl",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "not found" in bad.stderr


def _prepare_cli(root, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deri_sweep.data.prepare", str(root), "--format", "ptbxl", "--out", str(out),
            "--shard-size", "8", "--quiet", *extra]  # fmt: skip


def _wait_for_shards(out, n: int, child: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "shards").glob("shard_*.parquet"))) < n:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.05)


def test_interrupted_then_killed_builds_resume_to_the_uninterrupted_cache(synth_root, tmp_path):
    root = synth_root / "ptb-xl"
    reference = tmp_path / "reference"
    assert subprocess.run(_prepare_cli(root, reference, "--workers", "1"), check=False).returncode == 0
    out = tmp_path / "interrupted"
    # the child must see SIGINT as a terminal sends it, even when this test runs in a background job (CI)
    as_terminal = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), "stderr": subprocess.PIPE}
    child = subprocess.Popen(_prepare_cli(root, out, "--workers", "2"), text=True, **as_terminal)
    _wait_for_shards(out, 2, child)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "run the same command to resume" in err and "Traceback" not in err, err
    built = len(list((out / "shards").glob("shard_*.parquet")))
    assert built < 20  # stopped early: the 160 records make 20 shards
    child = subprocess.Popen(_prepare_cli(root, out, "--workers", "2"), text=True, **as_terminal)
    _wait_for_shards(out, built + 2, child)
    child.kill()  # SIGKILL: no clean-up at all, a shard may be half-written
    child.communicate(timeout=60)  # returns only once the pool workers are gone too (they hold the pipe)
    assert not json.loads((out / "cache.json").read_text())["complete"]
    with pytest.raises(CacheError, match="did not finish"):
        SignalCache.open(out)
    assert subprocess.run(_prepare_cli(root, out, "--workers", "2"), check=False).returncode == 0
    ours, theirs = (json.loads((d / "cache.json").read_text()) for d in (out, reference))
    assert len(ours["shards"]) == 20 and ours["shards"] == theirs["shards"]  # byte-identical signal shards
    for name in ("index.parquet", "reports.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(reference / name))
    assert (out / "skipped.csv").read_text() == (reference / "skipped.csv").read_text()
    assert not list(out.rglob("*.tmp"))  # the killed build's partial files are gone
    for name, entry in ours["shards"].items():
        data = (out / "shards" / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_two_prepares_into_one_folder_never_mix(synth_root, tmp_path):
    root = synth_root / "ptb-xl"
    out = tmp_path / "shared"
    runs = [subprocess.Popen(_prepare_cli(root, out, "--workers", "1"), stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(run.wait(timeout=300), run.communicate()[1]) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    refused = [err for code, err in results if code == 2]
    assert all("another prepare" in err and "--out" in err for err in refused), refused
    reference = tmp_path / "reference"
    prepare(root, reference, PrepareOptions("ptbxl", shard_size=8, progress=False))
    ours, theirs = (json.loads((d / "cache.json").read_text()) for d in (out, reference))
    assert ours["complete"] and ours["shards"] == theirs["shards"]
    # while one build holds the folder, another is refused at once, naming the holder
    with open(out / ".prepare.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.seek(0)
        held.truncate()
        held.write("node-7:4242")
        held.flush()
        with pytest.raises(CacheError, match=r"another prepare \(node-7:4242\)"):
            prepare(root, out, PrepareOptions("ptbxl", shard_size=4, progress=False), overwrite=True)


def test_cache_files_honour_the_umask(synth_root, tmp_path):
    old = os.umask(0o022)
    try:
        prepare(synth_root / "cpsc2018", tmp_path / "c", PrepareOptions("cpsc2018", shard_size=64, progress=False))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes  # readable by the cluster's other users

"""Unwritable and full storage: a clear message naming the path and the fix, and nothing half-written.

Real file systems, not mocks: a read-only tmpfs and a tmpfs a few hundred KiB
in size (mounting needs root, as in CI; elsewhere the read-only case falls back
to a folder without write permission and the full-disk cases skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_ablate

from deri_sweep.common.storage import StorageError, atomic_write_text, check_writable


def _mount_tmpfs(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path):
    target = tmp_path / "readonly"
    if _mount_tmpfs(target, "ro,size=1m"):
        yield target
        subprocess.run(["umount", str(target)], check=False)
    elif os.geteuid() != 0:
        target.chmod(0o500)
        yield target
        target.chmod(0o700)
    else:
        pytest.skip("cannot mount a read-only tmpfs here (root without mount permission)")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB file system."""
    target = tmp_path / "small"
    if not _mount_tmpfs(target, "size=512k"):
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    yield target
    subprocess.run(["umount", str(target)], check=False)


def test_ablate_refuses_an_unwritable_run_directory_before_starting_anything(readonly_dir, short_caches, tmp_path):
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    run = run_ablate(["--out", str(readonly_dir / "run"), "--caches", *caches], tmp_path)
    assert run.returncode == 2
    message = run.stderr.strip().splitlines()[-1]
    assert str(readonly_dir / "run") in message and "cannot write the run directory" in message
    assert "read-only" in message or "permission denied" in message
    assert "choose" in message  # the fix
    assert "Ray" not in run.stderr  # refused before Ray started


def test_ablate_refuses_a_run_directory_without_enough_free_space(small_disk, short_caches, tmp_path):
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    run = run_ablate(["--out", str(small_disk / "run"), "--caches", *caches], tmp_path)
    assert run.returncode == 2
    message = run.stderr.strip().splitlines()[-1]
    assert f"{small_disk / 'run'}: only 0.00 GiB free for the run directory, below the 1 GiB" in message
    assert "--min-free-gb" in message


def test_a_cache_build_on_a_full_disk_stops_clearly_and_leaves_nothing_that_looks_complete(
    small_disk, synth_root, tmp_path
):
    out = small_disk / "ptbxl"
    done = subprocess.run(
        [sys.executable, "-m", "deri_sweep.data.prepare", str(synth_root / "ptb-xl"), "--format", "ptbxl",
         "--out", str(out), "--length", "1000", "--window", "1000", "--workers", "1", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {out}") and "No space left on device" in message
    assert "the disk is full: free space there or choose a folder on another disk" in message
    assert not (out / "index.parquet").exists()
    assert '"complete": false' in (out / "cache.json").read_text()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary leftovers


def test_an_atomic_write_that_hits_a_full_disk_keeps_the_previous_file(small_disk):
    target = small_disk / "results.csv"
    atomic_write_text(target, "trial,value\na,1\n")
    with pytest.raises(StorageError, match=r"results.csv: cannot write the file \(No space left on device\)"):
        atomic_write_text(target, "x" * (2 << 20))
    assert target.read_text() == "trial,value\na,1\n"
    assert [p.name for p in small_disk.iterdir()] == ["results.csv"]


def test_check_writable_names_a_file_standing_where_a_folder_should_be(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(StorageError, match=r"taken/run: cannot write the run directory .*choose another path"):
        check_writable(tmp_path / "taken" / "run", what="run directory")


def test_temporary_checkpoint_folders_of_dead_workers_are_removed(tmp_path):
    import subprocess
    import sys

    from deri_sweep.train.recipe import CKPT_TMP_PREFIX, remove_stale_checkpoint_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{CKPT_TMP_PREFIX}{int(dead.stdout)}-abc"  # its process has exited
    live = tmp_path / f"{CKPT_TMP_PREFIX}{os.getpid()}-def"  # this process: a worker still writing
    other = tmp_path / f"{CKPT_TMP_PREFIX}notapid-ghi"
    for folder in (stale, live, other):
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "state.pt").write_bytes(b"x" * 1000)
    assert remove_stale_checkpoint_dirs(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()

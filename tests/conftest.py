"""Shared pytest fixtures."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

#: Under pytest-xdist (the README's test command runs 3 workers) every worker starts its
#: own local Ray clusters. Each gets its own Ray temp folder, so that an ``ablate`` with no
#: ``--address`` never joins the cluster another worker started with ``ray start --head``
#: (Ray looks for ``<temp>/ray/ray_current_cluster``). Set before anything imports Ray.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("RAY_TMPDIR", f"/tmp/ray-{WORKER}")

REAL_ECG_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/real-ecg"


@pytest.fixture(scope="session")
def real_ecg_dir() -> Path:
    """The folder of real PhysioNet sample records (../shared/data/real-ecg); skips the test when absent."""
    if not (REAL_ECG_DIR / "MANIFEST.md").is_file():
        pytest.skip(f"real ECG samples not found at {REAL_ECG_DIR} (the shared data folder is absent in this checkout)")
    return REAL_ECG_DIR


#: Sizes of the synthetic twin used across the tests: small, but every injected
#: defect kind occurs in every dataset at the 5% rate.
SYNTH_SIZES = {"mimic": 800, "ptbxl": 160, "cpsc2018": 100, "csn": 100}
SYNTH_FOLDERS = {"mimic": "mimic-iv-ecg", "ptbxl": "ptb-xl", "cpsc2018": "cpsc2018", "csn": "csn"}


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name`` built by ``build(folder)`` once per test run, shared by the xdist workers.

    Without xdist it is a fresh folder of this session. Under xdist the workers share their
    run's base folder: the first to take the lock builds, the others wait and reuse it
    (a ``.done`` marker tells a finished build from one whose builder died).
    """
    if not WORKER:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.parent.mkdir(parents=True, exist_ok=True)
    with open(shared.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".done").is_file():
            if shared.exists():
                import shutil

                shutil.rmtree(shared)
            shared.mkdir()
            build(shared)
            (shared / ".done").touch()
    return shared


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic twin of the four datasets (seed 7, 5% injected defects), written once per run."""
    from deri_sweep.data.synth import write_all

    def build(root: Path) -> None:
        write_all(root, seed=7, sizes=SYNTH_SIZES, defect_rate=0.05)

    return once_per_run(tmp_path_factory, "synth", build)


@pytest.fixture(scope="session")
def synth_manifest(synth_root: Path):
    """The generator's ground truth: dataset, record_id, conditions, defect."""
    import pandas as pd

    return pd.read_csv(synth_root / "synth_manifest.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def short_caches(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared caches of the synthetic MIMIC (pretraining) and PTB-XL (probes), 2 s of signal per record.

    The sweep, fault and job-submission tests share them: 2 s instead of 10 s keeps
    CPU steps short; everything else is the real pipeline.
    """
    from deri_sweep.data.prepare import PrepareOptions, prepare
    from deri_sweep.data.signal import SignalOptions

    short = SignalOptions(length=1000, window=1000)
    names = ("mimic", "ptbxl")

    def build(root: Path) -> None:
        for name in names:
            options = PrepareOptions(name, short, shard_size=128, progress=False)
            prepare(synth_root / SYNTH_FOLDERS[name], root / name, options)

    root = once_per_run(tmp_path_factory, "short-caches", build)
    return {name: root / name for name in names}

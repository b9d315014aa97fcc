"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic twin of the four datasets (seed 7, 5% injected defects), written once per session."""
    from deri_sweep.data.synth import write_all

    root = tmp_path_factory.mktemp("synth")
    write_all(root, seed=7, sizes=SYNTH_SIZES, defect_rate=0.05)
    return root


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
    root = tmp_path_factory.mktemp("short-caches")
    caches = {}
    for name in ("mimic", "ptbxl"):
        options = PrepareOptions(name, short, shard_size=128, progress=False)
        prepare(synth_root / SYNTH_FOLDERS[name], root / name, options)
        caches[name] = root / name
    return caches

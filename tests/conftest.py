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

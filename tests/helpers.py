"""Small helpers shared by the tests that drive whole sweeps (not fixtures: plain functions)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def ablate_command(args: list[str]) -> list[str]:
    """The ``python -m deri_sweep.ablate`` command line with ``args``."""
    return [sys.executable, "-m", "deri_sweep.ablate", *args]


def run_ablate(
    args: list[str], cwd: Path, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the ablate CLI to completion in ``cwd`` (``env``: extra environment); returns the finished process."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run(ablate_command(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environ)


def start_ablate(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start the ablate CLI in the background, its output going to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(ablate_command(args), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(probe: Callable[[], T], what: str, timeout: float = 600, every: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

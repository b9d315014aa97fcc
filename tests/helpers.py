"""Small helpers shared by the tests that drive whole sweeps (not fixtures: plain functions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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


def wait_for(
    probe: Callable[[], T],
    what: str,
    timeout: float = 600,
    every: float = 0.25,
    driver: subprocess.Popen | None = None,
    log: Path | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test after ``timeout`` seconds.

    With ``driver`` (a :func:`start_ablate` process), fail at once if it exits first, with the tail
    of its ``log``: a CLI that stopped on an error (a full disk, a bad flag) is not waited on.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the driver exited ({driver.returncode}) before {what}:\n{tail}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def ray_process_env() -> Iterator[Path]:
    """``os.environ`` for the Ray processes a test starts in-process (``ray.cluster_utils.Cluster``).

    What a local ``init_ray`` gives its own processes: a private ``TMPDIR`` (Ray's dashboard
    forks through a forkserver that leaves a ``pymp-*`` folder behind at every shutdown),
    removed afterwards, and the Train settings of a one-machine instance. Ray's session
    folders stay where they are (``RAY_TMPDIR``).
    """
    from deri_sweep.orchestration.runtime import LOCAL_TRAIN_ENV

    private = Path(tempfile.mkdtemp(prefix="deri-test-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    setting = {"RAY_TMPDIR": os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "TMPDIR": str(private),
               **LOCAL_TRAIN_ENV}  # fmt: skip
    saved = {key: os.environ.get(key) for key in setting}
    os.environ.update(setting)
    try:
        yield private
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(private, ignore_errors=True)


def ray_start_env(env: dict[str, str], temp_dir: str) -> dict[str, str]:
    """``env`` for a ``ray start`` whose ``--temp-dir`` is ``temp_dir``: its processes' ``TMPDIR`` there too.

    The ``pymp-*`` folders of Ray's dashboard (see :func:`ray_process_env`) then go with the
    session folder the test removes; the Train settings are those of a one-machine instance.
    """
    from deri_sweep.orchestration.runtime import LOCAL_TRAIN_ENV

    return {**env, **LOCAL_TRAIN_ENV, "TMPDIR": temp_dir}


def rewrite_checksums(hea: Path, digital: Any) -> None:
    """Write the checksums of ``digital`` (N, L) into a format-16 header, as a tool editing the samples would."""
    lines = hea.read_text().splitlines()
    for i, total in enumerate(digital.astype("int64").sum(axis=0)):
        tokens = lines[1 + i].split(" ")
        tokens[6] = str(int(total) % 65536)
        lines[1 + i] = " ".join(tokens)
    hea.write_text("\n".join(lines) + "\n")

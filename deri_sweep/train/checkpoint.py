"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a directory holding ``state.pt`` (model, optimizer, scheduler,
grad scaler, epoch, step, RNG states) and ``meta.json`` (the resolved config,
seed, git commit, metrics). Both are written atomically, and ``meta.json`` is
written last, so a directory without it is an unfinished checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deri_sweep.common.provenance import git_commit
from deri_sweep.common.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, unfinished or unreadable."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states of this process."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(directory: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (torch objects) and ``meta`` (JSON) into ``directory``.

    Args:
        directory: created if missing.
        state: ``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts,
            ``epoch``, ``step``, ``rng`` and anything else torch can save.
        meta: JSON-serialisable description (config, seed, metrics); the git
            commit is added.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = _to_bytes(state)
    atomic_write_bytes(directory / STATE_FILE, buffer)
    atomic_write_text(directory / META_FILE, json.dumps({**meta, "git_commit": git_commit()}, indent=2, default=str))
    return directory


def _to_bytes(state: dict[str, Any]) -> bytes:
    import io

    handle = io.BytesIO()
    torch.save(state, handle)
    return handle.getvalue()


def read_meta(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json`` alone (config, seed, metrics), without reading its weights.

    Raises:
        CheckpointError: no ``meta.json`` (an unfinished checkpoint) or one that is not JSON.
    """
    path = Path(directory) / META_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: not a finished deri-sweep checkpoint (no {META_FILE})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc}); start the run afresh") from exc


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(state, meta)``.

    Raises:
        CheckpointError: missing directory, unfinished checkpoint (no meta.json)
            or a corrupt state file; the message names the path.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        state = torch.load(directory / STATE_FILE, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        cause = str(exc).split(". ")[0][:80]  # short: Ray keeps only the tail of a worker's error
        raise CheckpointError(
            f"{directory / STATE_FILE}: checkpoint is corrupt or unreadable ({type(exc).__name__}: {cause}); "
            "delete this checkpoint folder to fall back to an earlier one, or start the run afresh"
        ) from exc
    return state, meta

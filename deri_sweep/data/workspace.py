"""The embedded default workspace: a synthetic twin of the four datasets and their caches.

``python -m deri_sweep.ablate`` with no arguments uses this so that a laptop with
no data and no cluster runs the whole pipeline. Everything is built once and
reused: a second call finds the files and returns at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.synth import DEFAULT_SIZES, write_all

log = logging.getLogger(__name__)

#: cache name -> (reader format, folder written by the synthetic twin)
DATASETS: dict[str, tuple[str, str]] = {
    "mimic": ("mimic", "mimic-iv-ecg"),
    "ptbxl": ("ptbxl", "ptb-xl"),
    "cpsc2018": ("cpsc2018", "cpsc2018"),
    "csn": ("csn", "csn"),
}


def ensure_synthetic(root: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the synthetic twin under ``root`` unless it is already there.

    Returns:
        ``root``.
    """
    root = Path(root)
    if (root / "synth_manifest.csv").exists():
        log.info("synthetic datasets found in %s", root)
        return root
    log.info("writing synthetic datasets (seed %d) to %s", seed, root)
    write_all(root, seed=seed, sizes={**DEFAULT_SIZES, **(sizes or {})}, progress=True)
    return root


def ensure_caches(
    synth_root: str | Path,
    cache_root: str | Path,
    *,
    signal: SignalOptions | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Prepare (or reuse) one cache per dataset of the synthetic twin.

    Args:
        synth_root: the synthetic twin (see :func:`ensure_synthetic`).
        cache_root: one cache folder per dataset goes under it.
        signal: sampling rate and length of the caches (default 500 Hz, 5000 samples).
        workers: reader processes.
        progress: show progress bars.

    Returns:
        Cache name (``mimic``, ``ptbxl``, ``cpsc2018``, ``csn``) -> cache directory.
    """
    synth_root, cache_root = Path(synth_root), Path(cache_root)
    workers = workers or min(4, os.cpu_count() or 1)
    out = {}
    for name, (fmt, folder) in DATASETS.items():
        target = cache_root / name
        options = PrepareOptions(fmt, signal=signal or SignalOptions(), workers=workers, progress=progress)
        prepare(synth_root / folder, target, options)
        out[name] = target
    return out

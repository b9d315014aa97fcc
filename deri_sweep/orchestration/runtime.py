"""Starting or joining Ray with the project's defaults (usage stats off, token auth coped with)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deri_sweep.common.storage import owned_temp_dir, remove_orphaned_temp_dirs

log = logging.getLogger(__name__)

#: prefix of the private temp folder of a local Ray instance started here
RAY_TMP_PREFIX = "deri-ray-"

#: Ray Train settings of a local instance (one machine, no spot nodes), unless already set: no
#: preemption-watcher actor per trial (it watches for cloud spot-node notices; on 2 cores every
#: actor is a process start competing with training). Clusters keep Ray's defaults.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

#: Ray's worker pool on a local instance, unless already set. By default Ray keeps at most
#: ``num_cpus`` idle workers and kills the others after 1 s idle; on 2 cores, with each trial's
#: actors holding workers, every probe task then started a fresh process (importing Ray and
#: torch, ~8 core-s). Keeping up to 16 idle workers for 2 minutes lets probe tasks reuse them:
#: the default run fell from 799 to 567-659 core-seconds (benchmarks/bench_default.py --only new).
#: Nor does it start workers ahead of demand (at the first driver, and for queued tasks): on a
#: laptop those were processes that imported Ray and then never ran anything.
LOCAL_WORKER_POOL_ENV = {
    "RAY_num_workers_soft_limit": "16",
    "RAY_idle_worker_killing_time_threshold_ms": "120000",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}


def ray_env_defaults() -> None:
    """Environment every deri-sweep process sets before importing Ray.

    Usage-stats reporting is switched off, and Train V2 is kept on. Token
    authentication is left to Ray: a local ``ray.init()`` generates its own
    token; joining a cluster uses ``RAY_AUTH_TOKEN``/``~/.ray/auth_token``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None = None, *, num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Connect to a running cluster (``address``, or ``RAY_ADDRESS``) or start a local one.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, a GCS address, or ``None``
            for ``RAY_ADDRESS`` / a new local instance.
        num_cpus: CPUs of a NEW local instance (ignored when joining).
        **kwargs: passed to ``ray.init``.

    Returns:
        Ray's context object.
    """
    ray_env_defaults()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        return ray.init(address=address, **kwargs)
    return _start_local(ray, num_cpus=num_cpus, **kwargs)


def _start_local(ray: Any, **kwargs: Any) -> Any:
    """Start a local Ray whose processes keep their temporary files in a folder of this run, removed at exit.

    Ray's processes inherit the environment of the process that starts them. Its dashboard
    forks its modules through a multiprocessing forkserver that leaves a ``pymp-*`` folder
    behind when Ray kills it at shutdown, one per Ray start; trial workers and tracker
    actors write temporary files too. They all get ``TMPDIR`` = ``deri-ray-<pid>-*`` (Ray's
    own session folders stay where Ray puts them, ``RAY_TMPDIR``), which is removed after
    Ray shuts down at exit, or by the next start if this process was killed.
    """
    root = tempfile.gettempdir()
    removed = remove_orphaned_temp_dirs(RAY_TMP_PREFIX, root)
    if removed:
        log.info("removed %d temp folder(s) of earlier, killed local Ray instances", removed)
    os.environ.setdefault("RAY_TMPDIR", os.environ.get("TMPDIR") or root)  # where Ray would put its sessions
    for key, value in {**LOCAL_TRAIN_ENV, **LOCAL_WORKER_POOL_ENV}.items():  # Ray's processes inherit them;
        os.environ.setdefault(key, value)  # trial drivers pass them on
    private = owned_temp_dir(RAY_TMP_PREFIX, root)
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(private)
    try:
        context = ray.init(**kwargs)
    finally:  # this process keeps its own temp dir; only Ray's processes use the private one
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
    atexit.register(_shutdown_and_remove, private)
    return context


def _shutdown_and_remove(private: Path) -> None:
    """At exit: shut the local Ray down (its processes end), then remove their temp folder."""
    import ray

    ray.shutdown()
    shutil.rmtree(private, ignore_errors=True)


#: set to ``1`` on every node of a simulated GPU cluster (tests, CI): Ray schedules the GPUs the nodes
#: declare, but Train workers use gloo and CPU tensors, and tasks that hold a GPU compute on the CPU
SIMULATED_GPUS_ENV = "DERI_SIMULATED_GPUS"


def simulated_gpus() -> bool:
    """True on a simulated GPU cluster (``DERI_SIMULATED_GPUS=1``): GPUs are Ray resources only."""
    return os.environ.get(SIMULATED_GPUS_ENV, "").strip().lower() in ("1", "true", "yes")


def task_device() -> str:
    """Where a Ray task or actor computes: ``cuda`` when Ray gave it a GPU (and one is really there), else ``cpu``."""
    import ray

    if simulated_gpus() or not ray.get_gpu_ids():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def placement(kind: str, **extra: Any) -> dict[str, Any]:
    """Where the calling Ray task / actor runs: ``{"kind", "node_id", "gpu_ids", "device", "time", ...}``."""
    import time

    import ray

    context = ray.get_runtime_context()
    return {
        "kind": kind,
        "node_id": context.get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "device": task_device(),
        "time": time.time(),
        **extra,
    }


#: folder of a run directory holding one JSON file per placed task (``results.placement_table`` reads them)
PLACEMENT_DIR = "placement"


def record_placement(run_dir: str | Path | None, kind: str, **extra: Any) -> dict[str, Any]:
    """Write where the calling task runs to ``RUN_DIR/placement/<kind>-<uuid>.json`` (nothing without ``run_dir``).

    Returns:
        The record (see :func:`placement`).
    """
    import json
    import uuid

    from deri_sweep.common.storage import atomic_write_text

    record = placement(kind, **extra)
    if run_dir:
        folder = Path(run_dir) / PLACEMENT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{kind}-{uuid.uuid4().hex[:12]}.json", json.dumps(record, default=str))
    return record

"""Stage the pretraining cache onto every node's local disk before trials start (one Ray task per node).

:func:`stage_on_every_node` sends :func:`deri_sweep.data.staging.stage_cache` to each live node
that can run Train workers, pinned there with a hard node-affinity strategy. A node without
``DERI_LOCAL_DISK`` (a laptop, or a cluster config that does not set it) answers ``None`` and
its trials read the shared copy. Train workers call :func:`local_cache` at their start: it
verifies the node's copy (stat only, when nothing changed) and stages it themselves on a node
that joined after the sweep began.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deri_sweep.data.staging import StageError, local_disk, stage_cache

log = logging.getLogger(__name__)


def _stage_here(source: str) -> dict[str, Any] | None:
    """Ray task: stage ``source`` on this node (``None`` where the node has no local disk set)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if local_disk() is None:
        return None
    result = stage_cache(source)
    return {"path": str(result.path), "copied": result.copied, "bytes": result.bytes_copied, "seconds": result.seconds}


def stage_on_every_node(source: str) -> dict[str, dict[str, Any] | None]:
    """Stage ``source`` once on each live node with CPUs or GPUs for workers.

    Returns:
        node id -> what its task did (``None``: the node reads the shared copy).
    """
    nodes = [
        n["NodeID"] for n in ray.nodes()
        if n["Alive"] and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)
    ]  # fmt: skip
    task = ray.remote(_stage_here)
    refs = {
        node: task.options(
            num_cpus=0, max_retries=2, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(source)
        for node in nodes
    }
    done = {node: ray.get(ref) for node, ref in refs.items()}
    staged = [d for d in done.values() if d]
    if staged:
        log.info("staged %s on %d of %d nodes (%.2f GB copied)", source, len(staged), len(nodes),
                 sum(d["bytes"] for d in staged) / 1e9)  # fmt: skip
    return done


def local_cache(source: str) -> str:
    """The cache a Train worker reads: this node's staged copy of ``source``, or ``source`` without a local disk."""
    if local_disk() is None:
        return source
    try:
        path = str(stage_cache(source).path)
    except (OSError, StageError) as exc:
        log.warning("cannot stage %s on this node (%s); reading the shared copy", source, exc)
        return source
    log.info("reading the node-local copy %s of %s", path, source)
    return path

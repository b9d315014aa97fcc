"""Stage the pretraining cache onto nodes' local disks before trials train there (one Ray task per node).

:func:`stage_on_every_node` sends :func:`deri_sweep.data.staging.stage_cache` to each live node
that can run Train workers (only the GPU nodes when trials use GPUs), pinned there with a hard
node-affinity strategy. A node without ``DERI_LOCAL_DISK`` (a laptop, or a cluster config that
does not set it) answers ``None`` and its trials read the shared copy.

On a cluster at rest (GPU nodes scaled to zero), :func:`wait_for_gpu_node` submits a task that
asks for a sliver of GPU: it waits for, and so makes the autoscaler start, a GPU node, instead
of staging nothing. A node that joins later is staged by the first trial that gets it:
:func:`reserve_and_stage` reserves the trial's placement group, stages the nodes it landed on
while no worker holds their GPUs yet, and releases it just before the trial's workers start.
Train workers still call :func:`local_cache` at their start: it verifies the node's copy (stat
only, when nothing changed) and stages it themselves as a last resort.

Every staging task records its node in ``RUN_DIR/placement/stage-*.json`` (``trace``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deri_sweep.data.staging import StageError, local_disk, stage_cache
from deri_sweep.orchestration.runtime import PLACEMENT_DIR, record_placement

log = logging.getLogger(__name__)


def _stage_here(source: str, trace: str = "", reason: str = "") -> dict[str, Any] | None:
    """Ray task: stage ``source`` on this node (``None`` where the node has no local disk set)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    if local_disk() is None:
        record_placement(trace, "stage", source=source, staged=False, reason=reason, started=started)
        return None
    result = stage_cache(source)
    done = {"path": str(result.path), "copied": result.copied, "bytes": result.bytes_copied, "seconds": result.seconds}
    record_placement(trace, "stage", source=source, staged=True, reason=reason, started=started, **done)
    return done


def _here() -> str:
    """Ray task: the id of the node it ran on."""
    return ray.get_runtime_context().get_node_id()


def worker_nodes(gpu_only: bool = False) -> list[str]:
    """Ids of the live nodes that can run Train workers (with GPUs when ``gpu_only``)."""
    keep = []
    for node in ray.nodes():
        res = node["Resources"] if node["Alive"] else {}
        if res.get("GPU", 0) > 0 or (not gpu_only and res.get("CPU", 0) > 0):
            keep.append(node["NodeID"])
    return keep


def wait_for_gpu_node() -> str:
    """Wait until the cluster has a GPU node (a task asking for 0.01 GPU makes an autoscaler start one).

    Returns:
        The id of the node the waiting task ran on.
    """
    if worker_nodes(gpu_only=True):
        return worker_nodes(gpu_only=True)[0]
    log.info("no GPU node yet: waiting for one (an autoscaler starts one for the pending GPU request)")
    return ray.get(ray.remote(_here).options(num_cpus=0, num_gpus=0.01, max_retries=2).remote())


def staged_nodes(trace: str | Path, source: str) -> set[str]:
    """Nodes that this run already staged ``source`` on (from the placement records in ``trace``)."""
    nodes = set()
    for path in (Path(trace) / PLACEMENT_DIR).glob("stage-*.json") if trace else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("source") == source:
            nodes.add(record["node_id"])
    return nodes


def stage_on_nodes(source: str, nodes: list[str], *, trace: str = "", reason: str = "") -> dict[str, Any]:
    """Stage ``source`` on each of ``nodes`` (one pinned task each); returns node id -> what its task did."""
    task = ray.remote(_stage_here)
    refs = {
        node: task.options(
            num_cpus=0, max_retries=2, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(source, trace, reason)
        for node in nodes
    }
    done = {node: ray.get(ref) for node, ref in refs.items()}
    staged = [d for d in done.values() if d]
    if staged:
        log.info("staged %s on %d of %d nodes (%.2f GB copied)", source, len(staged), len(nodes),
                 sum(d["bytes"] for d in staged) / 1e9)  # fmt: skip
    return done


def stage_on_every_node(source: str, *, gpu_only: bool = False, trace: str = "") -> dict[str, Any]:
    """Stage ``source`` once on each live node with CPUs or GPUs for workers (GPU nodes only with ``gpu_only``).

    With ``gpu_only`` and no GPU node yet, waits for one first (:func:`wait_for_gpu_node`).

    Returns:
        node id -> what its task did (``None``: the node reads the shared copy).
    """
    if gpu_only:
        wait_for_gpu_node()
    nodes = [n for n in worker_nodes(gpu_only) if n not in staged_nodes(trace, source)]
    return stage_on_nodes(source, nodes, trace=trace, reason="set-up")


def reserve_and_stage(
    source: str, bundles: list[dict[str, float]], strategy: str, *, trace: str = "", timeout_s: float = 3600
) -> list[str]:
    """Before a trial trains: stage the nodes its workers will use that this run has not staged yet.

    Reserves a placement group of the trial's ``bundles`` (on an autoscaling cluster this is
    what brings up a new node), stages the nodes it landed on that were not staged yet while no
    worker holds their GPUs, then removes it; the trial's worker group is placed right after,
    where the reservation was. A reservation of free resources takes milliseconds.

    Returns:
        The nodes staged now (empty when there was nothing to do).
    """
    done = staged_nodes(trace, source)
    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
        nodes = sorted(set(placement_group_table(group)["bundles_to_node_id"].values()) - done)
        if nodes:
            log.info("staging %s on %d node(s) that joined after set-up, before a trial trains there", source,
                     len(nodes))  # fmt: skip
            stage_on_nodes(source, nodes, trace=trace, reason="joined later")
        return nodes
    finally:
        remove_placement_group(group)


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

"""DERI pretraining as a Ray Train TorchTrainer (Train V2).

:func:`train_loop_per_worker` is the shell Ray runs on each worker: it finds
out who it is, where the last checkpoint is, and hands over to the plain
recipe :func:`deri_sweep.train.recipe.run_worker`. :func:`build_trainer` sizes
the worker group: 2 CPU workers here, 4 GPUs a trial on a cluster.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from deri_sweep.common.strict_loader import from_dict, to_dict
from deri_sweep.orchestration.node_staging import local_cache
from deri_sweep.orchestration.runtime import record_placement, simulated_gpus
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

#: Ray's placement-group strategies a trial's worker group may use
PLACEMENT_STRATEGIES = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")


@dataclass(frozen=True)
class TrialResources:
    """The size of one pretraining run.

    Attributes:
        workers: Ray Train workers (one process, one GPU each on a cluster).
        gpus_per_worker: GPUs per worker (0: CPU training).
        cpus_per_worker: CPUs per worker (fractional allowed, e.g. 0.49 on 2 cores).
        placement_strategy: how Ray places the workers' bundles: ``STRICT_PACK`` (all on one
            node: a GPU trial's collectives stay on the node's NVLink/NVSwitch; the trial waits for
            a node with room for all of them), ``PACK`` (as few nodes as possible, split when no
            node has room), ``SPREAD``.
    """

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError(f"invalid trial resources {self}: need workers >= 1, gpus >= 0, cpus > 0")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"placement_strategy {self.placement_strategy!r}: use one of {PLACEMENT_STRATEGIES}")

    @property
    def use_gpu(self) -> bool:
        """True when workers hold GPUs."""
        return self.gpus_per_worker > 0

    def bundle(self) -> dict[str, float]:
        """One worker's resources (one bundle of the worker group's placement group)."""
        per_worker: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            per_worker["GPU"] = self.gpus_per_worker
        return per_worker

    def scaling(self) -> ScalingConfig:
        """Ray's scaling config for these resources."""
        per_worker = self.bundle()
        return ScalingConfig(
            num_workers=self.workers, use_gpu=self.use_gpu, resources_per_worker=per_worker,
            placement_strategy=self.placement_strategy,
        )  # fmt: skip

    def request(self) -> dict[str, float]:
        """What the whole worker group holds while it trains (``{"CPU": .., "GPU": ..}``)."""
        total = {"CPU": self.workers * self.cpus_per_worker}
        if self.use_gpu:
            total["GPU"] = self.workers * self.gpus_per_worker
        return total

    def accounting(self) -> tuple[float, str]:
        """(resource units per worker, kind) used for compute-hour bookkeeping."""
        return (self.gpus_per_worker, "gpu") if self.use_gpu else (self.cpus_per_worker, "cpu")


def scratch_dir() -> Path:
    """This node's temp folder of the Ray session (``<temp dir>/<session>``), for temporary checkpoint copies.

    A worker that is killed leaves its copy there; the next worker on the node, and
    the end of the sweep, remove copies whose process is dead.
    """
    context = ray.get_runtime_context()
    session = Path(context.get_temp_dir()) / context.get_session_name()
    return session if session.is_dir() else Path(context.get_temp_dir())


def staged(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` reading this node's local copy of its pretraining cache (staged on first use; see ``node_staging``)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache=local_cache(cfg.data.cache)))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry: resolve rank/device/checkpoint, then run the recipe.

    Args:
        loop_config: ``{"config": TrainConfig as a dict, "resource_per_worker": float,
            "resource_kind": "gpu" | "cpu", "stage": bool, "trace": run dir or "", "trial": name}``;
            with ``stage`` the worker reads its node's local copy of the cache
            (:mod:`deri_sweep.orchestration.node_staging`); with ``trace`` it records its node
            (``RUN_DIR/placement/train_worker-*.json``). On a simulated GPU cluster
            (:func:`~deri_sweep.orchestration.runtime.simulated_gpus`) it computes on the CPU.
    """
    # imported here, not at the top: the trial drivers and Train controllers import this module too,
    # and need none of the training stack (a process start costs its imports, several seconds on CPU nodes)
    import torch

    from deri_sweep.train.recipe import WorkerInfo, run_worker

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = from_dict(TrainConfig, loop_config["config"])
    if loop_config.get("stage"):
        cfg = staged(cfg)
    context = ray.train.get_context()
    if loop_config.get("trace"):
        record_placement(loop_config["trace"], "train_worker", trial=loop_config.get("trial", ""),
                         rank=context.get_world_rank())  # fmt: skip
    worker = WorkerInfo(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=torch.device("cpu") if simulated_gpus() else ray.train.torch.get_device(),
        resource_per_worker=float(loop_config["resource_per_worker"]),
        resource_kind=str(loop_config["resource_kind"]),
        scratch=scratch_dir(),
    )

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_worker(cfg, worker, report)
        return
    with checkpoint.as_directory() as directory:
        run_worker(cfg, worker, report, resume=Path(directory))


def build_trainer(
    cfg: TrainConfig,
    resources: TrialResources,
    *,
    storage: str,
    name: str,
    max_failures: int = 2,
    keep_checkpoints: int = 2,
    callbacks: list[Any] | None = None,
    stage: bool = False,
    trace: str = "",
) -> TorchTrainer:
    """A TorchTrainer for one pretraining run.

    Args:
        cfg: the resolved config.
        resources: workers and their CPUs/GPUs.
        storage: local path or URI (``s3://``, ``gs://``) where Ray keeps checkpoints.
        name: run name; deterministic names let Ray restore an interrupted run.
        max_failures: worker-group restarts from the last checkpoint before giving up.
        keep_checkpoints: checkpoints kept (the latest ones).
        callbacks: Ray Train callbacks (e.g. Tune's report callback inside a sweep).
        stage: workers read their node's local copy of the cache where the node has
            ``DERI_LOCAL_DISK`` (copied there on first use, verified on every start).
        trace: the run directory, where each worker records its node (empty: nothing recorded).

    Returns:
        The trainer; call ``.fit()``.
    """
    units, kind = resources.accounting()
    run_config = RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        callbacks=callbacks or [],
    )
    loop_config = {"config": to_dict(cfg), "resource_per_worker": units, "resource_kind": kind, "stage": stage,
                   "trace": trace, "trial": name}  # fmt: skip
    # a simulated GPU cluster: Ray places GPU bundles, the process group is gloo over CPU tensors
    torch_config = TorchConfig(backend="gloo") if resources.use_gpu and simulated_gpus() else None
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=torch_config,
        scaling_config=resources.scaling(),
        run_config=run_config,
    )

"""One trial of the sweep: the Tune function trainable that pretrains, probes and reports.

:func:`trial_driver` runs in its own Ray actor holding a sliver of CPU. It builds and
fits a TorchTrainer (named after the trial, so a restored sweep resumes it), streams
the epochs to Tune through Ray Train's Tune callback (ASHA decides on them), then --
the TorchTrainer's workers and GPUs already released -- runs the probe suite as
dependent Ray tasks on the checkpoint and reports the final objective. A one-worker CPU
trial with ``trial.in_driver`` trains in the driver itself (:func:`_fit_in_driver`): the
same recipe and steps, without the worker group's processes.

This module is what every trial actor (and, through :class:`EpochReportCallback`, every
Train controller) imports, so it imports only what a trial needs: no searchers, no
Optuna, no analysis.

GPUs between trials: a trial holds one of the sweep's *training slots*
(:class:`TrainingSlots`, ``--concurrency`` of them) only while its TorchTrainer fits;
its probes run after it gave the slot back, so the next trial trains while it probes.
Where its workers ran and when it trained and probed go into its ``trial.json``
(``placement``, ``timeline``, ``gpu_hours``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group

from deri_sweep.common.provenance import git_commit
from deri_sweep.common.storage import atomic_write_bytes, atomic_write_text
from deri_sweep.common.strict_loader import from_dict
from deri_sweep.orchestration.node_staging import reserve_and_stage
from deri_sweep.orchestration.probe_jobs import ProbeResources, Trace, collect, probe_suite
from deri_sweep.orchestration.results import FINAL_REPORT_KEY, config_hash, trial_placement
from deri_sweep.orchestration.runtime import record_placement
from deri_sweep.orchestration.spaces import SearchSpace
from deri_sweep.orchestration.trainer import TrialResources, build_trainer, scratch_dir, staged
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class SweepContext:
    """What every trial driver needs to know (sent to trials by value).

    Attributes:
        run_id: the sweep's id.
        run_dir: the run directory (shared storage on a cluster).
        space: the validated space, as a dict.
        caches: dataset name -> prepared cache directory.
        storage: where Ray keeps trial checkpoints (a folder or URI).
        probe_resources: resource request of one probe task.
        stage: Train workers read their node's local copy of the pretraining cache
            where the node sets ``DERI_LOCAL_DISK``.
        placement_strategy: the placement strategy of a trial's worker group (``STRICT_PACK``
            when a trial fits one node).
        slots: name of the sweep's :class:`TrainingSlots` actor ("": no limit but Ray's resources).
        gpu_slot: ``fit`` when a trial's GPUs are held only while it fits (the slots gate
            training), ``trial`` when the Tune slot itself stands for the GPUs (trials in flight
            capped at the GPU count: the trial holds its GPUs' share while it probes too).
    """

    run_id: str
    run_dir: str
    space: dict[str, Any]
    caches: dict[str, str]
    storage: str
    probe_resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 0.25, "num_gpus": 0.0})
    stage: bool = True
    placement_strategy: str = "PACK"
    slots: str = ""
    gpu_slot: str = "fit"


@ray.remote(num_cpus=0)
class TrainingSlots:
    """A counting semaphore over the sweep's trials: at most ``limit`` trials fit a TorchTrainer at once.

    Trials in flight are not capped at the GPU count (a probing trial holds no GPUs); this keeps
    ``--concurrency`` meaning "trials training at once". Keyed by trial id: a restarted trial
    that takes its slot again does not take a second one.
    """

    def __init__(self, limit: int) -> None:
        import asyncio

        self.limit, self.holders, self.changed = max(1, int(limit)), set(), asyncio.Condition()

    async def acquire(self, trial_id: str) -> None:
        """Wait for a free slot."""
        async with self.changed:
            await self.changed.wait_for(lambda: trial_id in self.holders or len(self.holders) < self.limit)
            self.holders.add(trial_id)

    async def release(self, trial_id: str) -> None:
        """Give the slot back."""
        async with self.changed:
            self.holders.discard(trial_id)
            self.changed.notify_all()


def cpu_hold_name(run_id: str, trial_id: str) -> str:
    """Name of the placement group that holds an in-driver trial's training CPUs (``trial.in_driver``)."""
    return f"deri-train-cpus-{run_id}-{trial_id}"


class SlotReleaser(tune.Callback):
    """Gives a trial's training slot, or its in-driver CPU hold, back when Tune ends the trial, whatever ended it.

    A trial the scheduler stops (ASHA), or whose actor dies, never runs the ``finally`` of
    :func:`trial_driver`; without this its slot (or the CPUs its in-driver training held) would stay
    taken and the sweep would wait forever.

    Args:
        slots: the :class:`TrainingSlots` actor handle, or ``None`` when the sweep has none.
        run_id: the sweep's id, to find in-driver trials' CPU holds (empty: the sweep makes none).
    """

    def __init__(self, slots: Any, run_id: str = "") -> None:
        self.slots, self.run_id = slots, run_id

    def _release(self, trial: Any) -> None:
        if self.slots is not None:
            try:
                self.slots.release.remote(trial.trial_id)
            except Exception as err:  # the sweep is ending: nothing waits for a slot any more
                log.warning("could not give trial %s's training slot back: %s", trial.trial_id, err)
        if self.run_id:
            with contextlib.suppress(ValueError):  # none left: the trial gave its CPUs back itself
                remove_placement_group(get_placement_group(cpu_hold_name(self.run_id, trial.trial_id)))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A finished or stopped trial."""
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A failed trial (a retried one takes its slot again under the same id)."""
        self._release(trial)


def _objective(space: SearchSpace, metrics: dict[str, Any], probes: pd.DataFrame | None) -> float:
    """The trial's objective: the pretraining metric, or mean val macro AUROC of its probes."""
    if space.objective == "pretrain" or probes is None or probes.empty:
        return float(metrics.get(space.metric, math.nan))
    val = probes[(probes["encoder"] == "pretrained") & (probes["metric"] == "best_val_auroc")]["value"]
    return float(val.mean()) if len(val) else math.nan


class EpochReportCallback(TuneReportCallback):
    """Ray Train's Tune callback, with ``objective`` present (NaN) in every epoch's report.

    Tune requires the searcher's metric in every result; a trial's real objective
    only exists in its final report (marked ``FINAL_REPORT_KEY``), once its probes ran.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Forward rank 0's metrics to Tune with a pending objective."""
        super().after_report(run_context, [{"objective": math.nan, **metrics[0]}, *metrics[1:]], checkpoint)


def trial_driver(config: dict[str, Any], context: SweepContext) -> None:
    """One trial: pretrain (TorchTrainer), then probe the checkpoint, then report the objective."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    space = from_dict(SearchSpace, context.space)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(context.run_dir)
    out = run_dir / "trials" / trial_id
    out.mkdir(parents=True, exist_ok=True)
    overrides, seed = dict(config["overrides"]), int(config["seed"])
    cfg = space.rung_signals(space.train_config(overrides, seed), context.caches)  # rung signals where asked
    resources = TrialResources(
        space.trial.workers, space.trial.gpus_per_worker, space.trial.cpus_per_worker, context.placement_strategy
    )
    started = time.time()
    name = f"trial_{trial_id}"
    if space.trial.trains_in_driver:
        checkpoint, metrics, timeline = _fit_in_driver(cfg, space, context, out, name, trial_id)
    else:
        checkpoint, metrics, timeline = _fit_worker_group(cfg, space, context, out, name, trial_id, resources)
    timeline = {"driver_start": started, **timeline}
    units, _ = resources.accounting()
    summary = {
        "trial_id": trial_id,
        "variant": config["variant"],
        "seed": seed,
        "overrides": overrides,
        "config_hash": config_hash(overrides),
        "checkpoint": checkpoint,
        "hours": float(metrics.get("hours", 0.0)),
        "epochs": float(metrics.get("epoch", 0.0)),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "git_commit": git_commit(),
        "optuna_number": config.get("optuna_number"),
        # wall seconds: the whole fit (worker-group start included) and the epochs inside it
        "pretrain_seconds": time.time() - started,
        "train_seconds": float(metrics.get("hours", 0.0)) * 3600 / (resources.workers * (units or 1.0)),
        "gpus": resources.request().get("GPU", 0.0),
        "gpu_slot": context.gpu_slot,
        "placement_strategy": "in_driver" if space.trial.trains_in_driver else resources.placement_strategy,
        # epoch seconds: the slot was granted, staging/reservation done, the TorchTrainer returned
        "timeline": timeline,
        "placement": trial_placement(run_dir, name),
    }
    atomic_write_text(out / "trial.json", json.dumps(summary, indent=2))
    probes = None
    if space.probes.datasets:
        probes_file = out / "probes.parquet"
        if probes_file.exists():
            probes = pd.read_parquet(probes_file)
        else:
            probing = time.time()
            # the random-init floor pairs with the baseline's seeds: one floor per seed, not per variant
            floor = space.probes.random_floor and (not space.baseline or config["variant"] == space.baseline)
            pending = probe_suite(
                checkpoint, space.probes, context.caches, run_dir / "features",
                resources=ProbeResources(**context.probe_resources), samples_dir=out,
                random_floor=floor, floor_seed=seed, trace=Trace(str(run_dir), trial_id),
            )  # fmt: skip
            probes = collect(pending)
            atomic_write_bytes(probes_file, probes.to_parquet(index=False))
            summary["probe_seconds"] = time.time() - probing
            summary["timeline"].update(probe_start=probing, probe_end=time.time())
            summary["placement"] = trial_placement(run_dir, name, trial_id)
            atomic_write_text(out / "trial.json", json.dumps(summary, indent=2))
    objective = _objective(space, metrics, probes)
    final = {k: metrics[k] for k in (space.metric, "epoch", "hours") if k in metrics}
    tune.report({**final, "objective": objective, FINAL_REPORT_KEY: 1.0})


def _fit_worker_group(
    cfg: TrainConfig,
    space: SearchSpace,
    context: SweepContext,
    out: Path,
    name: str,
    trial_id: str,
    resources: TrialResources,
) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Pretrain with a TorchTrainer; returns (local checkpoint copy, last metrics, timeline)."""
    trainer = build_trainer(
        cfg, resources, storage=context.storage, name=name,
        max_failures=space.trial.max_failures, callbacks=[EpochReportCallback()], stage=context.stage,
        trace=context.run_dir,
    )  # fmt: skip
    slots = ray.get_actor(context.slots) if context.slots else None
    if slots is not None:
        ray.get(slots.acquire.remote(trial_id))
    try:
        slot_at = time.time()
        if context.stage and resources.use_gpu:  # a node that joined after set-up: staged before this trial holds it
            bundles = [resources.bundle()] * resources.workers
            reserve_and_stage(cfg.data.cache, bundles, resources.placement_strategy, trace=context.run_dir)
        fit_at = time.time()
        result = trainer.fit()
        fit_end = time.time()
    finally:
        if slots is not None:
            ray.get(slots.release.remote(trial_id))
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"trial {trial_id}: pretraining failed: {result.error}")
    # a local copy beside the trial's files: probe tasks read it even when Ray's storage is s3:// or gs://
    checkpoint = result.checkpoint.to_directory(str(out / "checkpoint"))
    return checkpoint, dict(result.metrics), {"slot": slot_at, "fit_start": fit_at, "fit_end": fit_end}


def _fit_in_driver(
    cfg: TrainConfig, space: SearchSpace, context: SweepContext, out: Path, name: str, trial_id: str
) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Pretrain a one-worker CPU trial in this process (``trial.in_driver``); same returns as the worker group's.

    While it trains, the trial holds its worker's CPUs on this node in a placement group of one
    bundle (as a worker group would), and gives them back before its probes run, so that probe
    tasks and the next trial find them. Each report goes to Tune as Ray Train's callback would
    send it; the latest checkpoint is kept in ``out/checkpoint``, which a resumed sweep continues from.
    """
    # here, not at the top: Train controllers import this module too, and need none of the training stack
    from deri_sweep.train.in_process import fit_in_process

    if context.stage:
        cfg = staged(cfg)
    record_placement(context.run_dir, "train_worker", trial=name, rank=0)
    cpus = space.trial.cpus_per_worker
    here = f"node:{ray.util.get_node_ip_address()}"  # the CPUs of this node, where the driver trains
    hold = placement_group(
        [{"CPU": cpus, here: 0.001}], strategy="STRICT_PACK", name=cpu_hold_name(context.run_id, trial_id)
    )
    try:
        ray.get(hold.ready())
        fit_at = time.time()
        metrics = fit_in_process(
            cfg, out / "checkpoint", lambda m: tune.report({"objective": math.nan, **m}),
            max_failures=space.trial.max_failures, cpus=cpus, scratch=scratch_dir(),
        )  # fmt: skip
        fit_end = time.time()
    finally:
        remove_placement_group(hold)
    return str(out / "checkpoint"), metrics, {"slot": fit_at, "fit_start": fit_at, "fit_end": fit_end}

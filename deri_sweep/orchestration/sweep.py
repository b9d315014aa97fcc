"""The ablation sweep: Ray Tune (+ Optuna) over DERI pretraining trials, each probed downstream.

:func:`run_sweep` builds the Tuner: the space's searcher (a grid plan, Optuna, or the
``decide`` searcher), ASHA when the space asks for it, the trackers, and one Tune
function trainable per trial (:func:`deri_sweep.orchestration.trial.trial_driver`).
Before the first trial it builds the frozen text features once and stages the
pretraining cache on every node. Everything a trial produced is written under
``RUN_DIR/trials/<trial_id>/`` atomically, so a resumed sweep does not redo finished
trials or probes.

Where GPU work runs (see ``docs``-level notes in the README, "GPUs"): when trials use GPUs the
text-feature build is a task that asks for a GPU and staging is one task per GPU node, so on a
cluster at rest both wait for (and so trigger) GPU nodes instead of running on the head; each
trial's workers are placed ``STRICT_PACK`` (one node) when a trial fits the largest GPU node,
else ``PACK`` (fewest nodes; collectives then cross the network, with a warning); trials in
flight are not capped at the GPU count: a trial holds a training slot (``--concurrency`` of
them) only while it fits, and probes on a GPU fraction while the next trial trains.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray import tune

from deri_sweep.common.strict_loader import from_dict, to_dict
from deri_sweep.orchestration.decide_searcher import DecideSearcher
from deri_sweep.orchestration.node_staging import stage_on_every_node
from deri_sweep.orchestration.probe_jobs import ProbeResources
from deri_sweep.orchestration.runtime import record_placement, task_device
from deri_sweep.orchestration.searchers import (
    BudgetSearcher,
    PlanSearcher,
    PruningOptunaSearch,
    StopRecord,
    StopRecordingASHA,
)
from deri_sweep.orchestration.spaces import SearchSpace, define_by_run
from deri_sweep.orchestration.trackers import tracker_callbacks, trial_name
from deri_sweep.orchestration.trainer import scratch_dir
from deri_sweep.orchestration.trial import SlotReleaser, SweepContext, TrainingSlots, trial_driver
from deri_sweep.train.recipe import remove_stale_checkpoint_dirs
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

STOPPED_FILE = "stopped_trials.txt"
HEAD_NODE_RESOURCE = "node:__internal_head__"


def _build_text_features(cache_dir: str, text: dict[str, Any], trace: str = "") -> str:
    """Ray task: the frozen tower's features of every unique report of a cache (a no-op when present).

    On a GPU the tower runs under bfloat16 autocast (the stored features are float32).
    """
    import contextlib

    import torch

    from deri_sweep.model.config import TextConfig
    from deri_sweep.model.text_cache import build_text_features
    from deri_sweep.model.text_tower import TextTower

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    cfg = from_dict(TextConfig, text)
    device = task_device()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    with autocast:
        out = str(build_text_features(cache_dir, TextTower(cfg), device=device, progress=False))
    record_placement(trace, "build", task=Path(cache_dir).name, started=started, autocast=device == "cuda")
    return out


def _planned_configs(space: SearchSpace) -> list[TrainConfig]:
    """The resolved config of every planned trial (a grid's; an Optuna search's base config)."""
    if space.search == "grid":
        plans = space.trials()
    elif space.search == "decide":  # every configuration; the seed does not change what is built
        plans = [{"overrides": overrides, "seed": space.seeds[0]} for _, overrides in space.grid_points()]
    else:
        plans = [{"overrides": {}, "seed": space.seeds[0]}]
    return [space.train_config(t["overrides"], t["seed"]) for t in plans]


def prebuild_text_features(space: SearchSpace, trace: str = "") -> float:
    """Build the text features every trial needs once, before any trial starts.

    One Ray task per distinct (pretraining cache, frozen text tower) of the plan; trials
    then find the features and skip the tower. When trials use GPUs the task asks for one
    GPU (and 1 CPU): on a cluster at rest it waits for, and so triggers, a GPU node rather
    than running on the CPU head. ``trace``: the run directory, where the task records its node.

    Returns:
        Wall seconds spent (0 when every feature cache already existed).
    """
    from deri_sweep.model.text_cache import caching_applies, feature_dir

    needed: dict[tuple[str, str], Any] = {}
    for cfg in _planned_configs(space):
        text = cfg.model.text
        if caching_applies(text) and not (feature_dir(cfg.data.cache, text) / "meta.json").exists():
            needed[(cfg.data.cache, str(feature_dir(cfg.data.cache, text)))] = text
    if not needed:
        return 0.0
    started = time.time()
    gpu = 1.0 if space.trial.gpus_per_worker > 0 else 0.0
    if gpu and not ray.cluster_resources().get("GPU", 0.0):
        log.info("text features: waiting for a GPU node (an autoscaler starts one for the pending GPU task)")
    task = ray.remote(_build_text_features).options(num_cpus=1, num_gpus=gpu, max_retries=2)
    refs = [task.remote(cache, to_dict(text), trace) for (cache, _), text in needed.items()]
    for (_, folder), ref in zip(needed, refs, strict=True):
        log.info("text features ready once for every trial: %s", ray.get(ref) or folder)
    return time.time() - started


def stage_pretraining_caches(space: SearchSpace, trace: str = "") -> float:
    """Copy each pretraining cache of the plan to the nodes' local disks, once (after its text features exist).

    When trials use GPUs only GPU nodes are staged (waiting for one on a cluster at rest); a node
    that joins later is staged by the first trial placed on it, before it trains
    (:func:`~deri_sweep.orchestration.node_staging.reserve_and_stage`).

    Returns:
        Wall seconds spent (near 0 when every node's copy was already in place, or no node has a local disk).
    """
    started = time.time()
    for cache in sorted({cfg.data.cache for cfg in _planned_configs(space)}):
        stage_on_every_node(cache, gpu_only=space.trial.gpus_per_worker > 0, trace=trace)
    return time.time() - started


def cluster_gpu_capacity(
    cluster_config: str | Path | None = None, max_gpu_nodes: int | None = None
) -> dict[str, float]:
    """The GPUs a cluster can reach, also at rest: ``{"total", "per_node"}`` (the largest GPU node).

    Read from a Ray cluster launcher YAML (``clusters/*.yaml``: each node type's ``resources.GPU`` x
    ``max_workers``) and/or ``max_gpu_nodes`` (nodes of the largest GPU type, or of the largest live
    GPU node); the live cluster counts too. Zeros when nothing says.
    """
    per_node = max([n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]] or [0.0])
    total = ray.cluster_resources().get("GPU", 0.0)
    if cluster_config:
        import yaml

        config = yaml.safe_load(Path(cluster_config).read_text()) or {}
        reach = 0.0
        for node_type in (config.get("available_node_types") or {}).values():
            gpus = float((node_type.get("resources") or {}).get("GPU", 0) or 0)
            per_node = max(per_node, gpus)
            reach += gpus * int(node_type.get("max_workers", 0) or 0)
        total = max(total, min(reach, per_node * int(config.get("max_workers", reach) or 0)) if per_node else reach)
    if max_gpu_nodes:
        total = max(total, per_node * max_gpu_nodes)
    return {"total": float(total), "per_node": float(per_node)}


def max_concurrent(space: SearchSpace, capacity: dict[str, float] | None = None) -> int:
    """How many trials can train at once, from the GPUs (or CPUs) and the trial size.

    GPUs: the live cluster's, or its reach at rest (``capacity``, see :func:`cluster_gpu_capacity`).
    """
    total = ray.cluster_resources()
    trial = space.trial
    if trial.gpus_per_worker > 0:
        gpus = max(total.get("GPU", 0.0), (capacity or {}).get("total", 0.0))
        fit = gpus / (trial.workers * trial.gpus_per_worker)
    else:
        fit = total.get("CPU", 0.0) / (trial.workers * trial.cpus_per_worker + trial.driver_cpus)
    return max(1, math.floor(fit + 1e-9))


def placement_strategy(space: SearchSpace, capacity: dict[str, float] | None = None) -> str:
    """``STRICT_PACK`` when a trial's workers fit the largest (GPU) node, else ``PACK`` (with a warning).

    A trial larger than any node cannot be placed ``STRICT_PACK`` at all (it would wait forever);
    with ``PACK`` Ray splits it over the fewest nodes and its collectives cross the network.
    When no node size is known (a cluster at rest, no cluster config) the trial is assumed to fit.
    """
    trial = space.trial
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if trial.gpus_per_worker > 0:
        need, what = trial.workers * trial.gpus_per_worker, "GPU"
        largest = max([r.get("GPU", 0.0) for r in nodes] + [(capacity or {}).get("per_node", 0.0)])
    else:
        need, what = trial.workers * trial.cpus_per_worker, "CPU"
        largest = max([r.get("CPU", 0.0) for r in nodes] or [0.0])
    if largest and need > largest + 1e-9:
        log.warning("a trial needs %g %s but the largest node has %g: its workers are placed PACK over several "
                    "nodes, and their collectives cross the network", need, what, largest)  # fmt: skip
        return "PACK"
    return "STRICT_PACK"


def driver_resources(space: SearchSpace) -> dict[str, float]:
    """What a trial's driver asks for: a sliver of CPU, and a sliver of the head node when pinned there.

    A trial that trains in its driver (``trial.in_driver``) holds its worker's CPUs only while it
    trains, in a placement group of its own (see ``trial._fit_in_driver``).
    """
    trial = space.trial
    request = {"CPU": trial.driver_cpus}
    if trial.driver_on_head:
        request[HEAD_NODE_RESOURCE] = 0.001  # Ray gives the head node 1.0 of this resource
    return request


def _searcher(space: SearchSpace, run_id: str, optuna_storage: str, stopped: StopRecord) -> tuple[Any, int]:
    """The space's searcher and the number of trials to sample."""
    if space.search == "grid":
        plan = space.trials()
        return PlanSearcher(plan), len(plan)
    if space.search == "decide":
        points = dict(space.grid_points())
        run_dir = stopped.path.parent
        searcher = DecideSearcher(points, space.baseline, space.decide_seeds(), space.decide.rule(), run_dir,
                                  max_failures=space.trial.max_failures)  # fmt: skip
        return searcher, searcher.max_trials  # the searcher ends the sweep; retries may need more than a grid
    import optuna

    metric: str | list[str] = "objective"
    mode: str | list[str] = "max" if space.objective == "probe" else space.mode
    if space.objectives:  # a multi-objective study: Optuna keeps the Pareto front
        metric = [space.objective_keys()[name] for name, _ in space.objective_directions()]
        mode = [direction for _, direction in space.objective_directions()]
    storage = optuna.storages.RDBStorage(optuna_storage)
    seed = space.seeds[0]
    samplers = {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler}
    sampler = samplers[space.sampler](seed=seed)
    searcher = PruningOptunaSearch(
        stopped, space.metric, pretrain_seed=seed, space=define_by_run(space.optuna),
        metric=metric, mode=mode, sampler=sampler, study_name=run_id, storage=storage,
    )  # fmt: skip
    return searcher, space.num_samples


def run_sweep(
    space: SearchSpace,
    run_dir: str | Path,
    caches: dict[str, str | Path],
    *,
    run_id: str,
    optuna_storage: str | None = None,
    storage: str | None = None,
    budget_hours: float = math.inf,
    resume: bool = False,
    concurrency: int | None = None,
    probe_resources: dict[str, float] | None = None,
    stage: bool = True,
    trackers: list[Any] | None = None,
    capacity: dict[str, float] | None = None,
    in_flight: int | None = None,
    callbacks: list[Any] | None = None,
    verbose: int = 1,
) -> tune.ResultGrid:
    """Run (or resume) a sweep into ``run_dir``.

    Args:
        space: the validated space.
        run_dir: the run directory.
        caches: dataset name -> cache directory (``mimic`` for pretraining, probe datasets).
        run_id: the sweep's id (the Optuna study name).
        optuna_storage: Optuna RDB URL; default a SQLite file in the run directory.
        storage: where Ray keeps checkpoints (default ``run_dir/train``); a URI on clusters.
        budget_hours: no new trial starts once trials used this many compute hours.
        resume: continue an interrupted sweep from ``run_dir``.
        concurrency: trials training at once (default: what the cluster fits, at its reach when at rest).
        probe_resources: resource request of one probe task (default: the space's ``probes.cpus`` /
            ``probes.gpus``).
        stage: copy the pretraining cache to each node's ``DERI_LOCAL_DISK`` before the
            trials, and let their workers read that copy.
        trackers: :class:`~deri_sweep.orchestration.trackers.Tracker` values: each trial
            becomes one MLflow / W&B run.
        capacity: the GPUs the cluster can reach (:func:`cluster_gpu_capacity`), for a cluster at rest.
        in_flight: trials in flight (training or probing; default twice ``concurrency`` for GPU trials,
            ``concurrency`` for CPU trials). Equal to
            ``concurrency``, a probing trial keeps its Tune slot, i.e. its GPUs' share (the
            scheduling before training slots; kept for comparisons).
        callbacks: more Tune callbacks (e.g. the console's :class:`~deri_sweep.orchestration.console.SweepProgress`).
        verbose: Tune's verbosity (0: no status table; 1: Tune's status table every 30 s).

    Returns:
        Tune's result grid.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    training = concurrency or max_concurrent(space, capacity)
    # GPU trials: twice as many in flight, so the next trains while one probes; CPU trials share the same cores
    # between training and probing, so a probing trial keeps its slot there (and ASHA compares trials side by side)
    flying = in_flight or (2 * training if space.trial.gpus_per_worker > 0 else training)
    slots = ""
    if flying > training:  # training slots gate the worker groups; probing trials hold none
        slots = f"deri-training-slots-{uuid.uuid4().hex[:8]}"
        actor = TrainingSlots.options(name=slots).remote(training)
        ray.get(actor.__ray_ready__.remote())
    probes = probe_resources or vars(ProbeResources.of(space))
    context = SweepContext(
        run_id, str(run_dir), to_dict(space), {k: str(v) for k, v in caches.items()},
        storage or str(run_dir / "train"), dict(probes), stage, placement_strategy(space, capacity), slots,
        "fit" if slots else "trial",
    )  # fmt: skip
    log.info("trials: %d training at once, %d in flight; workers placed %s; probe tasks ask for %s", training,
             flying, context.placement_strategy, probes)  # fmt: skip
    trainable = tune.with_resources(tune.with_parameters(trial_driver, context=context), driver_resources(space))
    tune_dir = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        log.info("resuming the sweep in %s", tune_dir)
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        return _fit(tuner)
    prebuild_text_features(space, str(run_dir))
    if stage:
        stage_pretraining_caches(space, str(run_dir))
    storage_url = optuna_storage or f"sqlite:///{run_dir / 'optuna.db'}"
    stopped = StopRecord(run_dir / STOPPED_FILE)  # one record for ASHA and the searcher; resume rebuilds it
    searcher, samples = _searcher(space, run_id, storage_url, stopped)
    scheduler = None
    if space.scheduler.type == "asha":
        # max_t one past the last epoch: ASHA must not stop a trial that finished pretraining (its probes run next)
        epochs = int(space.train_config({}, space.seeds[0]).optim.epochs)
        scheduler = StopRecordingASHA(
            stopped, time_attr="epoch", metric=space.metric, mode=space.mode,
            max_t=epochs + 1, grace_period=space.scheduler.grace_period,
            reduction_factor=space.scheduler.reduction_factor,
        )  # fmt: skip
    callbacks = [*tracker_callbacks(trackers or [], space, run_dir, run_id), *(callbacks or [])]
    if slots or space.trial.trains_in_driver:
        callbacks.append(SlotReleaser(actor if slots else None, run_id if space.trial.trains_in_driver else ""))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=BudgetSearcher(searcher, budget_hours),
            scheduler=scheduler,
            num_samples=samples,
            max_concurrent_trials=flying,
            reuse_actors=False,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=verbose, callbacks=callbacks),
    )
    return _fit(tuner)


def _fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """Run the Tuner, then remove the temporary checkpoint copies that killed workers left on this node."""
    try:
        return tuner.fit()
    finally:
        remove_stale_checkpoint_dirs(scratch_dir())

"""The ablation sweep: Ray Tune (+ Optuna) over DERI pretraining trials, each probed downstream.

:func:`run_sweep` builds the Tuner: the space's searcher (a grid plan, Optuna, or the
``decide`` searcher), ASHA when the space asks for it, the trackers, and one Tune
function trainable per trial (:func:`deri_sweep.orchestration.trial.trial_driver`).
Before the first trial it builds the frozen text features once and stages the
pretraining cache on every node. Everything a trial produced is written under
``RUN_DIR/trials/<trial_id>/`` atomically, so a resumed sweep does not redo finished
trials or probes.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from deri_sweep.common.strict_loader import from_dict, to_dict
from deri_sweep.orchestration.decide_searcher import DecideSearcher
from deri_sweep.orchestration.node_staging import stage_on_every_node
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
from deri_sweep.orchestration.trial import SweepContext, trial_driver
from deri_sweep.train.recipe import remove_stale_checkpoint_dirs
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

STOPPED_FILE = "stopped_trials.txt"
HEAD_NODE_RESOURCE = "node:__internal_head__"


def _build_text_features(cache_dir: str, text: dict[str, Any]) -> str:
    """Ray task: the frozen tower's features of every unique report of a cache (a no-op when present)."""
    from deri_sweep.model.config import TextConfig
    from deri_sweep.model.text_cache import build_text_features
    from deri_sweep.model.text_tower import TextTower

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = from_dict(TextConfig, text)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return str(build_text_features(cache_dir, TextTower(cfg), device=device, progress=False))


def _planned_configs(space: SearchSpace) -> list[TrainConfig]:
    """The resolved config of every planned trial (a grid's; an Optuna search's base config)."""
    if space.search == "grid":
        plans = space.trials()
    elif space.search == "decide":  # every configuration; the seed does not change what is built
        plans = [{"overrides": overrides, "seed": space.seeds[0]} for _, overrides in space.grid_points()]
    else:
        plans = [{"overrides": {}, "seed": space.seeds[0]}]
    return [space.train_config(t["overrides"], t["seed"]) for t in plans]


def prebuild_text_features(space: SearchSpace) -> float:
    """Build the text features every trial needs once, before any trial starts.

    One Ray task per distinct (pretraining cache, frozen text tower) of the plan, on a
    GPU when the cluster has one; trials then find the features and skip the tower.
    Without this, concurrent trials would each run the tower at their start.

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
    gpu = 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    task = ray.remote(_build_text_features).options(num_cpus=1 if not gpu else 0.5, num_gpus=gpu, max_retries=2)
    refs = [task.remote(cache, to_dict(text)) for (cache, _), text in needed.items()]
    for (_, folder), ref in zip(needed, refs, strict=True):
        log.info("text features ready once for every trial: %s", ray.get(ref) or folder)
    return time.time() - started


def stage_pretraining_caches(space: SearchSpace) -> float:
    """Copy each pretraining cache of the plan to every node's local disk, once (after its text features exist).

    Returns:
        Wall seconds spent (near 0 when every node's copy was already in place, or no node has a local disk).
    """
    started = time.time()
    for cache in sorted({cfg.data.cache for cfg in _planned_configs(space)}):
        stage_on_every_node(cache)
    return time.time() - started


def max_concurrent(space: SearchSpace) -> int:
    """How many trials fit the cluster at once, from its GPUs (or CPUs) and the trial size."""
    total = ray.cluster_resources()
    trial = space.trial
    if trial.gpus_per_worker > 0:
        fit = total.get("GPU", 0.0) / (trial.workers * trial.gpus_per_worker)
    else:
        fit = total.get("CPU", 0.0) / (trial.workers * trial.cpus_per_worker + trial.driver_cpus)
    return max(1, math.floor(fit + 1e-9))


def driver_resources(space: SearchSpace) -> dict[str, float]:
    """What a trial's driver asks for: a sliver of CPU, and a sliver of the head node when pinned there."""
    request = {"CPU": space.trial.driver_cpus}
    if space.trial.driver_on_head:
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
        searcher = DecideSearcher(points, space.baseline, space.decide_seeds(), space.decide.rule(), run_dir)
        return searcher, len(points) * space.decide.max_seeds
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
        concurrency: max concurrent trials (default: what the cluster fits).
        probe_resources: resource request of one probe task.
        stage: copy the pretraining cache to each node's ``DERI_LOCAL_DISK`` before the
            trials, and let their workers read that copy.
        trackers: :class:`~deri_sweep.orchestration.trackers.Tracker` values: each trial
            becomes one MLflow / W&B run.

    Returns:
        Tune's result grid.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    context = SweepContext(
        run_id, str(run_dir), to_dict(space), {k: str(v) for k, v in caches.items()},
        storage or str(run_dir / "train"), probe_resources or {"num_cpus": 0.25, "num_gpus": 0.0}, stage,
    )  # fmt: skip
    trainable = tune.with_resources(tune.with_parameters(trial_driver, context=context), driver_resources(space))
    tune_dir = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        log.info("resuming the sweep in %s", tune_dir)
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        return _fit(tuner)
    prebuild_text_features(space)
    if stage:
        stage_pretraining_caches(space)
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
    callbacks = tracker_callbacks(trackers or [], space, run_dir, run_id)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=BudgetSearcher(searcher, budget_hours),
            scheduler=scheduler,
            num_samples=samples,
            max_concurrent_trials=concurrency or max_concurrent(space),
            reuse_actors=False,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=1, callbacks=callbacks),
    )
    return _fit(tuner)


def _fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """Run the Tuner, then remove the temporary checkpoint copies that killed workers left on this node."""
    try:
        return tuner.fit()
    finally:
        remove_stale_checkpoint_dirs(scratch_dir())

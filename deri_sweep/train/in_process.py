"""A one-worker CPU pretraining run in the calling process, with restarts from its last checkpoint.

A Ray Train worker group of one CPU worker buys nothing that the trial's own process could not
do: it costs about seven process starts per trial (a Train controller, its placement-group
cleaner, queue, synchronisation and dataset actors, and the worker), each importing Ray Train
and most of them torch, a few core-seconds each. :func:`fit_in_process` runs the same recipe
(:func:`deri_sweep.train.recipe.run_worker`, rank 0 of a world of 1, no process group) where it
is called, keeps the latest epoch's checkpoint in one folder, and, like Ray Train's
``FailureConfig(max_failures)``, restarts a failed run from that checkpoint.

A world of one needs no process group: DeriLoss gathers nothing and DDP over one rank averages
each gradient over one, so the run takes the same steps as a one-worker TorchTrainer
(``tests/test_pretraining.py`` checks the weights bit for bit).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deri_sweep.train.checkpoint import META_FILE, CheckpointError, read_meta
from deri_sweep.train.recipe import WorkerInfo, run_worker
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)


def keep_latest(source: Path, target: Path) -> None:
    """Move the files of the checkpoint folder ``source`` into ``target``, never leaving it half-written.

    The recipe deletes ``source`` once its report returns, so its files are moved, not copied
    (a 100 MB state file at the laptop preset). They go to ``target.new`` first; the old ``target``
    is moved aside, the new one moved in, and the old one removed. A crash at any point leaves a
    complete checkpoint in ``target`` or in ``target.old`` (:func:`latest_checkpoint` reads both).
    """
    fresh, old = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for item in sorted(source.iterdir(), key=lambda p: p.name == META_FILE):  # meta.json, the "finished" mark, last
        shutil.move(item, fresh / item.name)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(target: Path) -> Path | None:
    """The complete checkpoint :func:`keep_latest` left in ``target`` (or its ``.old`` copy); ``None``: none yet."""
    for folder in (target, target.with_name(target.name + ".old")):
        try:
            read_meta(folder)
        except CheckpointError:
            continue
        return folder
    return None


def fit_in_process(
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    report: Callable[[dict[str, Any]], None],
    *,
    max_failures: int = 2,
    cpus: float = 1.0,
    scratch: Path | None = None,
) -> dict[str, float]:
    """Pretrain on this process's CPU, keeping the latest epoch's checkpoint in ``checkpoint_dir``.

    Args:
        cfg: the resolved run config.
        checkpoint_dir: where the latest checkpoint is kept; a checkpoint already there is resumed
            (a trial that a restarted sweep runs again continues where it stopped, and one that
            had finished returns its last metrics at once).
        report: receives every report's metrics (each epoch's, and every ``report_every_steps``
            steps), after the epoch's checkpoint is in ``checkpoint_dir``.
        max_failures: restarts from the latest checkpoint after an exception, before giving up.
        cpus: CPUs this run holds, for the CPU-hour accounting in the metrics.
        scratch: where the recipe writes its temporary checkpoint copies (default: the system temp dir).

    Returns:
        The metrics of the last epoch.

    Raises:
        Exception: the run's last error, once ``max_failures`` restarts failed too.
    """
    target = Path(checkpoint_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    worker = WorkerInfo(device=torch.device("cpu"), resource_per_worker=cpus, resource_kind="cpu", scratch=scratch)

    def on_report(metrics: dict[str, Any], directory: Path | None) -> None:
        if directory is not None:
            keep_latest(Path(directory), target)
        report(metrics)

    failures = 0
    while True:
        resume = latest_checkpoint(target)
        if resume is not None and int(read_meta(resume)["epoch"]) + 1 >= cfg.optim.epochs:
            log.info("%s holds the last epoch's checkpoint: nothing left to train", resume)
            if resume != target:  # killed between keep_latest's renames: the finished checkpoint takes its place
                resume.rename(target)
            return dict(read_meta(target)["metrics"])
        try:
            return run_worker(cfg, worker, on_report, resume=resume)
        except Exception as err:
            failures += 1
            if failures > max_failures:
                raise
            log.warning("pretraining failed (%s: %s); restart %d of %d from %s", type(err).__name__, err, failures,
                        max_failures, latest_checkpoint(target) or "the start")  # fmt: skip

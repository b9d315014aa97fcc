"""Experiment trackers: every trial becomes one MLflow or Weights & Biases run, through Ray Tune's own callbacks.

``ablate --tracker mlflow[=URI]`` and ``--tracker wandb`` add Ray Tune's
``MLflowLoggerCallback`` / ``WandbLoggerCallback`` to the sweep, specialised so that a run

- is named by variant and seed (``full-s42``; Optuna trials ``optuna7-s42``), the names Tune shows too;
- holds the trial's resolved config as params (``optim.lr``, ``model.interaction.depth``, ...);
- receives every report as it comes (per-epoch curves, ``hours`` and ``gpu_hours``/``cpu_hours``)
  and, with the final report, the trial's probe metrics read from its ``probes.parquet``
  (``probe/<method>/<task>/<fraction>/<metric>``, averaged over probe seeds), so pretraining and
  probes of a trial land in one run;
- is tagged with the sweep id and the git commit; a resumed trial continues its MLflow run.

Only numbers and config values are sent: no report text, checkpoint or artifact (the privacy
test reads the stores back). MLflow defaults to ``sqlite:///<out>/mlflow.db`` (MLflow 3 refuses
new file stores); W&B runs offline unless ``WANDB_MODE`` says otherwise, its files under each
trial's Tune folder (``wandb sync`` uploads them later).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune.experiment import Trial

from deri_sweep.common.provenance import git_commit
from deri_sweep.common.storage import owned_temp_dir, remove_orphaned_temp_dirs
from deri_sweep.common.strict_loader import to_dict
from deri_sweep.orchestration.results import FINAL_REPORT_KEY
from deri_sweep.orchestration.spaces import SearchSpace

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "wandb")
EXPERIMENT = "deri-sweep"
WANDB_TMP_PREFIX = "deri-wandb-"


@dataclass(frozen=True)
class Tracker:
    """A tracker asked for on the command line: ``kind`` with an optional URI (``mlflow=URI``)."""

    kind: str
    uri: str | None = None

    @classmethod
    def parse(cls, text: str) -> Tracker:
        """Parse ``mlflow``, ``mlflow=URI`` or ``wandb``.

        Raises:
            ValueError: an unknown tracker, or a URI given to W&B.
        """
        kind, _, uri = text.partition("=")
        if kind not in TRACKERS:
            raise ValueError(f"--tracker {text!r}: unknown tracker; choose from {', '.join(TRACKERS)}")
        if kind == "wandb" and uri:
            raise ValueError("--tracker wandb takes no URI: set WANDB_MODE / WANDB_BASE_URL / WANDB_PROJECT instead")
        if importlib.util.find_spec(kind) is None:
            raise ValueError(f"--tracker {kind}: {kind} is not installed; pip install -e '.[trackers]'")
        return cls(kind, uri or None)

    def store(self, run_dir: Path) -> str:
        """Where the runs go: the MLflow tracking URI, or the W&B mode."""
        if self.kind == "mlflow":
            return self.uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        return os.environ.get("WANDB_MODE", "offline")


def trial_name(trial: Trial) -> str:
    """``<variant>-s<seed>`` (``optuna<number>-s<seed>`` for Optuna trials): the run's name in Tune and trackers."""
    config = trial.config
    variant = config.get("variant", "trial")
    if config.get("optuna_number") is not None:
        variant = f"optuna{config['optuna_number']}"
    return f"{variant}-s{config.get('seed', 0)}"


def trial_params(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """The trial's resolved pretraining config, flattened to ``a.b.c`` keys, plus variant and seed."""
    resolved = to_dict(space.train_config(dict(config.get("overrides", {})), int(config.get("seed", 0))))
    flat: dict[str, Any] = {"variant": config.get("variant"), "seed": config.get("seed")}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", resolved)
    return flat


def probe_metrics(run_dir: Path, trial_id: str) -> dict[str, float]:
    """The trial's headline probe results as ``probe/<method>/<task>/<fraction>/<metric>``, means over probe seeds.

    Per-class metrics (``test_auroc/MI``) stay in ``results.parquet``; a probe file that cannot
    be read gives a warning and no probe metrics, never a stopped sweep.
    """
    path = run_dir / "trials" / trial_id / "probes.parquet"
    if not path.exists():
        return {}
    try:
        probes = pd.read_parquet(path, columns=["method", "task", "fraction", "metric", "value", "status", "encoder"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: probe metrics not sent to the tracker (%s)", path, exc)
        return {}
    headline = ~probes["metric"].str.contains("/")
    keep = probes[(probes["status"] == "ok") & (probes["encoder"] == "pretrained") & headline]
    means = keep.groupby(["method", "task", "fraction", "metric"], dropna=False)["value"].mean()
    out = {}
    for (method, task, fraction, metric), value in means.items():
        part = "all" if pd.isna(fraction) else f"{float(fraction):g}"
        if math.isfinite(float(value)):
            out[f"probe/{method}/{task}/{part}/{metric}"] = float(value)
    return out


def tracked(result: dict[str, Any], run_dir: Path, trial_id: str) -> dict[str, Any]:
    """What a tracker receives from one Tune report: its numbers, plus the probe metrics with the final one."""
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if result.get(FINAL_REPORT_KEY):
        numbers.update(probe_metrics(run_dir, trial_id))
    return numbers


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """A tracker that fails (a server down, a full disk) logs a warning; it never stops or hangs the sweep."""

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # any tracker error: the sweep is what matters
            log.warning("tracker %s: %s failed (%s: %s); the sweep goes on", type(self).__name__, method.__name__,
                        type(exc).__name__, exc)  # fmt: skip

    return guarded


def _mlflow_callback(uri: str, space: SearchSpace, run_dir: Path, run_id: str) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # imports mlflow: only when asked for

    class SweepMLflowCallback(MLflowLoggerCallback):
        """Ray Tune's MLflow callback, one run per trial as the module says."""

        def __init__(self, uri: str, space: SearchSpace, run_dir: Path, run_id: str) -> None:
            super().__init__(
                tracking_uri=uri, experiment_name=EXPERIMENT, tags={"sweep_id": run_id, "git_commit": git_commit()}
            )
            self._space, self._run_dir, self._run_id = space, run_dir, run_id

        @_guarded
        def log_trial_start(self, trial: Trial) -> None:
            """Open the trial's run (or find it again after a resume) and log its resolved config."""
            if trial in self._trial_runs:
                return
            import mlflow

            client = mlflow.MlflowClient(self.tracking_uri)
            filter_string = f"tags.sweep_id = '{self._run_id}' and tags.trial_id = '{trial.trial_id}'"
            existing = client.search_runs([self.mlflow_util.experiment_id], filter_string=filter_string, max_results=1)
            if existing:  # a resumed sweep: the trial goes on in its run
                self._trial_runs[trial] = existing[0].info.run_id
                client.update_run(existing[0].info.run_id, status="RUNNING")
                return
            tags = {**self.tags, "trial_id": trial.trial_id, "trial_name": trial_name(trial)}
            run = self.mlflow_util.start_run(tags=tags, run_name=trial_name(trial))
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=trial_params(self._space, trial.config))

        @_guarded
        def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
            """Log a report's numbers (and, with the final one, the probe metrics)."""
            super().log_trial_result(iteration, trial, tracked(result, self._run_dir, trial.trial_id))

    return SweepMLflowCallback(uri, space, run_dir, run_id)


def persist_trial_folders(trials: list[Trial], folder: str) -> int:
    """Copy each trial's ``folder`` from Tune's driver staging folder to the trial's folder in storage.

    A logger callback writes a trial's files on the driver under ``trial_driver_staging_path``,
    which Tune syncs to storage during the run and once more before ``on_experiment_end``;
    this copies what was written after that last sync. A failed copy is logged, never raised.

    Returns:
        The number of trial folders copied.
    """
    import pyarrow.fs

    copied = 0
    for trial in trials:
        storage = trial.storage
        if storage is None or storage.trial_dir_name is None:
            continue
        local = Path(storage.trial_driver_staging_path) / folder
        target = Path(storage.trial_fs_path, folder).as_posix()
        local_storage = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
        if not local.is_dir() or (local_storage and Path(target).resolve() == local.resolve()):
            continue
        try:
            pyarrow.fs.copy_files(str(local), target, source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=storage.storage_filesystem)  # fmt: skip
            copied += 1
        except (OSError, pyarrow.ArrowException) as exc:
            log.warning("could not copy %s of trial %s to %s: %s", folder, trial.trial_id, target, exc)
    return copied


def _wandb_callback(space: SearchSpace, run_dir: Path, run_id: str) -> Any:
    import ray
    from ray.air.integrations.wandb import WANDB_ENV_VAR, WandbLoggerCallback, _WandbLoggingActor
    from ray.air.util.node import _force_on_current_node

    os.environ.setdefault("WANDB_MODE", "offline")  # Ray's callback asks for an API key unless it sees this

    class FlushingWandbLoggingActor(_WandbLoggingActor):
        """Ray's W&B logging actor, which also waits for W&B to write the run before it returns.

        ``wandb.finish()`` hands the run to W&B's service process, which finishes writing the
        ``.wandb`` file when the client tears down: by default in an atexit hook, which Ray's kill
        of a finished logging actor cuts short (W&B then printed a "Connection lost" traceback per
        trial). Tearing down here means the file is complete when ``run`` returns, which is when
        the callback copies it into the run directory.
        """

        def run(self) -> None:
            try:
                super().run()
            finally:
                self._wandb.teardown()

    class SweepWandbCallback(WandbLoggerCallback):
        """Ray Tune's W&B callback, one run per trial as the module says (offline by default).

        W&B writes temporary folders and its service socket at import, in the logging actor
        that Ray ends without letting Python clean up. The actors get a ``TMPDIR`` of the
        sweep's own, removed when the experiment ends (or, after a killed driver, by the next
        sweep on the node), so nothing of W&B's accumulates in the system temp dir.
        """

        _logger_actor_cls = FlushingWandbLoggingActor

        def __init__(self) -> None:
            removed = remove_orphaned_temp_dirs(WANDB_TMP_PREFIX)
            if removed:
                log.info("removed %d W&B temp folder(s) of earlier, killed sweeps", removed)
            self._tmp = owned_temp_dir(WANDB_TMP_PREFIX)
            commit = git_commit()
            self._base = {
                "mode": os.environ["WANDB_MODE"],
                "tags": [f"sweep={run_id}"[:64], f"commit={commit[:12]}"],
                "settings": {"console": "off"},  # logs stay out of the run: only numbers and config
            }
            self._extra = {"sweep_id": run_id, "git_commit": commit}
            super().__init__(project=os.environ.get("WANDB_PROJECT", EXPERIMENT), group=run_id, **self._base)

        def _start_logging_actor(self, trial: Trial, exclude_results: list[str], **wandb_init_kwargs: Any) -> None:
            if not self._remote_logger_class:  # Ray's own actor options, plus the TMPDIR
                env_vars = {"TMPDIR": str(self._tmp)}
                if WANDB_ENV_VAR in os.environ:
                    env_vars[WANDB_ENV_VAR] = os.environ[WANDB_ENV_VAR]
                self._remote_logger_class = ray.remote(
                    num_cpus=0,
                    **_force_on_current_node(),
                    runtime_env={"env_vars": env_vars},
                    max_restarts=-1,
                    max_task_retries=-1,
                )(self._logger_actor_cls)
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

        def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
            """Wait for every W&B run to be written (Ray's part), then copy the runs into the run directory.

            Tune's last sync of the trials' folders to storage happens before this callback, so
            the runs W&B finishes here (the last trials') would otherwise reach the run directory
            as they were at that sync: an empty ``.wandb`` file (measured, an early-stopped trial).
            """
            try:
                super().on_experiment_end(trials, **info)
                persist_trial_folders(trials, "wandb")
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)

        @_guarded
        def log_trial_start(self, trial: Trial) -> None:
            config = {**trial_params(space, trial.config), **self._extra}
            self.kwargs = {**self._base, "name": trial_name(trial), "config": config}
            super().log_trial_start(trial)

        @_guarded
        def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
            super().log_trial_result(iteration, trial, tracked(result, run_dir, trial.trial_id))

    return SweepWandbCallback()


def tracker_callbacks(trackers: list[Tracker], space: SearchSpace, run_dir: Path, run_id: str) -> list[Any]:
    """Tune callbacks for ``trackers`` (each library imported only when asked for)."""
    callbacks = []
    for tracker in trackers:
        if tracker.kind == "mlflow":
            callbacks.append(_mlflow_callback(tracker.store(run_dir), space, run_dir, run_id))
            log.info("tracking trials in MLflow at %s (experiment %r)", tracker.store(run_dir), EXPERIMENT)
        else:
            callbacks.append(_wandb_callback(space, run_dir, run_id))
            log.info("tracking trials in W&B (%s mode)", tracker.store(run_dir))
    return callbacks

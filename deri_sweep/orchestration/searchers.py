"""Tune searchers and scheduler of the sweep.

- :class:`PlanSearcher` hands out a fixed list of trial configs (a grid of
  ablation variants x seeds) one by one, so the same budget and resume logic
  serves grids and Optuna searches.
- :class:`PruningOptunaSearch` fixes how Ray's ``OptunaSearch`` reports early
  stopped trials: Ray tells Optuna that a trial ASHA stopped is COMPLETE with
  its truncated value, which misleads TPE; here such trials reach Optuna as
  PRUNED, with their intermediate values.
- :class:`StopRecordingASHA` is ASHA that records which trials it stopped in a
  :class:`StopRecord` (the link handed to both it and the searcher: a file of the
  run directory, so a resumed sweep rebuilds it with every stop made before) and
  never stops a trial at its last epoch (a finished pretraining is probed).
- :class:`BudgetSearcher` stops suggesting new trials once the compute-hour
  budget is spent (running trials finish).
"""

from __future__ import annotations

import logging
import math
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from deri_sweep.orchestration.results import FINAL_REPORT_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopRecord:
    """The trials ASHA stopped early: written by the scheduler, read by the Optuna searcher.

    Both are handed the same record. It lives in a file of the run directory (one trial id
    per line), so the record a resumed sweep builds on the same file holds every stop made
    before the driver restarted.

    Attributes:
        path: the record file (absent until the first stop).
    """

    path: Path

    def add(self, trial_id: str) -> None:
        """Record that ``trial_id`` was stopped."""
        with open(self.path, "a") as fh:
            fh.write(f"{trial_id}\n")

    def ids(self) -> set[str]:
        """Every trial id recorded so far (empty when none was stopped)."""
        return set(self.path.read_text().split()) if self.path.exists() else set()


class StopRecordingASHA(ASHAScheduler):
    """ASHA that records the trials it stops, and lets a trial's last epoch through.

    ``max_t`` is one past the last epoch (the sweep sets it so). When the epoch count
    falls on a rung, plain ASHA could stop a trial at its last epoch: Tune would kill
    its driver before the probes ran, and the trial would be neither pruned nor
    finished. Here a trial that reached its last epoch always continues.

    Args:
        record: where the stopped trials go (the searcher reads the same record).
        **kwargs: passed to ``ASHAScheduler`` (time_attr, metric, mode, max_t, ...).
    """

    def __init__(self, record: StopRecord, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Let ASHA decide; a STOP before the last epoch is recorded, one at the last epoch is overruled."""
        decision = super().on_trial_result(tune_controller, trial, result)
        finished = FINAL_REPORT_KEY in result or result.get(self._time_attr, 0) >= self._max_t - 1
        if decision != TrialScheduler.STOP:
            return decision
        if finished:
            return TrialScheduler.CONTINUE  # pretraining is done: its probes and final report come next
        self.record.add(trial.trial_id)
        log.info("ASHA stopped trial %s at epoch %s", trial.trial_id, result.get("epoch"))
        return decision


class PlanSearcher(Searcher):
    """Suggest a fixed list of configs in order, then FINISHED.

    Args:
        configs: trial configs (``{"variant", "overrides", "seed"}``).
        metric: reported metric (for Tune's bookkeeping).
        mode: ``min`` or ``max``.
    """

    def __init__(self, configs: list[dict[str, Any]], metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.configs = list(configs)
        self.next_index = 0
        self.assigned: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next planned config, or FINISHED when all are out."""
        if trial_id in self.assigned:
            return self.configs[self.assigned[trial_id]]
        if self.next_index >= len(self.configs):
            return Searcher.FINISHED
        self.assigned[trial_id] = self.next_index
        self.next_index += 1
        return self.configs[self.assigned[trial_id]]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn from a finished trial of a fixed plan."""

    def save(self, checkpoint_path: str) -> None:
        """Persist the plan position (Tuner.restore continues from it)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        """Restore the plan position."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch whose early-stopped trials reach Optuna as PRUNED.

    Args:
        stopped: the scheduler's record of stopped trials (see :class:`StopRecordingASHA`).
        intermediate_metric: the per-epoch metric reported to Optuna as intermediate values (the
            space's ``metric``; ``rung_probe_auroc`` keeps a pruned trial in the units of a completed
            one's probe objective). NaN values (epochs between rungs) are not reported.
        pretrain_seed: the pretraining seed of every trial (replicate a found config with a grid).
        **kwargs: passed to ``OptunaSearch`` (space, metric, mode, sampler, study_name, storage).
    """

    def __init__(self, stopped: StopRecord, intermediate_metric: str, pretrain_seed: int = 42, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped = stopped
        self.intermediate_metric = intermediate_metric
        self.pretrain_seed = pretrain_seed

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Optuna's parameters wrapped as the sweep's trial config."""
        params = super().suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        flat = self._ot_trials[trial_id].params
        number = self._ot_trials[trial_id].number
        return {"variant": "optuna", "overrides": dict(flat), "seed": self.pretrain_seed, "optuna_number": number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the pretraining metric at each epoch as an intermediate value (step = epoch)."""
        if isinstance(self.metric, list):
            return  # a multi-objective study: Optuna takes no intermediate values (and prunes nothing)
        value = result.get(self.intermediate_metric)
        if value is None or trial_id in self._completed_trials or not math.isfinite(value):
            return
        if FINAL_REPORT_KEY in result:
            return  # the final report repeats the last epoch's metric next to the objective
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is already reported")
            # the epoch, not Tune's training_iteration: a trial resumed after a driver restart counts again from 1
            step = round(float(result.get("epoch", result.get("training_iteration", 0))))
            self._ot_trials[trial_id].report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """PRUNED for a trial the scheduler stopped, FAIL for an error, else COMPLETE with the objective.

        Tune does not pass the result that made the scheduler stop a trial to ``on_trial_result``
        (only to this method), so that last intermediate value is reported here before the
        trial is told PRUNED (Optuna ignores a step reported twice).
        """
        if trial_id in self.stopped.ids() and trial_id not in self._completed_trials and not error:
            from optuna.trial import TrialState

            self.on_trial_result(trial_id, result or {})
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class BudgetSearcher(Searcher):
    """Wrap a searcher: suggest no new trial once the compute hours used reach the budget.

    Args:
        searcher: the wrapped searcher.
        budget_hours: GPU-hours (CPU-hours on CPU trials); ``inf`` for no limit.
    """

    def __init__(self, searcher: Searcher, budget_hours: float = math.inf) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.budget_hours = budget_hours
        self.hours: dict[str, float] = {}

    @property
    def used_hours(self) -> float:
        """Compute hours reported by all trials so far."""
        return sum(self.hours.values())

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Forward Tune's metric/mode/config to the wrapped searcher."""
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Delegate, unless the budget is spent."""
        if self.used_hours >= self.budget_hours:
            log.warning("compute budget spent (%.3f of %.3f h): no new trials", self.used_hours, self.budget_hours)
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Track hours, then delegate."""
        if "hours" in result:
            self.hours[trial_id] = float(result["hours"])
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Track hours, then delegate."""
        if result and "hours" in result:
            self.hours[trial_id] = float(result["hours"])
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """The hours ledger (Tune saves the wrapped searcher itself)."""
        return {"hours": dict(self.hours)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore the hours ledger."""
        self.hours = dict(state.get("hours", {}))

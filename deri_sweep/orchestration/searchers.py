"""Tune searchers and scheduler of the sweep.

- :class:`PlanSearcher` hands out a fixed list of trial configs (a grid of
  ablation variants x seeds) one by one, so the same budget and resume logic
  serves grids and Optuna searches.
- :class:`PruningOptunaSearch` fixes how Ray's ``OptunaSearch`` reports early
  stopped trials: Ray tells Optuna that a trial ASHA stopped is COMPLETE with
  its truncated value, which misleads TPE; here such trials reach Optuna as
  PRUNED, with their intermediate values.
- :class:`StopRecordingASHA` is ASHA that records which trials it stopped.
- :class:`BudgetSearcher` stops suggesting new trials once the compute-hour
  budget is spent (running trials finish).
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from deri_sweep.results import FINAL_REPORT_KEY

log = logging.getLogger(__name__)

#: run id -> trial ids stopped early by the scheduler (shared in the driver process)
_STOPPED: dict[str, set[str]] = {}


def stopped_trials(run_id: str) -> set[str]:
    """Trial ids the scheduler stopped early in run ``run_id``."""
    return _STOPPED.setdefault(run_id, set())


class StopRecordingASHA(ASHAScheduler):
    """ASHA that records the trials it stops (so the searcher can report them as pruned)."""

    def __init__(self, run_id: str, record: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.record = record

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Let ASHA decide; remember a STOP."""
        decision = super().on_trial_result(tune_controller, trial, result)
        finished = FINAL_REPORT_KEY in result or result.get(self._time_attr, 0) >= self._max_t - 1
        if decision == TrialScheduler.STOP and not finished:
            stopped_trials(self.run_id).add(trial.trial_id)
            if self.record is not None:
                with open(self.record, "a") as fh:
                    fh.write(f"{trial.trial_id}\n")
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
        run_id: the sweep's run id (looks up :func:`stopped_trials`).
        intermediate_metric: the per-epoch metric reported to Optuna as
            intermediate values (the pretraining validation loss).
        pretrain_seed: the pretraining seed of every trial (replicate a found config with a grid).
        **kwargs: passed to ``OptunaSearch`` (space, metric, mode, sampler, study_name, storage).
    """

    def __init__(self, run_id: str, intermediate_metric: str, pretrain_seed: int = 42, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
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
        """Report the pretraining metric at each training iteration as an intermediate value."""
        value = result.get(self.intermediate_metric)
        if value is None or trial_id in self._completed_trials or not math.isfinite(value):
            return
        self._ot_trials[trial_id].report(float(value), int(result.get("training_iteration", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """PRUNED for a trial the scheduler stopped, FAIL for an error, else COMPLETE with the objective."""
        if trial_id in stopped_trials(self.run_id) and trial_id not in self._completed_trials and not error:
            from optuna.trial import TrialState

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

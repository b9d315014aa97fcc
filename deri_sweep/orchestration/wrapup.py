"""After a sweep: result tables, Optuna's hyper-parameter importances, no dangling Optuna trials."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from deri_sweep.common.storage import atomic_write_text
from deri_sweep.orchestration.results import write_tables

log = logging.getLogger(__name__)


def close_dangling_trials(optuna_url: str, study_name: str) -> int:
    """Mark Optuna trials still RUNNING (their driver died) as FAIL.

    Returns:
        How many trials were closed.
    """
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=optuna_url)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        closed += 1
    if closed:
        log.warning("%d Optuna trial(s) were left RUNNING by an interrupted driver: marked FAIL", closed)
    return closed


def write_importance(optuna_url: str, study_name: str, out: Path) -> Path | None:
    """Hyper-parameter importances by Optuna's evaluator (fANOVA by default) into ``importance.csv``."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=optuna_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        log.info("importance needs at least 2 complete Optuna trials; have %d", len(complete))
        return None
    # a multi-objective study: the importances for its first objective (Optuna needs one target)
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        importance = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError) as exc:
        log.warning("hyper-parameter importance not computed: %s", exc)
        return None
    frame = pd.DataFrame({"param": list(importance), "importance": list(importance.values())})
    atomic_write_text(out, frame.to_csv(index=False))
    return out


def finish_run(run_dir: Path, run_id: str, optuna_url: str | None) -> dict[str, Path]:
    """Write the run's tables (and, for Optuna searches, close dangling trials and write importances)."""
    paths = write_tables(run_dir, run_id)
    if optuna_url:
        close_dangling_trials(optuna_url, run_id)
        written = write_importance(optuna_url, run_id, run_dir / "importance.csv")
        if written:
            paths["importance"] = written
    return paths

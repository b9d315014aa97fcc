"""Searchers: early-stopped trials reach Optuna as PRUNED with their intermediate values; budgets; plans."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from deri_sweep.orchestration.searchers import (
    BudgetSearcher,
    PlanSearcher,
    PruningOptunaSearch,
    StopRecord,
    StopRecordingASHA,
)
from deri_sweep.orchestration.spaces import ParamSpec, define_by_run


class _Trial:
    """What ASHA reads of a Tune trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_asha_stopped_trial_is_pruned_in_optuna_with_its_intermediate_values(tmp_path):
    run, record = "run-pruned", StopRecord(tmp_path / "stopped.txt")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = PruningOptunaSearch(
        record, "val_total", pretrain_seed=7, space=define_by_run({"model.loss.w_mix": ParamSpec("float", 0.1, 2.0)}),
        metric="objective", mode="max", study_name=run, storage=optuna.storages.RDBStorage(storage),
    )  # fmt: skip
    asha = StopRecordingASHA(record, time_attr="epoch", metric="val_total",
                             mode="min", max_t=5, grace_period=1, reduction_factor=2)  # fmt: skip
    good, bad = _Trial("good"), _Trial("bad")
    for trial in (good, bad):
        config = searcher.suggest(trial.trial_id)
        assert config["seed"] == 7 and set(config["overrides"]) == {"model.loss.w_mix"}
        asha.on_trial_add(None, trial)
    # the good trial reaches the first rung with a low loss; the bad one arrives worse and is stopped there
    assert asha.on_trial_result(None, good, {"epoch": 1.0, "val_total": 10.0}) == TrialScheduler.CONTINUE
    searcher.on_trial_result("good", {"val_total": 10.0, "training_iteration": 1})
    stop = {"epoch": 1.0, "val_total": 30.0, "training_iteration": 1}
    assert asha.on_trial_result(None, bad, stop) == TrialScheduler.STOP
    assert record.ids() == {"bad"} and record.path.read_text().split() == ["bad"]
    # as Tune does: a result the scheduler stopped on goes to on_trial_complete only, never to on_trial_result
    searcher.on_trial_complete("bad", result=stop)
    searcher.on_trial_result("good", {"val_total": 8.0, "training_iteration": 2})
    searcher.on_trial_complete("good", result={"objective": 0.81, "val_total": 8.0})
    study = optuna.load_study(study_name=run, storage=storage)
    by_state = {t.state: t for t in study.trials}
    assert set(by_state) == {TrialState.PRUNED, TrialState.COMPLETE}
    pruned = by_state[TrialState.PRUNED]
    assert pruned.intermediate_values == {1: 30.0} and pruned.value == 30.0  # Optuna keeps the last intermediate
    assert by_state[TrialState.COMPLETE].value == pytest.approx(0.81)
    assert by_state[TrialState.COMPLETE].intermediate_values == {1: 10.0, 2: 8.0}


def test_a_trial_at_its_last_epoch_is_never_stopped_even_on_a_rung(tmp_path):
    """4 epochs, grace 1, factor 2: epoch 4 is a rung. Plain ASHA stops the worse trial there, before its probes."""
    record = StopRecord(tmp_path / "stopped.txt")
    kwargs = {"time_attr": "epoch", "metric": "val_total", "mode": "min", "max_t": 5, "grace_period": 1,
              "reduction_factor": 2}  # fmt: skip
    plain, ours = ASHAScheduler(**kwargs), StopRecordingASHA(record, **kwargs)
    for scheduler in (plain, ours):
        good, bad = _Trial("good"), _Trial("bad")
        scheduler.on_trial_add(None, good)
        scheduler.on_trial_add(None, bad)
        for epoch in (1.0, 2.0, 3.0):
            for trial, loss in ((good, 1.0), (bad, 1.0)):
                assert scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_total": loss}) != "STOP"
        assert scheduler.on_trial_result(None, good, {"epoch": 4.0, "val_total": 1.0}) == TrialScheduler.CONTINUE
        decision = scheduler.on_trial_result(None, bad, {"epoch": 4.0, "val_total": 30.0})
        assert decision == (TrialScheduler.STOP if scheduler is plain else TrialScheduler.CONTINUE)
    assert record.ids() == set() and not record.path.exists()


def test_plan_searcher_hands_out_each_config_once_and_survives_a_restore(tmp_path):
    plan = [{"variant": v, "overrides": {}, "seed": s} for v in ("a", "b") for s in (1, 2)]
    searcher = PlanSearcher(plan)
    assert [searcher.suggest(f"t{i}")["variant"] for i in range(2)] == ["a", "a"]
    assert searcher.suggest("t0") == plan[0]  # a restarted trial gets its own config again
    searcher.save(str(tmp_path / "s.pkl"))
    restored = PlanSearcher([])
    restored.restore(str(tmp_path / "s.pkl"))
    assert [restored.suggest(f"t{i}") for i in (2, 3)] == plan[2:]
    assert restored.suggest("t4") == PlanSearcher.FINISHED


def test_budget_stops_new_trials_but_keeps_state():
    plan = [{"variant": "a", "overrides": {}, "seed": s} for s in range(5)]
    budget = BudgetSearcher(PlanSearcher(plan), budget_hours=1.0)
    assert budget.suggest("t0") == plan[0]
    budget.on_trial_result("t0", {"hours": 0.6})
    assert budget.suggest("t1") == plan[1]
    budget.on_trial_complete("t1", {"hours": 0.5})
    assert budget.used_hours == pytest.approx(1.1)
    assert budget.suggest("t2") == BudgetSearcher.FINISHED
    state = budget.get_state()
    again = BudgetSearcher(PlanSearcher(plan), budget_hours=math.inf)
    again.set_state(state)
    assert again.used_hours == pytest.approx(1.1)


def test_optuna_searcher_survives_save_and_restore_mid_trial(tmp_path):
    """Tune pickles the searcher into the experiment state; a resumed sweep tells Optuna about the same trial."""
    run = "run-restore"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"model.interaction.decode_t": ParamSpec("categorical", choices=[True, False]),
             "model.loss.w_dec_t": ParamSpec("float", 0.1, 1.0, when={"model.interaction.decode_t": True})}  # fmt: skip

    def searcher() -> PruningOptunaSearch:
        return PruningOptunaSearch(
            StopRecord(tmp_path / "stopped.txt"), "val_total", space=define_by_run(space), metric="objective",
            mode="max", study_name=run, storage=optuna.storages.RDBStorage(storage),
        )  # fmt: skip

    before = searcher()
    config = before.suggest("t1")
    before.on_trial_result("t1", {"val_total": 5.0, "epoch": 1.0, "training_iteration": 1})
    before.save(str(tmp_path / "searcher.pkl"))  # the driver dies here
    after = searcher()
    after.restore(str(tmp_path / "searcher.pkl"))
    # the restarted trial continues at epoch 2 from its checkpoint, but Tune counts its iterations from 1 again
    after.on_trial_result("t1", {"val_total": 4.0, "epoch": 2.0, "training_iteration": 1})
    after.on_trial_complete("t1", result={"objective": 0.7, "val_total": 4.0})
    trials = optuna.load_study(study_name=run, storage=storage).trials
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE and trials[0].value == pytest.approx(0.7)
    assert trials[0].params == config["overrides"] and trials[0].intermediate_values == {1: 5.0, 2: 4.0}


def test_on_the_rung_signal_a_pruned_and_a_completed_trial_are_both_in_auroc_units(tmp_path):
    """ASHA and Optuna read rung_probe_auroc (NaN between rungs); the completed trial's value is its probe objective."""
    run, record = "run-units", StopRecord(tmp_path / "stopped.txt")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = PruningOptunaSearch(
        record, "rung_probe_auroc", space=define_by_run({"model.loss.w_mix": ParamSpec("float", 0.1, 2.0)}),
        metric="objective", mode="max", study_name=run, storage=optuna.storages.RDBStorage(storage),
    )  # fmt: skip
    asha = StopRecordingASHA(record, time_attr="epoch", metric="rung_probe_auroc", mode="max", max_t=4,
                             grace_period=2, reduction_factor=2)  # fmt: skip
    good, bad = _Trial("good"), _Trial("bad")
    for trial in (good, bad):
        searcher.suggest(trial.trial_id)
        asha.on_trial_add(None, trial)
    between = {"epoch": 1.0, "rung_probe_auroc": math.nan, "training_iteration": 1}  # not a rung: no signal
    for trial in (good, bad):
        assert asha.on_trial_result(None, trial, between) == TrialScheduler.CONTINUE
        searcher.on_trial_result(trial.trial_id, between)
    assert asha.on_trial_result(None, good, {"epoch": 2.0, "rung_probe_auroc": 0.71}) == TrialScheduler.CONTINUE
    searcher.on_trial_result("good", {"epoch": 2.0, "rung_probe_auroc": 0.71})
    stop = {"epoch": 2.0, "rung_probe_auroc": 0.58, "training_iteration": 2}
    assert asha.on_trial_result(None, bad, stop) == TrialScheduler.STOP  # a lower AUROC at the rung
    searcher.on_trial_complete("bad", result=stop)
    searcher.on_trial_result("good", {"epoch": 3.0, "rung_probe_auroc": 0.74})
    searcher.on_trial_complete("good", result={"objective": 0.69, "rung_probe_auroc": 0.74})
    by_state = {t.state: t for t in optuna.load_study(study_name=run, storage=storage).trials}
    pruned, complete = by_state[TrialState.PRUNED], by_state[TrialState.COMPLETE]
    assert pruned.intermediate_values == {2: 0.58} and pruned.value == 0.58  # an AUROC, not a loss
    assert complete.intermediate_values == {2: 0.71, 3: 0.74} and complete.value == pytest.approx(0.69)


# Optuna TPE + ASHA on the rung probe signal, through the CLI: two 2-epoch trials, one at a time. TPE seed 42 draws
# lr 1e-4 first, then 1e-2; at 1e-2 the ECG embedding collapses within 12 steps (RankMe 1.0, measured: rung-1 AUROC
# 0.35-0.57 over seeds 42-44 against 0.73-0.79 at 1e-4), so ASHA stops the second trial at rung 1: a forced prune.
# Here: rung-1 AUROC 0.347 (pruned) against 0.734; the completed trial's probe objective 0.866.
RUNG_SPACE = """\
search: optuna
optuna: {optim.lr: {type: categorical, choices: [0.01, 0.0001]}}
num_samples: 2
seeds: [42]
metric: rung_probe_auroc
mode: max
objective: probe
base: {model.ecg.num_samples: 1000, optim.batch_size: 16, optim.epochs: 2, optim.t0: 10000, max_steps_per_epoch: 12,
       signals.train_records: 64, signals.val_records: 32}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
trial: {workers: 1, cpus_per_worker: 0.5, driver_cpus: 0.01, in_driver: true}  # a pruned trial must give its CPUs back
probes: {datasets: [ptbxl], tasks: [ptbxl_super], fractions: [1.0], seeds: [0], epochs: 5, zero_shot: false,
         random_floor: false}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_optuna_asha_sweep_on_the_rung_probe_signal_keeps_one_unit(short_caches, tmp_path):
    """Pruned trials reach Optuna as PRUNED with AUROC intermediate values, completed ones with the probe objective."""
    from helpers import run_ablate

    (tmp_path / "space.yaml").write_text(RUNG_SPACE)
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    run = run_ablate(["--space", "space.yaml", "--out", "run", "--concurrency", "1", "--caches", *caches], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    _check_units(tmp_path / "run")


def _check_units(run_dir) -> None:
    """The collapsed trial ends PRUNED on its rung-1 AUROC; the healthy one COMPLETE on its probe objective."""
    import pandas as pd

    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_lr = {trial.params["optim.lr"]: trial for trial in study.trials}
    assert sorted(by_lr) == [1e-4, 1e-2], by_lr
    pruned, complete = by_lr[1e-2], by_lr[1e-4]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    objective = dict(zip(trials["param/optim.lr"], trials["objective"], strict=True))
    assert pruned.state == TrialState.PRUNED and set(pruned.intermediate_values) == {1}, pruned
    assert complete.state == TrialState.COMPLETE and set(complete.intermediate_values) == {1, 2}, complete
    assert pruned.value == pruned.intermediate_values[1] < complete.intermediate_values[1]  # AUROCs at rung 1
    assert all(0.0 <= v <= 1.0 for t in (pruned, complete) for v in t.intermediate_values.values())
    assert complete.value == pytest.approx(objective[1e-4]) and 0.5 < complete.value <= 1.0  # the probe objective
    assert math.isnan(objective[1e-2])  # a pruned trial is never probed

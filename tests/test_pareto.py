"""Multi-objective Optuna (quality against cost): the study, its Pareto front, and the report's section."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from test_analysis import write_run_dir

from analysis.pareto import pareto_front
from analysis.report import build_report
from deri_sweep.common.strict_loader import ConfigError, from_dict
from deri_sweep.orchestration.searchers import PruningOptunaSearch, StopRecord
from deri_sweep.orchestration.spaces import ParamSpec, SearchSpace, define_by_run

OBJECTIVES = ["probe_val_auroc:max", "gpu_hours:min"]


def test_the_front_keeps_exactly_the_undominated_trials():
    trials = pd.DataFrame({
        "trial_id": list("abcdef"), "state": ["COMPLETE"] * 5 + ["PRUNED"],
        "objective": [0.80, 0.85, 0.85, 0.70, 0.90, 0.99], "hours": [1.0, 2.0, 3.0, 0.5, 5.0, 0.1],
    })  # fmt: skip
    front = pareto_front(trials, OBJECTIVES).set_index("trial_id")
    # c is dominated by b (same AUROC, more hours); f was pruned: not a finished trial
    assert front["dominated"].to_dict() == {"a": False, "b": False, "c": True, "d": False, "e": False}
    assert list(front.index[:4]) == ["e", "b", "a", "d"]  # the front first, best AUROC first
    # the other direction on hours: now the most expensive trials win
    flipped = pareto_front(trials, ["probe_val_auroc:max", "gpu_hours:max"]).set_index("trial_id")
    assert flipped["dominated"].to_dict() == {"a": True, "b": True, "c": True, "d": True, "e": False}


def test_a_two_direction_study_gets_both_values_and_the_same_front(tmp_path):
    """The sweep's Optuna searcher with two objectives, driven as Tune drives it, on a real SQLite study."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = PruningOptunaSearch(
        StopRecord(tmp_path / "stopped_trials.txt"), "val_total", pretrain_seed=42,
        space=define_by_run({"model.interaction.depth": ParamSpec(type="int", low=0, high=4),
                             "optim.lr": ParamSpec(type="float", low=1e-4, high=1e-2, log=True)}),
        metric=["objective", "hours"], mode=["max", "min"], sampler=optuna.samplers.NSGAIISampler(seed=0),
        study_name="multi", storage=storage,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        assert config["variant"] == "optuna" and set(config["overrides"]) <= {"model.interaction.depth", "optim.lr"}
        searcher.on_trial_result(f"t{i}", {"val_total": 3.0, "epoch": 1.0})  # no intermediate values: ignored
        if i == 5:  # stopped by ASHA: reaches Optuna as PRUNED, without values
            StopRecord(tmp_path / "stopped_trials.txt").add("t5")
            searcher.on_trial_complete("t5", {"val_total": 3.0, "epoch": 1.0})
            rows.append({"trial_id": "t5", "state": "PRUNED", "objective": np.nan, "hours": 0.1})
            continue
        quality, hours = float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.5, 3))
        searcher.on_trial_complete(f"t{i}", {"objective": quality, "hours": hours, "probes_done": 1.0})
        rows.append({"trial_id": f"t{i}", "state": "COMPLETE", "objective": quality, "hours": hours})
    study = optuna.load_study(study_name="multi", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 5 + ["PRUNED"] and all(len(t.values) == 2 for t in study.trials[:5])
    front = pareto_front(pd.DataFrame(rows), OBJECTIVES)
    ours = {int(t[1:]) for t in front.loc[~front["dominated"], "trial_id"]}
    assert ours == {t.number for t in study.best_trials}  # the report's front is Optuna's


def test_a_multi_objective_space_is_checked_at_load():
    good = {
        "search": "optuna", "objective": "probe", "objectives": OBJECTIVES, "sampler": "nsga2",
        "optuna": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }  # fmt: skip
    space = from_dict(SearchSpace, good)
    assert space.objective_directions() == [("probe_val_auroc", "max"), ("gpu_hours", "min")]
    for change, message in (
        ({"objectives": ["probe_val_auroc:up", "gpu_hours:min"]}, "must be NAME:max or NAME:min"),
        ({"objectives": ["val_auroc:max", "gpu_hours:min"]}, "must be NAME:max or NAME:min"),
        ({"objectives": ["gpu_hours:min"]}, "two or more distinct objectives"),
        ({"objective": "pretrain"}, "probe_val_auroc needs objective: probe"),
        ({"search": "grid", "optuna": {}}, "needs search: optuna"),
        ({"sampler": "cmaes"}, "sampler"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_dict(SearchSpace, {**good, **change})


def test_the_report_draws_the_front_with_dominated_trials_grey(tmp_path):
    root = tmp_path / "run"
    write_run_dir(root)
    trials = pd.read_parquet(root / "trials.parquet")
    trials["objective"] = np.linspace(0.70, 0.90, len(trials))
    trials["hours"] = np.linspace(1.0, 3.0, len(trials))[::-1]  # better AND cheaper towards the end
    trials.to_parquet(root / "trials.parquet", index=False)
    sweep = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**sweep, "objectives": OBJECTIVES}))
    html = build_report(root)["report"].read_text()
    assert '<section id="pareto">' in html and 'href="#pareto"' in html
    front = pareto_front(trials, OBJECTIVES)
    best = front.iloc[0]
    assert not best["dominated"] and best["trial_id"] in html
    assert f"1 of {len(front)} completed trials are on the Pareto front" in html  # one trial dominates all others
    assert "#b0b0b0" in html and "dominated" in html
    (root / "sweep.json").write_text(json.dumps(sweep))  # a run without objectives: no such section
    assert '<section id="pareto">' not in build_report(root, tmp_path / "plain")["report"].read_text()


def test_ablate_plans_a_multi_objective_space(tmp_path):
    from helpers import run_ablate

    space = tmp_path / "multi.yaml"
    space.write_text(
        "search: optuna\nobjective: probe\nobjectives: [probe_val_auroc:max, gpu_hours:min]\nsampler: nsga2\n"
        "optuna:\n  model.loss.w_cma: {type: float, low: 0.5, high: 2.0}\nnum_samples: 4\n"
        "scheduler: {type: none}\n"  # ASHA on val_total would be refused: the searched w_cma changes it
    )
    plan = run_ablate(["--space", str(space), "--dry-run"], tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    space.write_text(space.read_text().replace("gpu_hours:min", "gpu_hours:less"))
    bad = run_ablate(["--space", str(space), "--dry-run"], tmp_path)
    assert bad.returncode == 2 and "multi.yaml" in bad.stderr and "gpu_hours:less" in bad.stderr

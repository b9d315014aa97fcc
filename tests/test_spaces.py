"""Search-space YAML: every shipped space loads; bad spaces fail with a message naming the file and key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from deri_sweep.config import ConfigError
from deri_sweep.orchestration.spaces import SPACES_DIR, define_by_run, load_space
from deri_sweep.orchestration.sweep import trial_plan

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


def test_the_required_spaces_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"smoke", "interaction_depth", "decoders", "loss_weights", "paper_ablation", "tpe_joint"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_says_how_to_launch(path):
    space = load_space(path)
    assert (
        path.read_text().startswith("#")
        and "deri_sweep.ablate" in path.read_text().split("\n")[1:3][0] + path.read_text()
    )
    if space.search == "grid":
        plan = trial_plan(space)
        assert len(plan) == len(space.grid_points()) * len(space.seeds)
        labels = {p["variant"] for p in plan}
        assert not space.baseline or space.baseline in labels
    else:
        assert space.num_samples > 0


def test_paper_ablation_rows():
    space = load_space("paper_ablation")
    assert [label for label, _ in space.grid_points()] == [
        "full", "no_decode_t", "no_decode_e", "no_rme", "no_fusion", "merl_like", "with_caption",
    ]  # fmt: skip
    assert space.seeds == [42, 43, 44]
    cfg = space.train_config(dict(space.grid_points()[5][1]), 42)
    assert not cfg.model.interaction.decode_t and not cfg.model.fusion and cfg.model.loss.w_uma == 1.0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search: grid\ngrid: {model.interaction.depth: []}\n", "axis 'model.interaction.depth' has no values"),
        ("search: grid\nsedes: [1]\n", r"unknown key\(s\) \['sedes'\]"),
        ("search: grid\nseeds: one\n", "seeds: expected a list"),
        ("search: grid\ngrid: {model.interaction.depht: [1, 2]}\n", "unknown key model.interaction.depht"),
        ("search: grid\ngrid: {model.interaction.depth: [two]}\n", "expected an integer"),
        (
            "search: grid\nvariants: {bad: {model.interaction.decode_t: false, model.loss.w_dec_t: 1.0}}\n",
            "configuration 'bad'",
        ),
        ("search: grid\nvariants: {a: {}}\nbaseline: b\n", "baseline: 'b' is not one of the configurations"),
        ("search: optuna\n", "needs at least one parameter"),
        ("search: optuna\noptuna: {model.loss.w_mix: {type: float, low: 2, high: 1}}\n", "low <= high"),
        ("search: grid\nscheduler: {type: hyperband}\n", "not one of"),
        ("[1, 2]\n", "expected a mapping"),
    ],
)
def test_invalid_spaces_name_file_and_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_missing_space_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped spaces: .*smoke"):
        load_space("no_such_space")


def test_conditional_optuna_parameters_follow_their_condition():
    space = load_space("tpe_joint")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sample = define_by_run(space.optuna)
    seen_on = seen_off = 0
    for _ in range(40):
        trial = study.ask()
        sample(trial)
        params = trial.params
        if params["model.interaction.decode_t"]:
            assert "model.loss.w_dec_t" in params
            seen_on += 1
        else:
            assert "model.loss.w_dec_t" not in params
            seen_off += 1
        space.train_config(params, 42)  # every sampled combination is a valid config
        study.tell(trial, 0.0)
    assert seen_on and seen_off


def test_ablate_set_values_are_read_as_yaml_and_a_bad_one_is_named(tmp_path):
    import subprocess
    import sys

    from deri_sweep.ablate import _set_overrides

    assert _set_overrides(["optim.lr=1e-3", "optim.epochs=5", "model.interaction.decode_t=false"]) == {
        "optim.lr": "1e-3", "optim.epochs": 5, "model.interaction.decode_t": False,
    }  # fmt: skip
    space = load_space("smoke")
    space.base.update(_set_overrides(["optim.lr=1e-3", "optim.epochs=5"]))
    space.validate()
    assert space.train_config({}, 42).optim.lr == 0.001 and space.train_config({}, 42).optim.epochs == 5
    run = subprocess.run(
        [sys.executable, "-m", "deri_sweep.ablate", "--set", "optim.epochs=abc", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().endswith("--set optim.epochs=abc: optim.epochs: expected an integer, got 'abc'")

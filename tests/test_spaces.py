"""Search-space YAML: every shipped space loads; bad spaces fail with a message naming the file and key."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import optuna
import pytest

from deri_sweep.ablate import parse_args
from deri_sweep.common.strict_loader import ConfigError
from deri_sweep.orchestration.spaces import SPACES_DIR, define_by_run, load_space

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


def test_the_required_spaces_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"smoke", "interaction_depth", "decoders", "loss_weights", "paper_ablation", "tpe_joint"} <= names


def _launch_commands(path) -> list[list[str]]:
    """The ``python -m deri_sweep.ablate`` commands of a space's leading comment (continuations joined)."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header).replace("\\ ", " ")
    commands = []
    for part in text.split("python -m deri_sweep.ablate")[1:]:
        words = []
        for word in shlex.split(part.split("(")[0]):
            if word in ("or:", "#") or word.endswith(":"):
                break
            words.append(word)
        commands.append(words)
    return commands


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_says_how_to_launch(path):
    space = load_space(path)
    commands = _launch_commands(path)
    assert commands, f"{path.name}: no `python -m deri_sweep.ablate` command in its leading comment"
    for words in commands:
        args = parse_args(words)  # every flag of the comment is one ablate takes (SystemExit otherwise)
        assert path.stem == "smoke" or args.space == f"search_spaces/{path.name}", (path.name, words)
        named = SPACES_DIR.parent / args.space if "/" in args.space else args.space  # run from the repo root
        assert load_space(named).name == space.name  # the command names THIS space
    if space.search == "grid":
        plan = space.trials()
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
        ("search: grid\nmetric: val_totl\n", "metric: 'val_totl' is not reported by pretraining"),
        ("search: grid\nseeds: [1]\nseeds: [2]\n", r"duplicate key 'seeds' \(line 3\)"),
        ("search: grid\nprobes: {fractions: [0.0, 5.0]}\n", r"probes.fractions=\[0.0, 5.0\]: each must be in \(0, 1\]"),
        ("search: grid\ntrial: {workers: 0}\n", "trial.workers=0 must be >= 1"),
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

    from deri_sweep.ablate import _apply_set

    space = _apply_set(load_space("smoke"), ["optim.lr=1e-3", "optim.epochs=5", "model.interaction.decode_t=false"])
    assert space.base["optim.lr"] == "1e-3" and space.base["optim.epochs"] == 5  # read as YAML
    space.validate()
    cfg = space.train_config({}, 42)
    assert cfg.optim.lr == 0.001 and cfg.optim.epochs == 5 and not cfg.model.interaction.decode_t
    # space sections are set on the space, validated, and named when wrong
    space = _apply_set(load_space("smoke"), ["trial.workers=3", "probes.tasks=[ptbxl_super]"])
    assert space.trial.workers == 3 and space.probes.tasks == ["ptbxl_super"] and "trial.workers" not in space.base
    # the default trains its one CPU worker in the trial's driver; more workers get a TorchTrainer worker group again
    assert load_space("smoke").trial.trains_in_driver and not space.trial.trains_in_driver
    bad_sets = {"trial.workers=0": "trial.workers=0 must be >= 1", "probes.fractions=[5.0]": r"in \(0, 1\]",
                "trial.wrkers=1": "unknown key", "optim.epochs=abc": "expected an integer"}  # fmt: skip
    for bad, message in bad_sets.items():
        with pytest.raises(ConfigError, match=message) as info:
            _apply_set(load_space("smoke"), [bad])
        assert f"--set {bad}" in str(info.value)
    run = subprocess.run(
        [sys.executable, "-m", "deri_sweep.ablate", "--set", "optim.epochs=abc", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().endswith("--set optim.epochs=abc: optim.epochs: expected an integer, got 'abc'")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_dry_run_resolves_every_trial_with_a_probe_feature_its_model_has(path, capsys, tmp_path):
    from deri_sweep.ablate import main

    assert main(["--space", str(path), "--dry-run", "--json", "--data-dir", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    space = load_space(path)
    expected = len(space.trials()) if space.search == "grid" else len(space.seeds)
    assert len(plan["trials"]) == expected and plan["probe_plan"]["feature"] == space.probes.feature
    for trial in plan["trials"]:
        cfg = trial["config"]["model"]
        # mix reads m_e only where fusion and decode_t exist; every other variant is probed on z_e, never refused
        has_m_e = cfg["fusion"] and cfg["interaction"]["decode_t"]
        assert trial["probe_feature"] == ("m_e" if has_m_e else "z_e"), trial["variant"]
        assert trial["text_tower"] == cfg["text"]["name"] and trial["seed"] in space.seeds
        assert trial["workers"] == space.trial.workers and trial["gpus_per_worker"] == space.trial.gpus_per_worker
    towers = {t["text_tower"] for t in plan["trials"]}
    # the cluster spaces train on the paper's tower; only the laptop default uses the embedded MiniLM
    assert towers == ({"embedded"} if space.trial.gpus_per_worker == 0 else {"ncbi/MedCPT-Query-Encoder"})
    # and the reference ResNet18-1D: only the laptop default narrows it (half width, issue 29)
    widths = {t["config"]["model"]["ecg"]["width"] for t in plan["trials"]}
    assert widths == ({32} if space.trial.gpus_per_worker == 0 else {64}), path.stem
    assert plan["warnings"] == []


def test_dry_run_names_the_variant_and_key_of_a_trial_that_cannot_run(tmp_path, capsys):
    from deri_sweep.ablate import main

    space = _write(tmp_path, "search: grid\nvariants: {full: {}, odd: {model.loss.w_cap: 1.0}}\nbaseline: full\n")
    assert main(["--space", str(space), "--dry-run", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "configuration 'odd'" in err and "loss.w_cap=1.0 needs a report decoder" in err
    # a prepared cache whose signal length differs from the model's is named before any trial starts
    cache = tmp_path / "mimic"
    cache.mkdir()
    (cache / "cache.json").write_text(json.dumps({"signal": {"length": 1000}}))
    assert main(["--space", "smoke", "--dry-run", "--set", "model.ecg.num_samples=5000",
                 "--caches", f"mimic={cache}", f"ptbxl={tmp_path / 'ptbxl'}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "variant 'full'" in err and "model.ecg.num_samples=5000" in err and "1000-sample signals" in err


def test_paper_ablation_resolves_to_medcpt_and_check_towers_says_how_to_fetch_it(capsys, tmp_path):
    from deri_sweep.ablate import main

    assert main(["--space", "paper_ablation", "--dry-run", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("text ncbi/MedCPT-Query-Encoder") == 21 and "decoder distilgpt2" in out
    assert "no_fusion" in out and "probe mix->z_e" in out
    # no hub here: the tower check fails, naming each model and how to pre-fetch it
    assert main(["--space", "paper_ablation", "--check-towers", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "text tower 'ncbi/MedCPT-Query-Encoder'" in err and "hf download ncbi/MedCPT-Query-Encoder" in err
    assert "report decoder 'distilgpt2'" in err and "report_decoder.name" in err
    # the swap for a machine without hub access: every tower ships with the package, and loads
    assert main(["--space", "paper_ablation", "--check-towers", "--local-towers", "--json",
                 "--data-dir", str(tmp_path)]) == 0  # fmt: skip
    plan = json.loads(capsys.readouterr().out)
    assert {t["text_tower"] for t in plan["trials"]} == {"embedded"}
    assert {t["report_decoder"] for t in plan["trials"]} == {"none", "tiny"}
    assert plan["probe_plan"]["report_decoder"] == "tiny"


def test_gpu_trials_on_the_laptop_tower_are_flagged(capsys, tmp_path):
    from deri_sweep.ablate import main

    args = ["--space", "paper_ablation", "--dry-run", "--data-dir", str(tmp_path)]
    assert main([*args, "--json", "--set", "model.text.name=embedded"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert len(warnings) == 1 and "laptop text tower 'embedded'" in warnings[0] and "MedCPT" in warnings[0]
    assert main([*args, "--set", "model.text.name=embedded"]) == 0
    assert "WARNING: GPU trials use the laptop text tower" in capsys.readouterr().out


ASHA_ON = "scheduler: {type: asha, grace_period: 1, reduction_factor: 2}\n"
WEIGHTED = "search: grid\nvariants: {full: {}, heavy: {model.loss.w_mix: 4.0}}\nbaseline: full\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a weighted total while a loss weight varies: the lighter trial survives the rungs, whatever it learned
        (WEIGHTED + ASHA_ON, r"metric: val_total is what ASHA compares.*w_mix vary.*metric: rung_probe_auroc"),
        (WEIGHTED + "metric: val_mix\n" + ASHA_ON, "metric: val_mix is what ASHA compares"),
        (
            "search: optuna\noptuna: {model.loss.w_uma: {type: float, low: 0.1, high: 2}}\n" + ASHA_ON,
            r"val_total is what ASHA compares.*w_uma",
        ),
        # ASHA in a paired-seed grid stops seeds before their probes: the table loses pairs
        (
            "search: grid\ngrid: {model.interaction.depth: [0, 2]}\nseeds: [1, 2]\n" + ASHA_ON,
            r"scheduler: ASHA in a grid with 2 seeds per configuration.*search: decide.*search: optuna",
        ),
        ("search: grid\nmetric: rankme\nmode: min\n", "rankme is larger-is-better; set mode: max"),
        ("search: grid\nmetric: rung_probe_auroc\nmode: max\nprobes: {datasets: []}\n", "list one in probes.datasets"),
    ],
)
def test_asha_contradictions_are_refused_naming_the_key_and_the_fix(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        WEIGHTED + "metric: rung_probe_auroc\nmode: max\n" + ASHA_ON,  # invariant to the weights
        WEIGHTED + "metric: val_cma\n" + ASHA_ON,  # an unweighted term whose own weight is fixed
        WEIGHTED + "scheduler: {type: none}\n",  # no ASHA: every trial finishes and is probed
        "search: grid\ngrid: {model.interaction.depth: [0, 2]}\nseeds: [1]\n" + ASHA_ON,  # one seed per configuration
    ],
)
def test_what_the_refusals_let_through(tmp_path, text):
    load_space(_write(tmp_path, text))


def test_tpe_joint_prunes_on_the_probe_signal_at_its_rungs():
    space = load_space("tpe_joint")
    assert (space.metric, space.mode, space.scheduler.type) == ("rung_probe_auroc", "max", "asha")
    cfg = space.train_config({}, 42)
    assert cfg.optim.epochs == 50 and space.scheduler.rungs(50) == [10, 30]  # grace 10, factor 3, max_t 51
    filled = space.rung_signals(cfg, {"ptbxl": "/data/ptbxl", "cpsc2018": "/data/cpsc"})
    assert filled.signals.cache == "/data/ptbxl" and filled.signals.rungs == [10, 30] and filled.signals.due(30, 50)
    assert not filled.signals.due(11, 50) and filled.signals.due(50, 50)  # and the last epoch
    with pytest.raises(ConfigError, match="--caches ptbxl=DIR"):
        space.rung_signals(cfg, {})
    smoke = load_space("smoke")  # a space that does not read the signals does not pay for them
    assert not smoke.rung_signals(smoke.train_config({}, 42), {"ptbxl": "/x"}).signals.enabled
    depth = load_space("interaction_depth")
    assert depth.scheduler.type == "none" and len(depth.seeds) == 3  # every paired seed finishes

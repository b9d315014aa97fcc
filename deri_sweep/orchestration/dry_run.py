"""``ablate --dry-run``: every trial of a space resolved and checked, without Ray and without models.

:func:`resolve_plan` turns a space into one record per trial (variant, seed, the
fully resolved :class:`TrainConfig`, the probed representation, towers and
resources) and fails, naming the variant and the key, on a trial that could not
run. :func:`check_towers` additionally loads each named text tower and report
decoder offline (``--check-towers``), which is the only part that touches model
files. Nothing here imports Ray or Optuna.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deri_sweep.common.strict_loader import ConfigError, to_dict
from deri_sweep.orchestration.spaces import SearchSpace
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

#: text towers one may use on a laptop; anything else on a CPU-only trial is worth a note
LOCAL_TEXT_TOWERS = ("embedded",)


@dataclass(frozen=True)
class TrialRecord:
    """One resolved trial.

    Attributes:
        variant: the configuration's label (``optuna`` for a sampled space's base).
        seed: pretraining seed.
        config: the resolved config.
        probe_feature: the representation the probes read (``m_e``, ``z_e``, ``resnet``).
    """

    variant: str
    seed: int
    config: TrainConfig
    probe_feature: str

    @property
    def joint_decoder(self) -> str:
        """The report decoder trained jointly (``none`` unless ``loss.w_cap`` > 0)."""
        model = self.config.model
        return model.report_decoder.name if model.loss.w_cap > 0 else "none"

    def as_dict(self, space: SearchSpace) -> dict[str, Any]:
        """JSON-ready record (the ``--dry-run --json`` contract)."""
        model = self.config.model
        return {
            "variant": self.variant,
            "seed": self.seed,
            "text_tower": model.text.name,
            "report_decoder": self.joint_decoder,
            "probe_feature": self.probe_feature,
            "workers": space.trial.workers,
            "gpus_per_worker": space.trial.gpus_per_worker,
            "cpus_per_worker": space.trial.cpus_per_worker,
            "config": to_dict(self.config),
        }


def _check_probe_plan(space: SearchSpace, record: TrialRecord, caches: dict[str, Path]) -> None:
    plan, cfg = space.probes, record.config
    where = f"variant {record.variant!r}"
    if plan.report_generation and plan.report_decoder == "none":
        raise ConfigError(f"{where}: probes.report_generation is on but probes.report_decoder=none; name a decoder")
    num_samples = cfg.model.ecg.num_samples
    for name in ("mimic", *plan.datasets):
        info_file = caches[name] / "cache.json" if name in caches else None
        if info_file is None or not info_file.is_file():
            continue  # built later (the embedded default) or checked when the sweep opens it
        length = int(json.loads(info_file.read_text()).get("signal", {}).get("length", num_samples))
        if length != num_samples:
            raise ConfigError(
                f"{where}: model.ecg.num_samples={num_samples} but the {name} cache {info_file.parent} holds "
                f"{length}-sample signals; set model.ecg.num_samples={length} or prepare the cache with --length"
            )


def resolve_plan(space: SearchSpace, caches: dict[str, Path] | None = None) -> list[TrialRecord]:
    """Every trial of ``space``, resolved and checked.

    A grid space gives configurations x seeds; an Optuna space gives its base config
    once per seed (its sampled parameters are checked at their bounds by
    :meth:`SearchSpace.validate`).

    Args:
        space: a validated space.
        caches: dataset name -> cache directory; caches that exist are checked against
            the model's signal length.

    Returns:
        One record per trial.

    Raises:
        ConfigError: naming the variant and the key of a trial that could not run.
    """
    caches = caches or {}
    unknown = [d for d in space.probes.datasets if caches and d not in caches]
    if unknown:
        raise ConfigError(
            f"probes.datasets: {unknown} have no cache; this run has {sorted(caches)} "
            "(name a prepared cache with --caches NAME=DIR, or fix the spelling)"
        )
    if space.search == "grid":
        planned = space.trials()
    elif space.search == "decide":  # the first round; later seeds go only where a comparison is undecided
        first = space.decide_seeds()[: space.decide.min_seeds]
        planned = [{"variant": v, "overrides": o, "seed": s} for s in first for v, o in space.grid_points()]
    else:
        planned = [{"variant": "optuna", "overrides": {}, "seed": seed} for seed in space.seeds]
    records = []
    for trial in planned:
        try:
            cfg = space.train_config(trial["overrides"], trial["seed"])
            feature = cfg.model.representation(space.probes.feature)
        except ConfigError as exc:
            raise ConfigError(f"variant {trial['variant']!r}: {exc}") from exc
        record = TrialRecord(trial["variant"], int(trial["seed"]), cfg, feature)
        _check_probe_plan(space, record, caches)
        records.append(record)
    return records


def towers_summary(space: SearchSpace, records: list[TrialRecord], *, local: bool) -> dict[str, Any]:
    """What ``sweep.json`` says about the towers the trials use (``local``: ``--local-towers`` swapped them)."""
    return {
        "text": sorted({r.config.model.text.name for r in records}),
        "joint_report_decoder": sorted({r.joint_decoder for r in records} - {"none"}),
        "probe_report_decoder": space.probes.report_decoder if space.probes.report_generation else "none",
        "local_towers": local,
    }


def tower_warnings(space: SearchSpace, records: list[TrialRecord]) -> list[str]:
    """Loud notes about towers: GPU trials on the laptop tower, a swap to local towers."""
    notes = []
    local = sorted({r.variant for r in records if r.config.model.text.name in LOCAL_TEXT_TOWERS})
    if space.trial.gpus_per_worker > 0 and local:
        notes.append(
            f"GPU trials use the laptop text tower 'embedded' (MiniLM, 384-d), not the paper's MedCPT, in "
            f"{len(local)} configuration(s) ({', '.join(local[:5])}); set model.text.name=ncbi/MedCPT-Query-Encoder"
        )
    return notes


@contextmanager
def _offline() -> Iterator[None]:
    """Hub offline mode for the block: the environment, and the flag huggingface_hub read at its import."""
    from huggingface_hub import constants

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    flag, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_towers(space: SearchSpace, records: list[TrialRecord]) -> list[str]:
    """Load every named text tower and GPT-2 decoder offline, once each.

    Returns:
        One error line per tower that cannot load (with how to pre-fetch it); empty when all load.
    """
    from deri_sweep.model.config import ReportDecoderConfig
    from deri_sweep.model.report_decoder import ReportDecoder
    from deri_sweep.model.text_tower import TextTower, TextTowerError

    texts = {r.config.model.text.name: r.config.model.text for r in records}
    decoders = {r.joint_decoder for r in records}
    if space.probes.report_generation:
        decoders.add(space.probes.report_decoder)
    errors = []
    with _offline():
        for name, cfg in texts.items():
            try:
                TextTower(cfg)
                log.info("text tower %s loads offline", name)
            except (TextTowerError, OSError, ValueError) as exc:
                errors.append(f"text tower {name!r}: {exc}")
        for name in sorted(decoders - {"none", "tiny"}):
            try:
                ReportDecoder(ReportDecoderConfig(name=name))
                log.info("report decoder %s loads offline", name)
            except (TextTowerError, OSError, ValueError) as exc:
                errors.append(f"report decoder {name!r}: {exc}")
    return errors


def describe(space: SearchSpace, records: list[TrialRecord]) -> str:
    """The human-readable plan: one line per trial, then the probe plan."""
    plan = space.probes
    lines = [f"space {space.name}: {space.search}, {len(records)} trial(s), objective {space.objective}"]
    for r in records:
        m = r.config.model
        lines.append(
            f"  {r.variant:<24s} seed {r.seed:<4d} text {m.text.name}  decoder {r.joint_decoder}  probe "
            f"{plan.feature}->{r.probe_feature}  {space.trial.workers} worker(s) x "
            f"{space.trial.gpus_per_worker:g} GPU / {space.trial.cpus_per_worker:g} CPU  "
            f"signal {m.ecg.num_samples}  {r.config.optim.epochs} epoch(s) x batch {r.config.optim.batch_size}"
        )
    lines.append(
        f"probes: {', '.join(plan.datasets) or 'none'}; fractions {plan.fractions}; seeds {plan.seeds}; "
        f"{plan.epochs} epochs; zero-shot {plan.zero_shot}; report generation "
        f"{plan.report_decoder if plan.report_generation else 'off'}; random-init floor {plan.random_floor}"
    )
    if space.search == "decide":
        d = space.decide
        most = len(space.grid_points()) * d.max_seeds
        lines.append(
            f"decide: the trials above are the first round ({d.min_seeds} seeds); undecided variants get more seeds, "
            f"up to {d.max_seeds} ({most} trials at most), margin {d.margin:g}, alpha {d.alpha:g}"
        )
    lines += [f"WARNING: {note}" for note in tower_warnings(space, records)]
    return "\n".join(lines)


def plan_json(space: SearchSpace, records: list[TrialRecord]) -> dict[str, Any]:
    """The ``--dry-run --json`` document."""
    return {
        "space": space.name,
        "search": space.search,
        "trials": [r.as_dict(space) for r in records],
        "probe_plan": to_dict(space.probes),
        "warnings": tower_warnings(space, records),
    }

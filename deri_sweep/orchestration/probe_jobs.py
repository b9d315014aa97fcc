"""Downstream evaluation of a checkpoint as dependent Ray tasks.

:func:`probe_suite` submits, for one checkpoint, one feature-extraction task
per (dataset cache, encoder) and, depending on it through its ObjectRef, one
linear-probe task per (encoder, task) that trains the heads of every planned
(fraction, seed) together (one batched run, :func:`~deri_sweep.evaluate.probe_tasks.run_linear_probes`:
each head gets exactly the updates it would get alone), plus zero-shot and report
generation when planned. Ray orders them; nothing here blocks until
:func:`collect` is called (from a trial's own driver, never from Tune's event
loop). A task that fails is retried, then recorded as failed, one row per head
it stood for: never lost.

Every task asks for :class:`ProbeResources` (``probes.cpus`` whole CPUs and a ``probes.gpus``
fraction of a GPU): feature extraction, zero-shot and report generation compute on the task's
GPU when it has one (the linear heads stay on the CPU), and each task records its node in
``RUN_DIR/placement/probe-*.json`` (its start, end and GPU share: the probing GPU-hours).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from deri_sweep.orchestration.resources import probe_request
from deri_sweep.orchestration.runtime import record_placement, task_device
from deri_sweep.orchestration.spaces import ProbePlan, SearchSpace

log = logging.getLogger(__name__)

RETRIES = 2


@dataclass(frozen=True)
class ProbeResources:
    """Resource request of one probe task (fractional GPUs share a card on a cluster)."""

    num_cpus: float = 0.25
    num_gpus: float = 0.0

    @classmethod
    def of(cls, space: SearchSpace) -> ProbeResources:
        """A space's probe request (:func:`~deri_sweep.orchestration.resources.probe_request`)."""
        return cls(**probe_request(space))


@dataclass(frozen=True)
class Trace:
    """Where probe tasks record their placement: the run directory (empty: nowhere) and the trial."""

    run_dir: str = ""
    trial: str = ""

    def record(self, what: str, task: str, started: float, gpus: float) -> None:
        """Record the calling task's node, its start and end (now) and its GPU share."""
        record_placement(self.run_dir, "probe", trial=self.trial, eval=what, task=task, started=started, gpus=gpus)


def _extract(
    checkpoint: str, cache_dir: str, feature: str, feature_root: str, floor_seed: int | None,
    trace: Trace = Trace(), gpus: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """Ray task: the checkpoint's features of a cache, or (``floor_seed``) its random-init floor's, on its device."""
    from deri_sweep.evaluate.features import RandomInit, cached_features

    started = time.time()
    source: Any = checkpoint
    if floor_seed is not None:  # the floor needs only the checkpoint's config, never its weights
        source = RandomInit(floor_seed, *_train_config(checkpoint))
    out = cached_features(source, cache_dir, feature, feature_root, device=task_device(), progress=False)
    trace.record("features", Path(cache_dir).name + ("/random_init" if floor_seed is not None else ""), started, gpus)
    return out


def _linear_probe(
    features: np.ndarray, cache_dir: str, label_set: str, fractions: list[float], seeds: list[int], epochs: int,
    trace: Trace = Trace(), gpus: float = 0.0,
) -> pd.DataFrame:  # fmt: skip
    """Ray task: every (fraction, seed) head of one task, trained together on the shared features (on the CPU)."""
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate import ProbeConfig
    from deri_sweep.evaluate.probe_tasks import run_linear_probes, tasks_of_cache

    started = time.time()
    cache = SignalCache.open(cache_dir)
    task = next(t for t in tasks_of_cache(cache) if t.label_set == label_set)
    out = run_linear_probes(features, cache, task, fractions, seeds, ProbeConfig(epochs=epochs))
    trace.record("linear_probe", task.name, started, gpus)
    return out


def _reference_probe(
    checkpoint: str, cache_dir: str, label_set: str, fractions: list[float], seeds: list[int], epochs: int,
    feature: str, trace: Trace = Trace(), gpus: float = 0.0,
) -> pd.DataFrame:  # fmt: skip
    """Ray task: the authors' probe protocol (``probes.protocol: reference``) on the checkpoint's encoder (CPU)."""
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate.pretrained import load_pretrained
    from deri_sweep.evaluate.probe_tasks import tasks_of_cache
    from deri_sweep.evaluate.reference_probe import ReferenceProbeConfig, run_reference_probes

    started = time.time()
    model, _ = load_pretrained(checkpoint)
    config, _ = _train_config(checkpoint)
    cache = SignalCache.open(cache_dir)
    task = next(t for t in tasks_of_cache(cache) if t.label_set == label_set)
    out = run_reference_probes(
        model, cache, task, fractions, seeds, feature, config.data.norm, ReferenceProbeConfig(epochs=epochs)
    )
    trace.record("linear_probe_reference", task.name, started, gpus)
    return out


def _zero_shot(
    features: np.ndarray, checkpoint: str, cache_dir: str, label_set: str, trace: Trace = Trace(), gpus: float = 0.0
) -> pd.DataFrame:
    """Ray task: zero-shot AUROC of one task; the text tower encodes the prompts on the task's device."""
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate.pretrained import load_pretrained
    from deri_sweep.evaluate.probe_tasks import tasks_of_cache
    from deri_sweep.evaluate.zero_shot import zero_shot_task

    started = time.time()
    model, _ = load_pretrained(checkpoint, with_text_tower=True)
    model.to(task_device())
    cache = SignalCache.open(cache_dir)
    task = next(t for t in tasks_of_cache(cache) if t.label_set == label_set)
    out = zero_shot_task(model, features, cache, task)
    trace.record("zero_shot", task.name, started, gpus)
    return out


def _report_generation(
    features: np.ndarray, cache_dir: str, task: str, decoder: str, epochs: int, n_samples: int, samples_path: str,
    trace: Trace = Trace(), gpus: float = 0.0,
) -> pd.DataFrame:  # fmt: skip
    """Ray task: fine-tune the report decoder on frozen features (on the task's device) and score it."""
    import json

    from deri_sweep.common.storage import atomic_write_text
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate.report_generation import ReportGenConfig, run_report_generation
    from deri_sweep.model.config import ReportDecoderConfig

    started = time.time()
    config = ReportGenConfig(
        decoder=ReportDecoderConfig(name=decoder), epochs=epochs, n_samples=n_samples, device=task_device()
    )
    metrics, samples = run_report_generation(features, SignalCache.open(cache_dir), config)
    trace.record("report_generation", task, started, gpus)
    if samples and samples_path:
        Path(samples_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(samples_path), json.dumps(samples, indent=2))
    keep = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "test_ce")
    return pd.DataFrame(
        [{"task": task, "label_set": "", "method": "report_generation", "fraction": math.nan, "probe_seed": math.nan,
          "metric": k, "value": float(metrics[k])} for k in keep if k in metrics]
    )  # fmt: skip


#: ``(fraction, probe_seed)`` of an evaluation that has neither (zero-shot, report generation).
NO_HEAD = ((math.nan, math.nan),)


@dataclass
class Pending:
    """A submitted probe task and what it evaluates (for failure rows).

    ``heads`` lists the ``(fraction, probe_seed)`` results the task stands for: every planned pair
    for a linear-probe task, :data:`NO_HEAD` otherwise. A task that fails becomes one failure row
    per head.
    """

    ref: ray.ObjectRef
    encoder: str
    task: str
    eval: str
    heads: tuple[tuple[float, float], ...] = NO_HEAD
    feature: str = ""


def _train_config(checkpoint: str) -> tuple[Any, int]:
    """``(TrainConfig, text hidden size)`` of a checkpoint, read from its ``meta.json`` alone."""
    from deri_sweep.evaluate.pretrained import read_train_config
    from deri_sweep.train.checkpoint import read_meta

    return read_train_config(checkpoint, read_meta(checkpoint))


def _representation(checkpoint: str, feature: str) -> str:
    """What ``feature`` reads from the checkpoint's model (``m_e``, ``z_e``, ``resnet``)."""
    config, _ = _train_config(checkpoint)
    return config.model.representation(feature)


def probe_suite(
    checkpoint: str | Path,
    plan: ProbePlan,
    caches: dict[str, str | Path],
    feature_root: str | Path,
    *,
    resources: ProbeResources | None = None,
    samples_dir: str | Path | None = None,
    random_floor: bool | None = None,
    floor_seed: int = 0,
    trace: Trace | None = None,
) -> list[Pending]:
    """Submit every probe of ``plan`` for one checkpoint (and the random-init floor).

    Args:
        checkpoint: checkpoint directory (see :mod:`deri_sweep.train.checkpoint`).
        plan: datasets, fractions, seeds, feature and extras.
        caches: dataset name (``ptbxl``, ``cpsc2018``, ``csn``) -> prepared cache.
        feature_root: where extracted features are kept for reuse.
        resources: per-task resource request.
        samples_dir: where generated report samples go (only when ``plan.report_samples`` > 0).
        random_floor: evaluate the random-init floor too (default ``plan.random_floor``).
        floor_seed: weight seed of the floor (the trial's pretraining seed, so that the floor
            pairs with the pretrained encoder seed by seed).
        trace: where each task records its node (default: nowhere).

    Returns:
        Pending tasks; pass them to :func:`collect`.
    """
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate.probe_tasks import tasks_of_cache

    res = resources or ProbeResources()
    where = (trace or Trace(), res.num_gpus)
    # "DEFAULT" scheduling: probes take their own resources, outside the calling trial's placement group
    opts = {
        "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_retries": RETRIES, "retry_exceptions": True,
        "scheduling_strategy": "DEFAULT",
    }  # fmt: skip
    extract = ray.remote(_extract).options(**opts)
    probe = ray.remote(_linear_probe).options(**opts)
    zero_shot = ray.remote(_zero_shot).options(**opts)
    report_gen = ray.remote(_report_generation).options(**opts)
    reference = ray.remote(_reference_probe).options(**opts)
    checkpoint = str(checkpoint)
    encoders: dict[str, int | None] = {"pretrained": None}  # encoder -> the floor's weight seed (None: trained)
    if plan.random_floor if random_floor is None else random_floor:
        encoders["random_init"] = floor_seed
    probed = _representation(checkpoint, plan.feature)
    fractions, seeds = [float(f) for f in plan.fractions], [int(s) for s in plan.seeds]
    heads = tuple((f, float(s)) for f in fractions for s in seeds)  # run_linear_probes' row order
    pending: list[Pending] = []
    if plan.tasks:
        known = {t.name for d in plan.datasets if d in caches for t in tasks_of_cache(SignalCache.open(caches[d]))}
        if not set(plan.tasks) <= known:
            raise ValueError(f"probes.tasks {sorted(set(plan.tasks) - known)} are in none of {plan.datasets}: {known}")
    for dataset in plan.datasets:
        if dataset not in caches:
            raise ValueError(f"probe dataset {dataset!r} has no cache; known: {sorted(caches)}")
        cache_dir = str(caches[dataset])
        cache = SignalCache.open(cache_dir)
        tasks = [t for t in tasks_of_cache(cache) if not plan.tasks or t.name in plan.tasks]
        has_reports = bool((cache.index["report_id"] >= 0).any())
        for encoder, seed_of_floor in encoders.items():
            features = extract.remote(checkpoint, cache_dir, plan.feature, str(feature_root), seed_of_floor, *where)
            for task in tasks:
                ref = probe.remote(features, cache_dir, task.label_set, fractions, seeds, plan.epochs, *where)
                pending.append(Pending(ref, encoder, task.name, "linear_probe", heads, probed))
                if getattr(plan, "protocol", "selected") == "reference" and encoder == "pretrained":
                    ref = reference.remote(checkpoint, cache_dir, task.label_set, fractions, seeds, plan.epochs,
                                           plan.feature, *where)  # fmt: skip
                    pending.append(Pending(ref, encoder, task.name, "linear_probe_reference", heads, probed))
                if plan.zero_shot and encoder == "pretrained" and plan.feature == "mix":
                    ref = zero_shot.remote(features, checkpoint, cache_dir, task.label_set, *where)
                    pending.append(Pending(ref, encoder, task.name, "zero_shot", NO_HEAD, probed))
            if plan.report_generation and encoder == "pretrained" and has_reports:
                name = f"{dataset}_report"
                samples = str(Path(samples_dir) / f"{name}_samples.json") if samples_dir and plan.report_samples else ""
                ref = report_gen.remote(features, cache_dir, name, plan.report_decoder, plan.report_epochs,
                                        plan.report_samples, samples, *where)  # fmt: skip
                pending.append(Pending(ref, encoder, name, "report_generation", NO_HEAD, probed))
    return pending


def collect(pending: list[Pending]) -> pd.DataFrame:
    """Wait for probe tasks; failed ones (after retries) become ``status=failed`` rows.

    Returns:
        Tidy rows with ``encoder``, ``feature`` (the representation probed: ``m_e``, ``z_e``,
        ``resnet``) and ``status`` columns added.
    """
    frames = []
    for item in pending:
        try:
            frame = ray.get(item.ref).copy()
            frame["status"] = "ok"
        except (ray.exceptions.RayError, ValueError) as exc:
            log.error("probe %s/%s (%s, %d head(s)) failed: %s", item.encoder, item.task, item.eval, len(item.heads),
                      exc)  # fmt: skip
            frame = pd.DataFrame(
                [{"task": item.task, "method": item.eval, "fraction": fraction, "probe_seed": seed,
                  "metric": "error", "value": math.nan, "status": "failed"} for fraction, seed in item.heads]
            )  # fmt: skip
        frame["encoder"] = item.encoder
        frame["feature"] = item.feature
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

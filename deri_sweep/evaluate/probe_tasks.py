"""Downstream tasks of a prepared cache and their linear probes (spec section 8).

A :class:`Task` is one label set of one cache (``ptbxl_super``, ``ptbxl_rhythm``,
``cpsc2018`` ...). :func:`run_linear_probes` probes a task at several training
fractions and seeds on frozen features and returns a TIDY table: one row per
(task, fraction, probe_seed, metric).

Records without any positive label of the task are left out of every split (the
PTB-XL form/rhythm rule); training fractions are nested, fixed-seed subsets of the
remaining train rows; val and test are always full.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.splits import training_subset
from deri_sweep.evaluate.linear_probe import ProbeConfig, ProbeResult, linear_probe_many

log = logging.getLogger(__name__)

#: Columns of the tidy result tables (linear probe and zero-shot).
TIDY_COLUMNS: tuple[str, ...] = ("task", "label_set", "method", "fraction", "probe_seed", "metric", "value")


@dataclass(frozen=True)
class Task:
    """One downstream classification task.

    Attributes:
        name: e.g. ``"ptbxl_super"``; a single-set cache whose set is named after its format gives ``"cpsc2018"``.
        cache_dir: the prepared cache directory.
        label_set: the label set of that cache (its classes are the task's classes).
    """

    name: str
    cache_dir: str
    label_set: str


def tasks_of_cache(cache: SignalCache) -> list[Task]:
    """One :class:`Task` per label set of a cache, in the cache's label-set order.

    Args:
        cache: an opened downstream cache (a PTB-XL cache yields ptbxl_super/sub/form/rhythm).

    Returns:
        The tasks; the name prefix is the cache format (``"wfdb-dir"`` -> ``"wfdb_dir"``).
    """
    fmt = str(cache.info.get("settings", {}).get("format") or cache.root.name).replace("-", "_")
    tasks = []
    for label_set in cache.label_sets:
        name = fmt if label_set.replace("-", "_") == fmt else f"{fmt}_{label_set}"
        tasks.append(Task(name=name, cache_dir=str(cache.root), label_set=label_set))
    return tasks


def task_rows(labels: np.ndarray, split: np.ndarray, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Rows of one task's train subset, val and test.

    Records without any positive label of the task are left out first (the
    PTB-XL form/rhythm rule); the train subset is then drawn from the remaining
    train rows with :func:`deri_sweep.data.splits.training_subset` (a fixed-seed
    permutation, so smaller fractions are nested in larger ones). Val and test
    are always full.

    Args:
        labels: (N, C) 0/1 labels of the task.
        split: (N,) ``"train" | "val" | "test"`` (other values are ignored).
        fraction: training-data fraction in (0, 1].
        seed: seed of the subset draw.

    Returns:
        ``{"train", "val", "test"}`` -> sorted row numbers into ``labels``.
    """
    split = np.asarray(split).astype(str)
    kept = np.flatnonzero(np.asarray(labels).sum(axis=1) > 0)
    frame = pd.DataFrame({"split": split[kept]})
    out = {"train": kept[training_subset(frame, fraction, seed)]}
    for name in ("val", "test"):
        out[name] = kept[split[kept] == name]
    dropped = len(split) - len(kept)
    if dropped:
        log.info("left out %d record(s) without a label of this task", dropped)
    return out


def probe_fractions(
    features: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    fractions: Sequence[float],
    seeds: Sequence[int],
    config: ProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> list[ProbeResult]:
    """Probe every (fraction, seed) pair of one task in one batched run.

    Seed ``s`` drives both the subset draw (:func:`task_rows`) and the head
    (initialisation and shuffling); ``config.seed`` is not used.

    Args:
        features: (N, D) float32 features of all records.
        labels: (N, C) 0/1 labels of the task.
        split: (N,) split names.
        fractions: training fractions, e.g. (0.01, 0.1, 1.0).
        seeds: seeds.
        config: hyper-parameters.
        class_names: (C,) names.

    Returns:
        One :class:`ProbeResult` per pair, ordered ``[(f, s) for f in fractions for s in seeds]``.
    """
    pairs = [(float(f), int(s)) for f in fractions for s in seeds]
    rows = task_rows(labels, split, 1.0, 0)
    if not all(len(r) for r in rows.values()):
        raise ValueError(f"task has an empty split: { {k: len(r) for k, r in rows.items()} }")
    position = np.full(len(labels), -1, dtype=np.int64)  # full-array row -> row of the train block
    position[rows["train"]] = np.arange(len(rows["train"]))
    subsets = [position[task_rows(labels, split, f, s)["train"]] for f, s in pairs]
    x, y = np.asarray(features, dtype=np.float32), np.asarray(labels)
    blocks = [a[rows[k]] for k in ("train", "val", "test") for a in (x, y)]
    results = linear_probe_many(*blocks, subsets, [s for _, s in pairs], config, class_names)
    return [replace(r, fraction=f) for r, (f, _) in zip(results, pairs, strict=True)]


def probe_with_fraction(
    features: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    fraction: float,
    seed: int,
    config: ProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> ProbeResult:
    """One probe at one training fraction: :func:`probe_fractions` with the single pair ``(fraction, seed)``.

    Args and shapes as :func:`probe_fractions`; ``seed`` seeds the subset draw AND the head.
    """
    return probe_fractions(features, labels, split, [fraction], [seed], config, class_names)[0]


def result_rows(task: Task, result: ProbeResult) -> list[dict[str, object]]:
    """Tidy rows of one probe head: headline and bookkeeping metrics, then one row per class.

    Metrics: ``test_auroc`` (test macro AUROC at the best-val epoch, the headline),
    ``max_test_auroc`` (max over epochs, only for comparison with published numbers),
    ``best_val_auroc``, ``best_epoch``, ``n_undefined_classes``, ``n_train``, ``n_val``,
    ``n_test`` and ``test_auroc/<class>`` (NaN where the class has one label value in test).
    """
    values: dict[str, float] = {
        "test_auroc": result.test_auroc_at_best_val,
        "max_test_auroc": result.max_test_auroc,
        "best_val_auroc": result.best_val_auroc,
        "best_epoch": float(result.best_epoch),
        "n_undefined_classes": float(result.n_undefined_classes),
        "n_train": float(result.n_train),
        "n_val": float(result.n_val),
        "n_test": float(result.n_test),
    }
    for name, value in zip(result.class_names, result.per_class_test_auroc, strict=True):
        values[f"test_auroc/{name}"] = float(value)
    base = {"task": task.name, "label_set": task.label_set, "method": "linear_probe"}
    return [
        {**base, "fraction": result.fraction, "probe_seed": result.seed, "metric": k, "value": v}
        for k, v in values.items()
    ]


def run_linear_probes(
    features: np.ndarray,
    cache: SignalCache,
    task: Task,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0,),
    config: ProbeConfig | None = None,
) -> pd.DataFrame:
    """Linear-probe one task at every (fraction, seed) on frozen features.

    Seed ``s`` draws the training subset and initialises/shuffles the head; all
    pairs train together (:func:`probe_fractions`).

    Args:
        features: (N, D) float32 features, rows aligned with ``cache.index``.
        cache: the task's cache (labels and splits).
        task: which label set.
        fractions: training-data fractions in (0, 1].
        seeds: probe seeds.
        config: probe hyper-parameters (default: the reference).

    Returns:
        Tidy frame with columns :data:`TIDY_COLUMNS`, one row per (fraction, probe_seed, metric)
        (see :func:`result_rows` for the metrics).

    Raises:
        ValueError: features and cache disagree in length, or a split of the task is empty.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(cache):
        raise ValueError(f"features {features.shape} must be (N, D) with N = {len(cache)} records of {cache.root}")
    labels = cache.labels(task.label_set)
    split = cache.index["split"].to_numpy(str)
    results = probe_fractions(features, labels, split, fractions, seeds, config, cache.label_sets[task.label_set])
    rows = [row for result in results for row in result_rows(task, result)]
    frame = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    headline = frame[frame["metric"] == "test_auroc"]
    for r in headline.itertuples():
        log.info("%s fraction %.3g seed %d: test macro AUROC %.4f", task.name, r.fraction, r.probe_seed, r.value)
    return frame

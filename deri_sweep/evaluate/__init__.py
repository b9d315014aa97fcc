"""Downstream evaluation on frozen encoders: features, linear probe, zero-shot, report generation (spec 7-8).

Plain PyTorch/numpy; never imports ray or optuna. :mod:`.report_generation` (GPT-2) is
imported on use, not here.
"""

from __future__ import annotations

from deri_sweep.evaluate.features import (
    cache_fingerprint,
    cached_features,
    checkpoint_fingerprint,
    extract_features,
    random_fingerprint,
)
from deri_sweep.evaluate.linear_probe import (
    ProbeConfig,
    ProbeResult,
    fit_heads,
    linear_probe,
    linear_probe_many,
)
from deri_sweep.evaluate.metrics import (
    MacroAuroc,
    auroc,
    auroc_columns,
    macro_auroc,
    macro_over_defined,
    report_metrics,
)
from deri_sweep.evaluate.probe_tasks import (
    TIDY_COLUMNS,
    Task,
    probe_fractions,
    probe_with_fraction,
    run_linear_probes,
    task_rows,
    tasks_of_cache,
)
from deri_sweep.evaluate.zero_shot import build_prompts, zero_shot_auroc, zero_shot_scores, zero_shot_task

__all__ = [
    "TIDY_COLUMNS",
    "MacroAuroc",
    "ProbeConfig",
    "ProbeResult",
    "Task",
    "auroc",
    "auroc_columns",
    "build_prompts",
    "cache_fingerprint",
    "cached_features",
    "checkpoint_fingerprint",
    "extract_features",
    "fit_heads",
    "linear_probe",
    "linear_probe_many",
    "macro_auroc",
    "macro_over_defined",
    "probe_fractions",
    "probe_with_fraction",
    "random_fingerprint",
    "report_metrics",
    "run_linear_probes",
    "task_rows",
    "tasks_of_cache",
    "zero_shot_auroc",
    "zero_shot_scores",
    "zero_shot_task",
]

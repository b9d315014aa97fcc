"""Downstream evaluation on frozen encoders: metrics, linear probe, zero-shot (spec sections 7-8).

Plain PyTorch/numpy; never imports ray or optuna.
"""

from __future__ import annotations

from deri_sweep.evaluate.linear_probe import (
    ProbeConfig,
    ProbeResult,
    fit_heads,
    linear_probe,
    linear_probe_many,
    probe_fractions,
    probe_with_fraction,
    task_rows,
)
from deri_sweep.evaluate.metrics import (
    MacroAuroc,
    auroc,
    auroc_columns,
    macro_auroc,
    macro_over_defined,
    report_metrics,
)
from deri_sweep.evaluate.zero_shot import build_prompts, zero_shot_auroc, zero_shot_scores

__all__ = [
    "MacroAuroc",
    "ProbeConfig",
    "ProbeResult",
    "auroc",
    "auroc_columns",
    "build_prompts",
    "fit_heads",
    "linear_probe",
    "linear_probe_many",
    "macro_auroc",
    "macro_over_defined",
    "probe_fractions",
    "probe_with_fraction",
    "report_metrics",
    "task_rows",
    "zero_shot_auroc",
    "zero_shot_scores",
]

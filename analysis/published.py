"""Published reference numbers (spec section 9), as data.

The spec gives macro AUROC in percent; everything here is stored as a fraction
in ``[0, 1]`` so it lines up with ``results.parquet``. These rows are
*references*, never targets: the DERI linear-probe figures are the
max-over-epochs test AUROC from the authors' logs, while this project's headline
``test_auroc`` is selected on validation.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import pandas as pd

__all__ = [
    "DERI",
    "FRACTIONS",
    "MERL",
    "PUBLISHED_LABEL",
    "REFERENCE_EVAL",
    "REFERENCE_LABEL",
    "PublishedRow",
    "published_frame",
    "published_rows",
]

logger = logging.getLogger(__name__)

#: Suffix that marks every published row wherever it is shown.
PUBLISHED_LABEL = "(published)"
MERL = f"MERL ResNet18 {PUBLISHED_LABEL}"
DERI = f"DERI {PUBLISHED_LABEL}"
#: ``eval`` of the rows written by ``probes.protocol: reference`` (the authors' probe protocol; the same
#: string as ``deri_sweep.evaluate.reference_probe.REFERENCE_METHOD``: analysis reads result files only).
REFERENCE_EVAL = "linear_probe_reference"
#: Label of every table of those rows.
REFERENCE_LABEL = (
    "Authors' probe protocol (the published numbers' protocol): train-mode encoder, Adam with coupled L2, "
    "MultiStepLR([50]), max test AUROC over epochs; not this project's protocol (test AUROC at the best-val epoch)."
)
#: Linear-probe training-data fractions of the published table (1 %, 10 %, 100 %).
FRACTIONS = (0.01, 0.1, 1.0)

# task -> (MERL ResNet18 %, DERI %) at 1 / 10 / 100 % of the training data.
_LINEAR_PROBE_PCT: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "ptbxl_super": ((82.4, 86.3, 88.7), (85.9, 89.9, 90.5)),
    "ptbxl_sub": ((64.9, 80.6, 84.7), (71.4, 79.3, 85.7)),
    "ptbxl_form": ((58.3, 72.4, 79.7), (64.5, 73.3, 85.1)),
    "ptbxl_rhythm": ((53.3, 82.9, 88.3), (59.8, 81.6, 91.4)),
    "cpsc2018": ((70.3, 85.3, 90.6), (78.7, 89.4, 93.0)),
    "csn": ((66.6, 82.7, 88.0), (74.8, 88.3, 92.9)),
}
# DERI report generation on PTB-XL (supplement, DistilGPT2), percent.
_REPORT_GENERATION_PCT = {"bleu1": 58.6, "bleu2": 54.8, "bleu3": 51.9, "bleu4": 48.6, "rougeL": 64.2}
# MERL zero-shot macro AUROC, mean over the six tasks, percent.
_MERL_ZERO_SHOT_MEAN_PCT = 75.2


class PublishedRow(NamedTuple):
    """One published number.

    Attributes:
        source: row label, e.g. ``"DERI (published)"``.
        eval: ``linear_probe``, ``zero_shot`` or ``report_generation``.
        task: task name as in ``results.parquet`` (``"mean"`` for a mean over tasks).
        fraction: training-data fraction; NaN where it does not apply.
        metric: metric name as in ``results.parquet``.
        value: the number as a fraction in ``[0, 1]``.
        note: how the number was obtained.
    """

    source: str
    eval: str
    task: str
    fraction: float
    metric: str
    value: float
    note: str


def _build() -> tuple[PublishedRow, ...]:
    rows: list[PublishedRow] = []
    for task, (merl, deri) in _LINEAR_PROBE_PCT.items():
        for frac, m_pct, d_pct in zip(FRACTIONS, merl, deri, strict=True):
            rows.append(PublishedRow(MERL, "linear_probe", task, frac, "test_auroc", m_pct / 100, "MERL paper"))
            rows.append(
                PublishedRow(
                    DERI, "linear_probe", task, frac, "test_auroc", d_pct / 100, "max-over-epochs test AUROC (logs)"
                )
            )
    for metric, pct in _REPORT_GENERATION_PCT.items():
        rows.append(
            PublishedRow(DERI, "report_generation", "ptbxl", float("nan"), metric, pct / 100, "DERI supplement")
        )
    rows.append(
        PublishedRow(
            MERL, "zero_shot", "mean", float("nan"), "test_auroc", _MERL_ZERO_SHOT_MEAN_PCT / 100, "mean of six tasks"
        )
    )
    return tuple(rows)


_ROWS = _build()


def published_rows() -> tuple[PublishedRow, ...]:
    """Every published reference number of spec section 9 (values as fractions)."""
    return _ROWS


def published_frame(*, eval: str = "linear_probe", metric: str = "test_auroc") -> pd.DataFrame:
    """The published numbers for one evaluation and metric as a frame.

    ``max_test_auroc`` is served by the same linear-probe rows as ``test_auroc``
    (the published numbers do not distinguish them; see the ``note`` column). The reference
    protocol's rows (``eval`` :data:`REFERENCE_EVAL`, ``max_test_auroc``) are served the same
    linear-probe numbers: that is the protocol they were obtained with.

    Args:
        eval: evaluation kind, as in the ``eval`` column of the results.
        metric: metric name, as in the ``metric`` column of the results.

    Returns:
        Columns ``source, task, fraction, value, note``; empty when nothing is published.
    """
    probe = eval in ("linear_probe", REFERENCE_EVAL)
    wanted = "test_auroc" if probe and metric == "max_test_auroc" else metric
    if eval == REFERENCE_EVAL and metric != "max_test_auroc":
        wanted = ""  # the published numbers are max-over-epochs: nothing else of the reference protocol matches
    source_eval = "linear_probe" if eval == REFERENCE_EVAL else eval
    rows = [r for r in _ROWS if r.eval == source_eval and r.metric == wanted]
    frame = pd.DataFrame(rows, columns=list(PublishedRow._fields))
    logger.debug("published rows for %s/%s: %d", eval, metric, len(frame))
    return frame.drop(columns=["eval", "metric"]).reset_index(drop=True)

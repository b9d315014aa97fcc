"""The result files of a run directory: their names and columns (the contract).

``deri_sweep.orchestration.results`` writes them; ``analysis`` reads them. Both take the
columns from here, so the writer and the reader cannot drift apart.
"""

from __future__ import annotations

RESULTS_FILE = "results.parquet"
TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"

#: one row per (trial, evaluation, task, fraction, probe seed, metric)
RESULT_COLUMNS = (
    "run_id", "trial_id", "variant", "config_hash", "seed", "task", "eval", "fraction", "probe_seed", "metric",
    "value", "feature", "checkpoint", "git_commit", "hours", "status",
)  # fmt: skip
#: the columns every reader needs (older or hand-made result files may lack the others)
REQUIRED_RESULT_COLUMNS = ("trial_id", "variant", "seed", "task", "eval", "fraction", "probe_seed", "metric", "value")
#: one row per trial
TRIAL_COLUMNS = (
    "trial_id", "variant", "seed", "config_hash", "state", "hours", "epochs", "objective", "checkpoint", "error",
)  # fmt: skip
REQUIRED_TRIAL_COLUMNS = ("trial_id", "variant", "state")
#: one row per (trial, epoch, metric): the learning curves
CURVE_COLUMNS = ("trial_id", "epoch", "metric", "value")

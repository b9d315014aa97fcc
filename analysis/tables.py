"""Tables computed from a run's tidy results: ablation comparison, cost, trial states.

Everything here is pure data (pandas in, dataclass/DataFrame out); rendering to
Markdown/HTML lives in :mod:`analysis._table_render`.

Each measured ablation cell of the comparison gets a plain verdict against the
baseline: a paired t-test over pretraining seeds, Holm-corrected over every
tested ablation cell of the table (one metric of one evaluation), read as "helps",
"hurts", "no detectable difference (95% CI of delta [lo, hi])" or
"not tested (N pair(s))". The random-init floor answers another question (does
pretraining beat an untrained encoder at all?), so its cells are a second family,
Holm-corrected on their own: switching the floor on or off never changes an
ablation verdict, and the floor's test is not diluted by the ablation cells.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._stats import holm, mean_ci, paired_test
from analysis.published import REFERENCE_EVAL, REFERENCE_LABEL, published_frame

__all__ = [
    "CSV_COLUMNS",
    "RANDOM_INIT",
    "TASK_ORDER",
    "ComparisonTable",
    "comparison_table",
    "cost_per_variant",
    "fraction_label",
    "has_reference_rows",
    "reference_table",
    "trials_summary",
    "verdict_word",
    "write_reference_table",
]

logger = logging.getLogger(__name__)

#: Canonical display order of the downstream tasks; unknown tasks follow alphabetically.
TASK_ORDER = ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm", "cpsc2018", "csn")
#: Columns of ``tables/comparison.csv`` (in this order).
CSV_COLUMNS = [
    "variant",
    "feature",
    "task",
    "fraction",
    "mean",
    "ci_low",
    "ci_high",
    "n_seeds",
    "delta",
    "p_value",
    "n_pairs",
    "delta_ci_low",
    "delta_ci_high",
    "p_holm",
    "verdict",
    "best",
    "source",
]
_NO_FRACTION = -1.0  # grouping key standing in for NaN fractions (zero-shot, report generation)
STATES = ("COMPLETE", "PRUNED", "FAILED")
#: Variant name of the untrained-encoder floor; compared against the baseline in its own Holm family.
RANDOM_INIT = "random_init"
HELPS, HURTS, BASELINE = "helps", "hurts", "baseline"


def fraction_label(fraction: float) -> str:
    """Human label of a training-data fraction: ``0.01 -> "1%"``, NaN -> ``"–"``."""
    if fraction is None or not math.isfinite(fraction) or fraction < 0:
        return "–"
    return f"{fraction * 100:g}%"


def _fkey(fraction: float) -> float:
    return round(float(fraction), 6) if math.isfinite(fraction) else _NO_FRACTION


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


@dataclass(frozen=True)
class ComparisonTable:
    """Ablation variants x (task, fraction) with seed statistics and paired deltas.

    Attributes:
        frame: long form, one row per (variant, task, fraction), columns :data:`CSV_COLUMNS`;
            ``source`` is ``"run"`` for measured rows and ``"published"`` for reference rows.
        per_seed: variant, task, fraction, seed, value — probe seeds averaged within a pretraining seed.
        metric: the metric compared (e.g. ``test_auroc``).
        eval: the evaluation kind (e.g. ``linear_probe``).
        baseline: the variant deltas are taken against (None: no deltas).
        higher_is_better: direction used to mark the best cell per column and to read verdicts.
        notes: caveats worth showing next to the table (the Holm note among them).
        alpha: family-wise error rate of the Holm-corrected verdicts.
        confidence: coverage of the confidence intervals.
    """

    frame: pd.DataFrame
    per_seed: pd.DataFrame
    metric: str
    eval: str
    baseline: str | None
    higher_is_better: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    alpha: float = 0.05
    confidence: float = 0.95

    @property
    def n_comparisons(self) -> int:
        """Number of ablation cells the Holm correction ran over (finite ``p_holm``, the floor excluded)."""
        return _family_sizes(self.frame)[0] if "p_holm" in self.frame else 0

    @property
    def n_floor_comparisons(self) -> int:
        """Number of random-init floor cells, Holm-corrected as their own family (0 without a floor)."""
        return _family_sizes(self.frame)[1] if "p_holm" in self.frame else 0

    def row_feature(self, variant: str) -> str:
        """The probed feature(s) of a row: ``"/"``-joined union of its cells' ``feature`` ("" when unknown)."""
        if "feature" not in self.frame:
            return ""
        values = self.frame.loc[self.frame["variant"] == variant, "feature"].dropna()
        return "/".join(sorted({part for v in values for part in str(v).split("/") if part}))

    @property
    def variants(self) -> list[str]:
        """Row labels in display order: baseline first, other variants, then published rows."""
        return list(dict.fromkeys(self.frame["variant"]))

    @property
    def columns(self) -> list[tuple[str, float]]:
        """``(task, fraction)`` columns in display order (NaN fraction where none applies)."""
        keys = self.frame[["task", "fraction"]].drop_duplicates()
        cols = [(str(t), float(f)) for t, f in keys.itertuples(index=False)]
        return sorted(cols, key=lambda c: (_task_key(c[0]), c[1] if math.isfinite(c[1]) else math.inf))

    def cell(self, variant: str, task: str, fraction: float) -> pd.Series | None:
        """The row of :attr:`frame` for one cell, or None when absent."""
        f = self.frame
        frac_match = f["fraction"].isna() if not math.isfinite(fraction) else np.isclose(f["fraction"], fraction)
        hit = f[(f["variant"] == variant) & (f["task"] == task) & frac_match]
        return None if hit.empty else hit.iloc[0]

    def pivot(self, value: str = "mean") -> pd.DataFrame:
        """Wide view: rows = variants, columns = MultiIndex (task, fraction label), cells = ``value``."""
        cols = self.columns
        data = {
            (t, fraction_label(fr)): [
                (c[value] if (c := self.cell(v, t, fr)) is not None else np.nan) for v in self.variants
            ]
            for t, fr in cols
        }
        out = pd.DataFrame(data, index=pd.Index(self.variants, name="variant"))
        out.columns = pd.MultiIndex.from_tuples(list(data), names=["task", "fraction"])
        return out


def _per_seed(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    keys = ["variant", "task", "_fkey", "seed"]
    by_trial = df.groupby([*keys, "trial_id"], sort=False, as_index=False)["value"].mean()
    multi = by_trial.groupby(keys, sort=False)["trial_id"].nunique()
    if (multi > 1).any():
        pairs = sorted({f"{v}/seed {s}" for (v, _t, _f, s), n in multi.items() if n > 1})
        notes.append(f"several trials share a variant and seed ({', '.join(pairs[:5])}); their values are averaged.")
    return by_trial.groupby(keys, sort=False, as_index=False)["value"].mean(), notes


def comparison_table(
    results: pd.DataFrame,
    *,
    metric: str = "test_auroc",
    eval: str = "linear_probe",
    baseline: str | None = None,
    higher_is_better: bool = True,
    confidence: float = 0.95,
    include_published: bool = True,
    alpha: float = 0.05,
) -> ComparisonTable:
    """Compare ablation variants on one metric of one evaluation.

    Probe seeds are averaged within each pretraining seed first; each cell is then
    the mean over pretraining seeds with a Student-t interval, and the delta
    against ``baseline`` is the mean paired difference with a paired t-test over
    seeds present in both. Failed rows and non-finite values are ignored.

    The p-values of every tested (variant != baseline, task, fraction) cell are
    Holm-corrected together (``p_holm``), the random-init floor's cells as a
    family of their own, and each run row gets a ``verdict``:
    ``"helps"``/``"hurts"`` when ``p_holm < alpha`` and the delta points in the
    better/worse direction, ``"no detectable difference (95% CI of delta [lo, hi])"``
    otherwise, ``"not tested (N pair(s))"`` with fewer than two paired seeds and
    ``"baseline"`` for the baseline itself (``""`` for published rows and when
    there is no baseline). The random-init floor (variant ``random_init``) gets
    the same verdicts, read from its own family's ``p_holm``. ``feature`` is the ``"/"``-joined sorted set of
    non-empty ``feature`` values of the cell's rows ("" when the column is absent).

    Args:
        results: tidy ``results.parquet`` frame (see the run-directory contract).
        metric: value of the ``metric`` column to compare.
        eval: value of the ``eval`` column to compare.
        baseline: reference variant; None picks ``"full"`` when present, else no deltas.
        higher_is_better: marks the maximum (True) or minimum (False) per column as best.
        confidence: coverage of the confidence intervals.
        include_published: append spec section 9 rows where tasks and fractions match.
        alpha: family-wise error rate of the Holm-corrected verdicts.

    Returns:
        The table; empty ``frame`` (with a note) when nothing matches.
    """
    notes: list[str] = [REFERENCE_LABEL] if eval == REFERENCE_EVAL else []
    df = results
    if "status" in df.columns:
        failed = int((df["status"] != "ok").sum())
        df = df[df["status"] == "ok"]
        if failed:
            notes.append(f"{failed} result row(s) with a status other than 'ok' excluded.")
    df = df[(df["metric"] == metric) & (df["eval"] == eval)].copy()
    df = df[np.isfinite(df["value"].astype(float))]
    df["_fkey"] = df["fraction"].astype(float).round(6).fillna(_NO_FRACTION)
    variants = sorted(df["variant"].astype(str).unique())
    if baseline is None and "full" in variants:
        baseline = "full"
    if baseline is not None and baseline not in variants:
        notes.append(f"baseline variant {baseline!r} has no {eval}/{metric} results; no deltas.")
        baseline = None
    if baseline is not None:
        variants = [baseline] + [v for v in variants if v != baseline]

    per_seed, seed_notes = _per_seed(df) if not df.empty else (df.assign(value=[]), [])
    notes.extend(seed_notes)
    features = _cell_features(df)
    rows: list[dict[str, object]] = []
    groups = dict(iter(per_seed.groupby(["variant", "task", "_fkey"], sort=False)))
    for (variant, task, fkey), g in sorted(groups.items(), key=lambda kv: variants.index(kv[0][0])):
        ci = mean_ci(g["value"].to_numpy(), confidence=confidence)
        test = paired_test({}, {})
        base = groups.get((baseline, task, fkey))
        if baseline is not None and variant != baseline and base is not None:
            test = paired_test(
                dict(zip(g["seed"], g["value"], strict=True)),
                dict(zip(base["seed"], base["value"], strict=True)),
                confidence=confidence,
            )
        frac = math.nan if fkey == _NO_FRACTION else float(fkey)
        # p_holm and verdict are filled in below, over the whole table
        rows.append(
            {
                "variant": variant,
                "feature": features.get((variant, task, fkey), ""),
                "task": task,
                "fraction": frac,
                "mean": ci.mean,
                "ci_low": ci.ci_low,
                "ci_high": ci.ci_high,
                "n_seeds": ci.n,
                "delta": test.delta,
                "p_value": test.p_value,
                "n_pairs": test.n_pairs,
                "delta_ci_low": test.ci_low,
                "delta_ci_high": test.ci_high,
                "p_holm": math.nan,
                "verdict": "",
                "best": False,
                "source": "run",
            }
        )
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    if not frame.empty:
        if (frame["n_seeds"] < 2).any():
            notes.append("cells with a single pretraining seed have no confidence interval.")
        key = frame["fraction"].fillna(_NO_FRACTION)
        best = frame.groupby([frame["task"], key])["mean"].transform("max" if higher_is_better else "min")
        frame["best"] = np.isclose(frame["mean"], best) & frame["mean"].notna()
        if baseline is not None:
            _add_verdicts(frame, baseline, higher_is_better=higher_is_better, alpha=alpha, confidence=confidence)
            notes.append(_holm_note(frame, baseline, alpha=alpha))
    else:
        notes.append(f"no {eval}/{metric} results in this run.")
    if include_published and not frame.empty and eval == "linear_probe" and has_reference_rows(results):
        notes.append(
            f"published rows are compared in the reference-protocol table ({REFERENCE_EVAL} / max_test_auroc), "
            "the protocol they were obtained with."
        )
    elif include_published and not frame.empty:
        frame = _append_published(frame, eval=eval, metric=metric, notes=notes)
    per_seed = per_seed.assign(fraction=per_seed["_fkey"].where(per_seed["_fkey"] != _NO_FRACTION))
    per_seed = per_seed[["variant", "task", "fraction", "seed", "value"]].reset_index(drop=True)
    return ComparisonTable(
        frame, per_seed, metric, eval, baseline, higher_is_better, tuple(notes), alpha=alpha, confidence=confidence
    )


def has_reference_rows(results: pd.DataFrame) -> bool:
    """Whether a run holds usable rows of the authors' probe protocol (``probes.protocol: reference``)."""
    if results.empty or "eval" not in results.columns:
        return False
    hit = (results["eval"] == REFERENCE_EVAL) & (results["metric"] == "max_test_auroc")
    if "status" in results.columns:
        hit &= results["status"] == "ok"
    return bool(hit.any())


def reference_table(results: pd.DataFrame, *, baseline: str | None = None, **kwargs: object) -> ComparisonTable:
    """The comparison under the authors' probe protocol: max-over-epochs test AUROC, published rows beside it.

    Its first note is :data:`~analysis.published.REFERENCE_LABEL`, so wherever it is shown it says that it
    is the published numbers' protocol, not this project's headline.

    Args:
        results: tidy ``results.parquet`` frame.
        baseline: reference variant (None: ``"full"`` when present).
        **kwargs: passed to :func:`comparison_table`.

    Returns:
        The table (``eval`` = ``linear_probe_reference``, ``metric`` = ``max_test_auroc``).
    """
    return comparison_table(results, metric="max_test_auroc", eval=REFERENCE_EVAL, baseline=baseline, **kwargs)  # type: ignore[arg-type]


def write_reference_table(
    results: pd.DataFrame, out_dir: str | Path, *, baseline: str | None = None
) -> dict[str, Path]:
    """Write ``reference_protocol.md`` and ``reference_protocol.csv`` into ``out_dir`` when the run has such rows.

    Returns:
        ``{"reference_md": path, "reference_csv": path}``; ``{}`` when the run has no reference-protocol rows.
    """
    if not has_reference_rows(results):
        return {}
    from analysis._io import write_text
    from analysis._table_render import comparison_csv, comparison_markdown

    table = reference_table(results, baseline=baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"reference_md": out / "reference_protocol.md", "reference_csv": out / "reference_protocol.csv"}
    markdown = comparison_markdown(table).replace(
        f"# Comparison: {table.eval} / {table.metric}", f"# {REFERENCE_LABEL.split(':')[0]}", 1
    )
    write_text(paths["reference_md"], markdown)
    write_text(paths["reference_csv"], comparison_csv(table))
    logger.info("wrote %s", paths["reference_md"])
    return paths


def _cell_features(df: pd.DataFrame) -> dict[tuple[str, str, float], str]:
    """``(variant, task, _fkey) -> "/".join(sorted unique non-empty feature values)``; {} without the column."""
    if "feature" not in df.columns or df.empty:
        return {}
    out: dict[tuple[str, str, float], str] = {}
    for key, values in df.groupby(["variant", "task", "_fkey"], sort=False)["feature"]:
        names = {str(v).strip() for v in values if isinstance(v, str) or (v is not None and not pd.isna(v))}
        out[key] = "/".join(sorted(n for n in names if n))
    return out


def _add_verdicts(
    frame: pd.DataFrame, baseline: str, *, higher_is_better: bool, alpha: float, confidence: float
) -> None:
    """Fill ``p_holm`` and ``verdict`` of run rows, in place.

    Holm runs over the tested non-baseline cells in two families: the ablation variants, and the
    random-init floor (a positive control) on its own.
    """
    tested = (frame["variant"] != baseline) & np.isfinite(frame["p_value"].astype(float))
    floor = frame["variant"] == RANDOM_INIT
    frame["p_holm"] = np.nan
    for family in (tested & ~floor, tested & floor):
        if family.any():
            frame.loc[family, "p_holm"] = holm(frame.loc[family, "p_value"].to_numpy(dtype=float))
    level = f"{confidence * 100:g}%"
    verdicts = []
    for row in frame.itertuples(index=False):
        if row.variant == baseline:
            verdicts.append(BASELINE)
        elif row.n_pairs < 2:
            verdicts.append(f"not tested ({int(row.n_pairs)} pair(s))")
        elif math.isfinite(row.p_holm) and row.p_holm < alpha and row.delta != 0:
            verdicts.append(HELPS if (row.delta > 0) == higher_is_better else HURTS)
        else:
            verdicts.append(
                f"no detectable difference ({level} CI of delta [{row.delta_ci_low:.3f}, {row.delta_ci_high:.3f}])"
            )
    frame["verdict"] = verdicts


def _family_sizes(frame: pd.DataFrame) -> tuple[int, int]:
    """``(ablation cells, random-init floor cells)`` the Holm correction ran over (finite ``p_holm``).

    The baseline's own cells have no ``p_holm``, so a floor that is the baseline counts in neither.
    """
    tested = np.isfinite(frame["p_holm"].astype(float))
    floor = tested & (frame["variant"] == RANDOM_INIT)
    return int((tested & ~floor).sum()), int(floor.sum())


def _holm_note(frame: pd.DataFrame, baseline: str, *, alpha: float) -> str:
    k, m = _family_sizes(frame)
    note = (
        f"verdicts: paired t-test over pretraining seeds per cell, p-values Holm-corrected over the {k} ablation "
        f"comparison{'' if k == 1 else 's'} in this table (alpha {alpha:g}); 'helps'/'hurts' = the variant is "
        f"better/worse than the baseline {baseline}."
    )
    if m:
        note += (
            f" The random-init floor (variant '{RANDOM_INIT}') asks another question (does pretraining beat an "
            f"untrained encoder?), so its {m} cell{'' if m == 1 else 's'} are Holm-corrected as a family of their "
            "own; its 'hurts' means the untrained encoder is below the pretrained baseline."
        )
    return note


def verdict_word(verdict: str) -> str:
    """Compact form of a ``verdict`` for table cells: helps, hurts, n.s., untested ("" for baseline/published)."""
    if verdict in (HELPS, HURTS):
        return verdict
    if verdict.startswith("no detectable difference"):
        return "n.s."
    if verdict.startswith("not tested"):
        return "untested"
    return ""


def _append_published(frame: pd.DataFrame, *, eval: str, metric: str, notes: list[str]) -> pd.DataFrame:
    pub = published_frame(eval=eval, metric=metric)
    if pub.empty:
        return frame
    cols = set(zip(frame["task"], map(_fkey, frame["fraction"]), strict=True))
    keep = [(t, _fkey(f)) in cols for t, f in zip(pub["task"], pub["fraction"], strict=True)]
    pub = pub[keep]
    if pub.empty:
        return frame
    extra = pd.DataFrame(
        {
            "variant": pub["source"],
            "feature": "",
            "task": pub["task"],
            "fraction": pub["fraction"],
            "mean": pub["value"],
            "ci_low": np.nan,
            "ci_high": np.nan,
            "n_seeds": 0,
            "delta": np.nan,
            "p_value": np.nan,
            "n_pairs": 0,
            "delta_ci_low": np.nan,
            "delta_ci_high": np.nan,
            "p_holm": np.nan,
            "verdict": "",
            "best": False,
            "source": "published",
        }
    )
    if eval == REFERENCE_EVAL:
        notes.append(
            "published rows are references from the spec (section 9), not part of the best-cell marking; "
            "they were obtained with this protocol (max-over-epochs test AUROC), so these rows line up with them."
        )
        return pd.concat([frame, extra[CSV_COLUMNS]], ignore_index=True)
    notes.append(
        "published rows are references from the spec (section 9), not part of the best-cell marking; "
        "the DERI numbers are max-over-epochs test AUROC, this run's test_auroc is selected on validation."
    )
    return pd.concat([frame, extra[CSV_COLUMNS]], ignore_index=True)


def cost_per_variant(trials: pd.DataFrame | None = None, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Compute hours per ablation variant.

    Uses ``trials.parquet`` when given (every trial, pruned and failed included),
    else one ``hours`` value per ``trial_id`` from the results.

    Args:
        trials: trials frame with ``variant``, ``trial_id`` and ``hours``.
        results: tidy results frame, used only when ``trials`` is None or empty.

    Returns:
        Columns ``variant, n_trials, hours_mean, hours_sum``, sorted by variant; empty without data.
    """
    src = trials if trials is not None and not trials.empty else results
    cols = ["variant", "n_trials", "hours_mean", "hours_sum"]
    if src is None or src.empty or "hours" not in src.columns:
        return pd.DataFrame(columns=cols)
    per_trial = src.drop_duplicates("trial_id")[["variant", "trial_id", "hours"]]
    out = per_trial.groupby("variant").agg(
        n_trials=("trial_id", "nunique"), hours_mean=("hours", "mean"), hours_sum=("hours", "sum")
    )
    return out.reset_index()[cols]


def trials_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Count trials per variant and state (COMPLETE, PRUNED, FAILED, any other), with hours.

    Args:
        trials: ``trials.parquet`` frame.

    Returns:
        One row per variant plus a final ``all`` row; columns ``variant``, one per state,
        ``total`` and ``hours``.
    """
    states = list(STATES) + sorted(set(trials["state"].astype(str)) - set(STATES))
    counts = pd.crosstab(trials["variant"], trials["state"].astype(str)).reindex(columns=states, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["hours"] = trials.groupby("variant")["hours"].sum() if "hours" in trials else np.nan
    counts.loc["all"] = counts.sum(axis=0)
    counts.columns.name = None
    return counts.rename_axis("variant").reset_index()

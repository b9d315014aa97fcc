"""Run directory -> tidy result tables: the contract ``analysis/`` reads.

Reads only files (no Ray): Tune's per-trial folders under ``RUN_DIR/tune/``
(``params.json``, ``result.json``), each trial's ``RUN_DIR/trials/<id>/``
(``trial.json``, ``probes.parquet``) and the scheduler's stop record, and
writes (atomically)

- ``results.parquet`` / ``results.csv``: one row per (trial, config, seed, task,
  fraction, probe seed, metric) with lineage (trial id, checkpoint, git commit,
  config hash, hours) and one ``param/<key>`` column per searched key;
- ``trials.parquet``: one row per trial with its state (COMPLETE, PRUNED, FAILED);
- ``curves.parquet``: learning curves (trial_id, epoch, metric, value).

Report text never enters these files: only ids, configs and metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from deri_sweep.common.result_files import CURVE_COLUMNS, RESULT_COLUMNS, TRIAL_COLUMNS
from deri_sweep.common.storage import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

#: key present only in a trial's final report (sent once its probes ran); epoch reports lack it
FINAL_REPORT_KEY = "probes_done"
CURVE_METRICS = ("train_total", "val_total", "lr", "samples_per_s", "hours")


def config_hash(overrides: dict[str, Any], seed: int | None = None) -> str:
    """Short stable hash of a trial's overrides (and seed when given)."""
    payload = json.dumps({"overrides": overrides, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _columns(rows: list[dict[str, Any]], fixed: tuple[str, ...]) -> list[str]:
    """The contract's columns first, then any ``param/...`` columns the rows carry."""
    extra = sorted({k for r in rows for k in r if k not in fixed})
    return [*fixed, *extra]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return rows


def _error(trial_dir: Path) -> str:
    """The exception line of a failed trial's traceback (Tune's ``error.txt``), or ``""``."""
    path = trial_dir / "error.txt"
    if not path.exists():
        return "failed (no error.txt)" if (trial_dir / "error.pkl").exists() else ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "~"))]
    return (causes[-1] if causes else "failed")[:500]


def _tune_trials(run_dir: Path) -> list[dict[str, Any]]:
    """One dict per Tune trial folder: id, config and its reported results."""
    trials = []
    for folder in sorted((run_dir / "tune").glob("*/params.json")):
        params = json.loads(folder.read_text())
        results = _read_jsonl(folder.parent / "result.json")
        trial_id = next((r["trial_id"] for r in results if "trial_id" in r), None)
        if trial_id is None:
            trial_id = folder.parent.name.split("_")[2] if folder.parent.name.count("_") >= 2 else folder.parent.name
        trials.append({"trial_id": trial_id, "params": params, "results": results, "error": _error(folder.parent)})
    return trials


def collect_tables(run_dir: str | Path, run_id: str) -> dict[str, pd.DataFrame]:
    """Build the three tables from a run directory's files.

    Returns:
        ``{"results", "trials", "curves"}`` data frames (possibly empty).
    """
    run_dir = Path(run_dir)
    stopped_file = run_dir / "stopped_trials.txt"
    stopped = set(stopped_file.read_text().split()) if stopped_file.exists() else set()
    trial_rows, curve_rows, result_rows = [], [], []
    searched = set()
    for trial in _tune_trials(run_dir):
        tid, params = trial["trial_id"], trial["params"]
        summary_file = run_dir / "trials" / tid / "trial.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        overrides = params.get("overrides", {})
        searched.update(overrides)
        finished = any(FINAL_REPORT_KEY in r for r in trial["results"])
        state = "PRUNED" if tid in stopped else ("COMPLETE" if finished else "FAILED")
        last = trial["results"][-1] if trial["results"] else {}
        hours = float(summary.get("hours", last.get("hours", 0.0)) or 0.0)
        row = {
            "trial_id": tid,
            "variant": params.get("variant", ""),
            "seed": int(params.get("seed", -1)),
            "config_hash": summary.get("config_hash") or config_hash(overrides),
            "state": state,
            "hours": hours,
            "epochs": float(last.get("epoch", 0.0) or 0.0),
            "objective": float(last["objective"]) if finished and "objective" in last else float("nan"),
            "checkpoint": summary.get("checkpoint", ""),
            "error": "" if finished else trial["error"],
            **{f"param/{k}": v for k, v in overrides.items()},
        }
        trial_rows.append(row)
        for r in trial["results"]:
            if "epoch" not in r or FINAL_REPORT_KEY in r:
                continue
            curve_rows += [
                {"trial_id": tid, "epoch": float(r["epoch"]), "metric": m, "value": float(r[m])}
                for m in CURVE_METRICS
                if isinstance(r.get(m), (int, float))
            ]
        probes_file = run_dir / "trials" / tid / "probes.parquet"
        lineage = {
            "run_id": run_id,
            "trial_id": tid,
            "config_hash": row["config_hash"],
            "seed": row["seed"],
            "checkpoint": row["checkpoint"],
            "git_commit": summary.get("git_commit", ""),
            "hours": hours,
            **{k: v for k, v in row.items() if k.startswith("param/")},
        }
        for metric, value in summary.get("metrics", {}).items():
            result_rows.append({**lineage, "variant": row["variant"], "task": "pretrain", "eval": "pretrain",
                                "fraction": float("nan"), "probe_seed": -1, "metric": metric, "value": float(value),
                                "feature": "", "status": "ok"})  # fmt: skip
        if probes_file.exists():
            probes = pd.read_parquet(probes_file)
            for p in probes.itertuples(index=False):
                variant = row["variant"] if p.encoder == "pretrained" else "random_init"
                result_rows.append({**lineage, "variant": variant, "task": p.task, "eval": p.method,
                                    "fraction": float(p.fraction), "probe_seed": int(p.probe_seed)
                                    if pd.notna(p.probe_seed) else -1, "metric": p.metric, "value": float(p.value),
                                    "feature": getattr(p, "feature", ""), "status": p.status})  # fmt: skip
    return {
        "results": pd.DataFrame(result_rows, columns=_columns(result_rows, RESULT_COLUMNS)),
        "trials": pd.DataFrame(trial_rows, columns=_columns(trial_rows, TRIAL_COLUMNS)),
        "curves": pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS)),
    }


def write_tables(run_dir: str | Path, run_id: str) -> dict[str, Path]:
    """Collect and write results.parquet/.csv, trials.parquet and curves.parquet atomically.

    Returns:
        Name -> written path.
    """
    run_dir = Path(run_dir)
    tables = collect_tables(run_dir, run_id)
    paths = {}
    for name, frame in tables.items():
        path = run_dir / f"{name}.parquet"
        atomic_write_bytes(path, frame.to_parquet(index=False))
        paths[name] = path
    atomic_write_text(run_dir / "results.csv", tables["results"].to_csv(index=False))
    paths["results_csv"] = run_dir / "results.csv"
    log.info("%d result rows from %d trials written to %s", len(tables["results"]), len(tables["trials"]), run_dir)
    return paths


def sweep_timing(run_dir: str | Path, stages: dict[str, float]) -> dict[str, float]:
    """Where a sweep's wall time went: the driver's stages plus per-trial sums from ``trial.json``.

    Args:
        run_dir: the run directory.
        stages: the driver's own wall seconds (``data_s``, ``ray_start_s``, ``sweep_s``, ...).

    Returns:
        ``stages`` plus ``trials``, and summed over trials: ``trial_fit_s`` (each TorchTrainer.fit,
        worker-group start included), ``trial_epochs_s`` (inside the training epochs),
        ``trial_worker_start_and_checkpoints_s`` (the difference), ``trial_text_features_s`` (the
        text tower pass, paid by the trial that built the feature cache) and ``trial_probes_s``.
        Trials run concurrently, so the sums can exceed ``sweep_s``.
    """
    summaries = []
    for path in sorted(Path(run_dir).glob("trials/*/trial.json")):
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    fit = sum(float(t.get("pretrain_seconds", 0.0)) for t in summaries)
    epochs = sum(float(t.get("train_seconds", 0.0)) for t in summaries)
    out = {k: round(v, 1) for k, v in stages.items()}
    out.update(
        trials=len(summaries),
        trial_fit_s=round(fit, 1),
        trial_epochs_s=round(epochs, 1),
        trial_worker_start_and_checkpoints_s=round(fit - epochs, 1),
        trial_text_features_s=round(sum(float(t.get("metrics", {}).get("text_features_s", 0.0)) for t in summaries), 1),
        trial_probes_s=round(sum(float(t.get("probe_seconds", 0.0)) for t in summaries), 1),
    )
    return out


def placement_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every placement record of a run (``RUN_DIR/placement/*.json``: build, stage, train_worker, probe tasks)."""
    records = []
    for path in sorted((Path(run_dir) / "placement").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a record being written
    return sorted(records, key=lambda r: float(r.get("time", 0.0)))


def trial_placement(run_dir: str | Path, name: str, trial_id: str | None = None) -> dict[str, Any]:
    """Where one trial's work ran: node per Train worker rank (its last start) and, given ``trial_id``, per probe task.

    Returns:
        ``{"workers": [{"rank", "node_id", "gpu_ids"}], "nodes": [distinct worker nodes],
        "probes": [{"eval", "task", "node_id", "gpu_ids", "gpus", "seconds"}]}``.
    """
    workers: dict[int, dict[str, Any]] = {}
    probes = []
    for r in placement_records(run_dir):
        if r.get("kind") == "train_worker" and r.get("trial") == name:
            workers[int(r["rank"])] = {"rank": int(r["rank"]), "node_id": r["node_id"], "gpu_ids": r["gpu_ids"]}
        elif r.get("kind") == "probe" and trial_id is not None and r.get("trial") == trial_id:
            probes.append({k: r.get(k) for k in ("eval", "task", "node_id", "gpu_ids", "gpus")}
                          | {"seconds": round(float(r["time"]) - float(r["started"]), 3)})  # fmt: skip
    ordered = [workers[k] for k in sorted(workers)]
    return {"workers": ordered, "nodes": sorted({w["node_id"] for w in ordered}), "probes": probes}


def trial_gpu_hours(summary: dict[str, Any]) -> dict[str, float]:
    """Where one trial's GPU time went, from its ``trial.json``: training, probing, idle-but-held.

    ``training`` is its GPUs x the seconds inside the epochs; ``probing`` sums each probe task's GPU
    share x its seconds; ``idle_held`` is what the trial kept from the cluster without training on
    it: its GPUs x the span it held them minus ``training``. The span is from its training slot to
    the end of its fit (worker-group start, staging, checkpoints) when GPUs are held only while it
    fits (``gpu_slot: fit``), and its whole life, probing included, when the sweep caps trials in
    flight at the GPU count (``gpu_slot: trial``: its Tune slot is its GPUs' share).
    """
    gpus = float(summary.get("gpus", 0.0))
    line = summary.get("timeline", {})
    training = gpus * float(summary.get("train_seconds", 0.0))
    probing = sum(
        float(p.get("gpus") or 0.0) * float(p["seconds"]) for p in summary.get("placement", {}).get("probes", [])
    )
    if summary.get("gpu_slot") == "trial":
        span = float(line.get("probe_end", line.get("fit_end", 0.0))) - float(line.get("driver_start", 0.0))
    else:
        span = float(line.get("fit_end", 0.0)) - float(line.get("slot", line.get("fit_start", 0.0)))
    idle = max(0.0, gpus * span - training) if line else 0.0
    return {"training": training / 3600, "probing": probing / 3600, "idle_held": idle / 3600}


def sweep_gpu_hours(run_dir: str | Path) -> dict[str, Any]:
    """GPU-hours per trial (training, probing, idle-but-held) and their totals, for ``sweep.json`` and the summary."""
    per_trial = {}
    for path in sorted(Path(run_dir).glob("trials/*/trial.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        per_trial[summary.get("trial_id", path.parent.name)] = {
            k: round(v, 6) for k, v in trial_gpu_hours(summary).items()
        }
    total = {k: round(sum(t[k] for t in per_trial.values()), 6) for k in ("training", "probing", "idle_held")}
    return {"per_trial": per_trial, "total": total}


def write_placement(run_dir: str | Path) -> Path | None:
    """``RUN_DIR/placement.csv``: one row per placed task (kind, trial, rank, eval, task, node, GPU ids, times)."""
    records = placement_records(run_dir)
    if not records:
        return None
    columns = ["time", "kind", "trial", "rank", "eval", "task", "node_id", "gpu_ids", "device", "started", "reason"]
    frame = pd.DataFrame([{c: r.get(c, "") for c in columns} for r in records], columns=columns)
    frame["gpu_ids"] = frame["gpu_ids"].map(lambda ids: ",".join(ids) if isinstance(ids, list) else ids)
    path = Path(run_dir) / "placement.csv"
    atomic_write_text(path, frame.to_csv(index=False))
    return path

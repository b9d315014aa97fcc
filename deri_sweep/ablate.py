r"""Run a DERI ablation sweep end to end: ``python -m deri_sweep.ablate``.

With no arguments: writes the synthetic datasets if absent (./data), prepares
their caches, runs search_spaces/smoke.yaml on a local Ray, writes the result
tables and report, and prints where they are and how to open the dashboards.

On a cluster::

    ray job submit --address http://localhost:8265 --working-dir . -- \\
        python -m deri_sweep.ablate --space search_spaces/paper_ablation.yaml \\
        --caches mimic=/shared/caches/mimic ptbxl=/shared/caches/ptbxl --out /shared/runs/paper
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from deri_sweep.common.cli_args import name_dirs
from deri_sweep.common.strict_loader import ConfigError, from_dict, parse_override, to_dict
from deri_sweep.orchestration.results import sweep_gpu_hours, sweep_timing, write_placement
from deri_sweep.orchestration.spaces import SearchSpace, WorkspaceSpec, load_space, space_file

log = logging.getLogger("deri_sweep.ablate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m deri_sweep.ablate",
        description="Ablation sweep of DERI pretraining (Ray Tune + Optuna over Ray Train trials), "
        "each trial's checkpoint probed downstream, results aggregated into tables and an HTML report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("On a cluster::")[-1],
    )
    p.add_argument("--space", default="smoke", help="space YAML, or a name in search_spaces/ (default: smoke)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<space>-<time>); reuse it with --resume")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="where the synthetic datasets and their caches live when --caches is not given")  # fmt: skip
    p.add_argument("--caches", nargs="+", default=[], metavar="NAME=DIR",
                   help="prepared caches: mimic= (pretraining) and probe datasets ptbxl=, cpsc2018=, csn=")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value of every trial (--set optim.epochs=5), or a field of the "
                        "space's trial/probes/scheduler/workspace/decide sections (--set trial.workers=1)")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="pretraining seeds of every configuration, instead of the space's (e.g. --seeds 42 for "
                        "a quick look; confidence intervals need at least two)")  # fmt: skip
    p.add_argument(
        "--no-stage", action="store_true",
        help="read the pretraining cache from shared storage even on nodes whose cluster config sets "
        "DERI_LOCAL_DISK (by default each such node gets one verified local copy)",
    )  # fmt: skip
    p.add_argument(
        "--tracker", action="append", default=[], metavar="mlflow[=URI]|wandb",
        help="also log each trial (named variant-seed: resolved config, per-epoch curves, probe metrics, "
        "GPU-hours, sweep id and git commit) to MLflow (default store sqlite:///OUT/mlflow.db) or W&B "
        "(offline unless WANDB_MODE is set); repeat for both. Needs pip install -e '.[trackers]'",
    )  # fmt: skip
    p.add_argument("--storage", help="where Ray keeps checkpoints: a folder or s3:// / gs:// URI (default: --out)")
    p.add_argument(
        "--optuna-storage", help="Optuna RDB URL, e.g. postgresql://u:p@host/db (default: SQLite file in --out)"
    )
    p.add_argument("--budget-gpu-hours", type=float, default=math.inf,
                   help="start no new trial once trials used this many GPU-hours (CPU-hours on CPU)")  # fmt: skip
    p.add_argument("--concurrency", type=int,
                   help="trials training at once (default: what the cluster fits, at its reach when it is at rest); "
                        "finished trials probe beside them")  # fmt: skip
    p.add_argument(
        "--max-gpu-nodes",
        type=int,
        help="GPU nodes the autoscaler may start (sizes the default --concurrency on a cluster at rest)",
    )
    p.add_argument("--cluster-config", type=Path,
                   help="the Ray cluster YAML (clusters/*.yaml): its GPU node types' max_workers give the GPUs "
                        "a cluster at rest can reach")  # fmt: skip
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--no-report", action="store_true", help="skip building tables/ and report.html")
    p.add_argument("--verbose", action="store_true",
                   help="print Ray's and Tune's own output (worker logs, Tune's status table) here instead of "
                        "into RUN_DIR/ablate.log")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and check every trial (config, towers, probe feature, resources), print the plan "
                        "and exit: no Ray, no data written, seconds")  # fmt: skip
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON document")
    p.add_argument("--check-towers", action="store_true",
                   help="with --dry-run: also load every named text tower and report decoder offline; exit 1 "
                        "naming any that cannot load and how to pre-fetch it")  # fmt: skip
    p.add_argument("--local-towers", action="store_true",
                   help="swap hub-named towers for ones the package ships (text: embedded MiniLM; report "
                        "decoder: tiny GPT-2), to try a cluster space offline; recorded in sweep.json")  # fmt: skip
    p.add_argument(
        "--min-free-gb",
        type=float,
        default=1.0,
        help="refuse to start when --out (or a local --storage) has less free space (default 1 GiB)",
    )
    return p.parse_args(argv)


#: ``--set`` keys starting with one of these change the space itself, not the trials' base config
SPACE_SECTIONS = ("trial", "probes", "scheduler", "workspace", "decide")


def _apply_set(space: SearchSpace, pairs: list[str]) -> SearchSpace:
    """A new space with ``--set KEY=VALUE`` pairs applied (each parsed once, values read as YAML).

    ``trial.*``, ``probes.*``, ``scheduler.*``, ``workspace.*`` and ``decide.*`` set fields of the space
    (e.g. ``--set trial.workers=1``); every other key overrides the base config of every
    trial (e.g. ``--set optim.epochs=5``).

    Raises:
        ConfigError: a bad pair, an unknown key or a wrong type, naming the ``--set``.
    """
    data, checked = to_dict(space), space
    for override in map(parse_override, pairs):
        if override.keys[0] not in SPACE_SECTIONS:
            data["base"][override.key] = override.value
        else:
            node = data
            for key in override.keys[:-1]:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(override.named(f"{'.'.join(override.keys[:-1])} is not a section of the space"))
                node = node[key]
            node[override.keys[-1]] = override.value
        try:  # checked after each pair, so an error names the --set that caused it
            checked = from_dict(SearchSpace, data)
            checked.train_config({}, space.seeds[0])
        except ConfigError as exc:
            raise ConfigError(override.named(str(exc))) from exc
    return checked


def _caches(args: argparse.Namespace, workspace: WorkspaceSpec, *, build: bool = True) -> dict[str, Path]:
    """The caches of the run: ``--caches``, else the embedded default's (built when ``build``)."""
    if args.caches:
        try:
            return name_dirs(args.caches)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    from deri_sweep.data.signal import SignalOptions
    from deri_sweep.data.workspace import DATASETS, ensure_caches, ensure_synthetic

    root = args.data_dir / workspace.folder
    if not build:
        return {name: (root / name).resolve() for name in DATASETS}
    synth = ensure_synthetic(args.data_dir / "synthetic")
    signal = SignalOptions(workspace.fs, workspace.length, workspace.length)
    return {k: v.resolve() for k, v in ensure_caches(synth, root, signal=signal).items()}


def _load(args: argparse.Namespace) -> SearchSpace:
    """The space with ``--set`` applied to its base and, with ``--local-towers``, its towers swapped."""
    space = load_space(args.space)
    if args.overrides:
        space = _apply_set(space, args.overrides)
    if args.seeds:
        space = dataclasses.replace(space, seeds=list(dict.fromkeys(args.seeds)))
    if args.local_towers:
        space = space.with_local_towers()
    space.validate()  # every configuration the space can produce builds a TrainConfig
    return space


def _plan(args: argparse.Namespace, space: SearchSpace, caches: dict[str, Path]) -> list:
    """Every trial resolved and checked against the caches; an error names the space's file."""
    from deri_sweep.orchestration.dry_run import resolve_plan

    try:
        return resolve_plan(space, caches)
    except ConfigError as exc:
        raise ConfigError(f"{space_file(args.space)}: {exc}") from exc


def dry_run(args: argparse.Namespace) -> int:
    """``--dry-run``: print (or ``--json``) every resolved trial; check towers with ``--check-towers``."""
    from deri_sweep.orchestration.dry_run import check_towers, describe, plan_json

    try:
        space = _load(args)
        records = _plan(args, space, _caches(args, space.workspace, build=False))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan_json(space, records), indent=2, default=str))
    else:
        print(describe(space, records))
    if args.check_towers:
        errors = check_towers(space, records)
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        if errors:
            return 1
        print("towers: every named text tower and report decoder loads offline", file=sys.stderr)
    return 0


def _cluster_warnings(space: SearchSpace, records: list) -> list[str]:
    """The laptop text tower on a cluster that has GPUs is worth shouting about."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    embedded = [r for r in records if r.config.model.text.name == "embedded"]
    if gpus > 0 and embedded and space.trial.gpus_per_worker == 0:
        return [f"this cluster has {gpus:g} GPUs but the trials train on CPU with the laptop text tower 'embedded'"]
    return []


def _trackers(given: list[str]) -> list:
    """``--tracker`` values, checked before Ray starts (unknown name, package not installed)."""
    from deri_sweep.orchestration.trackers import Tracker

    try:
        return [Tracker.parse(text) for text in given]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def dashboard_commands(run_dir: Path, optuna_url: str | None, trackers: list) -> list[str]:
    """One line per tool that shows this run, with the command that opens it."""
    import importlib.util
    import shutil

    lines = ["Ray dashboard   http://127.0.0.1:8265 (while Ray runs; on a cluster: ray dashboard CLUSTER.yaml)"]
    if shutil.which("tensorboard") or importlib.util.find_spec("tensorboard"):
        lines.append(f"TensorBoard     tensorboard --logdir {run_dir / 'tune'}")
    if optuna_url:
        install = "" if importlib.util.find_spec("optuna_dashboard") else "pip install -e '.[dashboards]' && "
        lines.append(f"Optuna          {install}optuna-dashboard {optuna_url}")
    for tracker in trackers:
        if tracker.kind == "mlflow":
            lines.append(f"MLflow          mlflow ui --backend-store-uri {tracker.store(run_dir)}")
        elif tracker.store(run_dir) == "offline":
            lines.append(f"W&B (offline)   wandb sync {run_dir / 'tune'}/*/wandb/offline-run-*")
        else:
            lines.append(
                f"W&B             project {os.environ.get('WANDB_PROJECT', 'deri-sweep')}, group {run_dir.name}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.json or args.check_towers:
        args.dry_run = True
    if args.dry_run:
        return dry_run(args)
    from deri_sweep.orchestration.console import Console

    console = Console(verbose=args.verbose)
    try:
        return _run(args, console)
    except BaseException:
        if console.log_file is not None:  # the traceback follows on the console; the log holds Ray's side
            console.error(f"the run stopped; Ray's and Tune's output so far: {console.log_file}")
        console.release(keep_temporary=True)
        raise
    finally:
        if "ray" in sys.modules:  # Ray's log streaming stops before the console gets stdout back
            import ray

            if ray.is_initialized():
                ray.shutdown()
        console.release()  # a traceback raised from here reaches the person, not the log


def _run(args: argparse.Namespace, console: Any) -> int:
    """The run behind :func:`main`: our lines on ``console``, Ray's and Tune's output in the run's log."""
    from deri_sweep.common.storage import StorageError, check_writable
    from deri_sweep.data.cache import CacheError
    from deri_sweep.data.readers import DatasetError
    from deri_sweep.orchestration.console import LOG_NAME
    from deri_sweep.orchestration.dry_run import tower_warnings, towers_summary

    started = time.perf_counter()
    try:
        space = _load(args)
        run_dir = (args.out or Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        if args.resume and not (run_dir / "sweep.json").exists():
            raise ConfigError(f"--resume: {run_dir} holds no sweep (no sweep.json); pass the --out of the sweep")
        trackers = _trackers(args.tracker)
        console.capture()  # the data stage's progress bars and logs: into the run's log (a temporary file until then)
        with console.stage("data") as stage:
            caches = _caches(args, space.workspace)
            stage["detail"] = (
                "caches "
                + ", ".join(sorted(caches))
                + ("" if args.caches else f" in {args.data_dir / space.workspace.folder}")
            )
        if "mimic" not in caches:
            raise ConfigError("--caches needs mimic=DIR (the pretraining cache)")
        space = dataclasses.replace(space, base={**space.base, "data.cache": str(caches["mimic"])})
        space.validate()
        records = _plan(args, space, caches)
        hint = " (--min-free-gb lowers this check)"
        check_writable(run_dir, what="run directory", min_free_gb=args.min_free_gb, hint=hint)
        if args.storage and "://" not in args.storage:
            check_writable(args.storage, what="checkpoint storage", min_free_gb=args.min_free_gb, hint=hint)
    except (ConfigError, CacheError, DatasetError, StorageError) as exc:
        console.error(f"error: {exc}")
        return 2

    from deri_sweep.common.provenance import git_commit
    from deri_sweep.common.storage import atomic_write_text
    from deri_sweep.orchestration.console import SweepProgress, failure_cause
    from deri_sweep.orchestration.results import FINAL_REPORT_KEY
    from deri_sweep.orchestration.runtime import init_ray
    from deri_sweep.orchestration.sweep import (
        cluster_gpu_capacity,
        prebuild_text_features,
        run_sweep,
        stage_pretraining_caches,
    )
    from deri_sweep.orchestration.wrapup import finish_run

    run_dir.mkdir(parents=True, exist_ok=True)
    console.move_log(run_dir / LOG_NAME)
    variants = len({r.variant for r in records})
    console.line(f"{'run':<14s}{len(records):>6d} trials  {space.name}: {variants} variant(s) x "
                 f"{len({r.seed for r in records})} seed(s) -> {run_dir}")  # fmt: skip
    if args.verbose:
        console.line(f"{'':<22s}--verbose: Ray's and Tune's own output follows")
    else:
        console.line(f"{'':<22s}Ray's and Tune's own output: {run_dir / LOG_NAME} (--verbose prints it here)")
    meta_file = run_dir / "sweep.json"
    meta = json.loads(meta_file.read_text()) if args.resume else {
        "run_id": run_dir.name, "space": space.name, "baseline_variant": space.baseline, "metric": space.metric,
        "mode": space.mode, "objective": space.objective, "search": space.search, "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "caches": {k: str(v) for k, v in caches.items()},
        "towers": towers_summary(space, records, local=args.local_towers),
        **({"decide": to_dict(space.decide)} if space.search == "decide" else {}),
        **({"objectives": list(space.objectives)} if space.objectives else {}),
    }  # fmt: skip
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    timing = {"data_s": time.perf_counter() - started}
    with console.stage("Ray") as stage:
        init_ray(args.address)
        import ray

        stage["detail"] = f"{args.address or os.environ.get('RAY_ADDRESS') or 'local'}, " + ", ".join(
            f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")
        )
    timing["ray_start_s"] = stage["seconds"]
    warnings = _cluster_warnings(space, records) or tower_warnings(space, records)
    for line in warnings:
        log.warning(line)
        console.line(f"WARNING: {line}")
    optuna_url = args.optuna_storage or f"sqlite:///{run_dir / 'optuna.db'}"
    with console.stage("text features") as stage:
        timing["text_features_s"] = prebuild_text_features(space, str(run_dir))  # once (run_sweep would too)
        stage["detail"] = "built once for every trial" if timing["text_features_s"] else "already built"
    with console.stage("staging") as stage:
        timing["stage_s"] = 0.0 if args.no_stage else stage_pretraining_caches(space, str(run_dir))
        stage["detail"] = "off (--no-stage)" if args.no_stage else "pretraining cache on every node with a local disk"
    epochs = int(space.train_config({}, space.seeds[0]).optim.epochs)
    progress = SweepProgress(console, len(records), epochs, FINAL_REPORT_KEY, space.metric)
    with console.stage("sweep") as stage:
        grid = run_sweep(
            space, run_dir, caches, run_id=meta["run_id"], optuna_storage=optuna_url, storage=args.storage,
            budget_hours=args.budget_gpu_hours, resume=args.resume, concurrency=args.concurrency,
            stage=not args.no_stage, trackers=trackers,
            capacity=cluster_gpu_capacity(args.cluster_config, args.max_gpu_nodes),
            callbacks=[progress], verbose=1 if args.verbose else 0,
        )  # fmt: skip
        errors = [r for r in grid if r.error is not None]
        stage["detail"] = f"{len(grid)} trials, {len(errors)} failed"
    timing["sweep_s"] = stage["seconds"]
    with console.stage("tables") as stage:
        paths = finish_run(run_dir, meta["run_id"], optuna_url if space.search == "optuna" else None)
        stage["detail"] = str(paths["comparison_md"]) if "comparison_md" in paths else ""
    timing["tables_s"] = stage["seconds"]
    with console.stage("report") as stage:
        if not args.no_report:
            from analysis.report import build_report

            paths.update(build_report(run_dir))
        stage["detail"] = "off (--no-report)" if args.no_report else str(paths.get("report", ""))
    timing["report_s"] = stage["seconds"]
    timing["total_s"] = time.perf_counter() - started
    meta.update(timing=sweep_timing(run_dir, timing), warnings=warnings, gpu_hours=sweep_gpu_hours(run_dir))
    write_placement(run_dir)
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    say = console.line
    say(f"\nsweep {meta['run_id']}: {len(grid)} trials ({len(errors)} failed) in {run_dir}")
    for line in warnings:
        say(f"  WARNING: {line}")
    spent = {k.removesuffix("_s"): v for k, v in meta["timing"].items() if k.endswith("_s")}
    say("  time (s; trial_* summed over trials): " + ", ".join(f"{k} {v:.0f}" for k, v in spent.items()))
    if meta["gpu_hours"]["per_trial"] and space.trial.gpus_per_worker > 0:
        total = meta["gpu_hours"]["total"]
        say(
            f"  GPU-hours: training {total['training']:.3f}, probing {total['probing']:.3f}, idle but held "
            f"{total['idle_held']:.3f} (per trial: sweep.json gpu_hours; where each task ran: placement.csv)"
        )
    for r in errors:  # the whole error, on the console: a failure must not hide in the log
        text = str(r.error).strip()
        say(f"  failed: {Path(r.path).name}: {failure_cause(text) if text else type(r.error).__name__}")
        say("    " + "\n    ".join(text.splitlines()[-25:]))
    for name in ("results", "trials", "report", "comparison_md"):
        if name in paths:
            say(f"  {name:14s} {paths[name]}")
    say("\nbrowse it:")
    for line in dashboard_commands(run_dir, optuna_url if space.search == "optuna" else None, trackers):
        say(f"  {line}")
    if console.log_file is not None:
        say(f"  Ray and Tune    {console.log_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

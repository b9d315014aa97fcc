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
import json
import logging
import math
import sys
import time
from pathlib import Path

from deri_sweep.config import ConfigError, parse_override

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
                   help="override a base config value of every trial, e.g. --set optim.epochs=5")  # fmt: skip
    p.add_argument("--storage", help="where Ray keeps checkpoints: a folder or s3:// / gs:// URI (default: --out)")
    p.add_argument(
        "--optuna-storage", help="Optuna RDB URL, e.g. postgresql://u:p@host/db (default: SQLite file in --out)"
    )
    p.add_argument("--budget-gpu-hours", type=float, default=math.inf,
                   help="start no new trial once trials used this many GPU-hours (CPU-hours on CPU)")  # fmt: skip
    p.add_argument("--concurrency", type=int, help="max concurrent trials (default: what the cluster fits)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--no-report", action="store_true", help="skip building tables/ and report.html")
    p.add_argument(
        "--min-free-gb",
        type=float,
        default=1.0,
        help="refuse to start when --out (or a local --storage) has less free space (default 1 GiB)",
    )
    return p.parse_args(argv)


def _set_overrides(pairs: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs as ``{dotted key: value}``, each value read as YAML (see ``parse_override``)."""
    return {".".join(keys): value for keys, value in map(parse_override, pairs)}


def _caches(args: argparse.Namespace) -> dict[str, Path]:
    if args.caches:
        pairs = [c.partition("=") for c in args.caches]
        bad = [c for c, sep, _ in pairs if not sep]
        if bad:
            raise ConfigError(f"--caches {bad[0]!r}: expected NAME=DIR, e.g. mimic=/data/caches/mimic")
        return {name: Path(path).resolve() for name, _, path in pairs}
    from deri_sweep.data.workspace import ensure_caches, ensure_synthetic

    synth = ensure_synthetic(args.data_dir / "synthetic")
    return {k: v.resolve() for k, v in ensure_caches(synth, args.data_dir / "caches").items()}


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from deri_sweep.data.cache import CacheError
    from deri_sweep.data.readers import DatasetError
    from deri_sweep.io_utils import StorageError, check_writable
    from deri_sweep.orchestration.spaces import load_space

    try:
        space = load_space(args.space)
        if args.overrides:
            space.base.update(_set_overrides(args.overrides))
            space.validate()
        run_dir = (args.out or Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        if args.resume and not (run_dir / "sweep.json").exists():
            raise ConfigError(f"--resume: {run_dir} holds no sweep (no sweep.json); pass the --out of the sweep")
        caches = _caches(args)
        if "mimic" not in caches:
            raise ConfigError("--caches needs mimic=DIR (the pretraining cache)")
        space.base["data.cache"] = str(caches["mimic"])
        space.validate()
        hint = " (--min-free-gb lowers this check)"
        check_writable(run_dir, what="run directory", min_free_gb=args.min_free_gb, hint=hint)
        if args.storage and "://" not in args.storage:
            check_writable(args.storage, what="checkpoint storage", min_free_gb=args.min_free_gb, hint=hint)
    except (ConfigError, CacheError, DatasetError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from deri_sweep.checkpoint import git_commit
    from deri_sweep.io_utils import atomic_write_text
    from deri_sweep.orchestration.runtime import init_ray
    from deri_sweep.orchestration.sweep import run_sweep
    from deri_sweep.orchestration.wrapup import finish_run

    run_dir.mkdir(parents=True, exist_ok=True)
    meta_file = run_dir / "sweep.json"
    meta = json.loads(meta_file.read_text()) if args.resume else {
        "run_id": run_dir.name, "space": space.name, "baseline_variant": space.baseline, "metric": space.metric,
        "mode": space.mode, "objective": space.objective, "search": space.search, "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "caches": {k: str(v) for k, v in caches.items()},
    }  # fmt: skip
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    init_ray(args.address)
    optuna_url = args.optuna_storage or f"sqlite:///{run_dir / 'optuna.db'}"
    grid = run_sweep(
        space, run_dir, caches, run_id=meta["run_id"], optuna_storage=optuna_url, storage=args.storage,
        budget_hours=args.budget_gpu_hours, resume=args.resume, concurrency=args.concurrency,
    )  # fmt: skip
    paths = finish_run(run_dir, meta["run_id"], optuna_url if space.search == "optuna" else None)
    if not args.no_report:
        from analysis.report import build_report

        paths.update(build_report(run_dir))
    errors = [r for r in grid if r.error is not None]
    print(f"\nsweep {meta['run_id']}: {len(grid)} trials ({len(errors)} failed) in {run_dir}")
    for r in errors:
        cause = [line for line in str(r.error).splitlines() if line.strip()]
        print(f"  failed: {Path(r.path).name}: {cause[-1][:300] if cause else type(r.error).__name__}")
    for name in ("results", "trials", "report", "comparison_md"):
        if name in paths:
            print(f"  {name:14s} {paths[name]}")
    print("\nbrowse it:")
    print("  Ray dashboard   http://127.0.0.1:8265 (while Ray runs; on a cluster: ray dashboard CLUSTER.yaml)")
    print(f"  TensorBoard     tensorboard --logdir {run_dir / 'tune'}")
    if space.search == "optuna":
        print(f"  Optuna          pip install optuna-dashboard && optuna-dashboard {optuna_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluate one checkpoint downstream: ``python -m deri_sweep.probe``.

Runs the probe suite (feature extraction, then one linear-probe task per
(task, fraction, seed), zero-shot, and the random-init floor) as dependent
Ray tasks and writes a tidy table (CSV and parquet).

Example::

    python -m deri_sweep.probe --checkpoint runs/pretrain/t1/checkpoint_... \
        --caches ptbxl=data/caches/ptbxl cpsc2018=data/caches/cpsc2018 --fractions 0.01 0.1 1.0 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("deri_sweep.probe")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m deri_sweep.probe",
        description="Linear probes, zero-shot and the random-init floor for one pretraining checkpoint, "
        "run as dependent Ray tasks; writes a tidy CSV/parquet of results.",
        epilog=(__doc__ or "").split("Example::")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (holds state.pt, meta.json)")
    p.add_argument("--caches", nargs="+", required=True, metavar="NAME=DIR",
                   help="prepared downstream caches, e.g. ptbxl=data/caches/ptbxl cpsc2018=... csn=...")  # fmt: skip
    p.add_argument("--datasets", nargs="+", help="which of --caches to probe (default: all)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], help="training-data fractions")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="probe seeds per fraction")
    p.add_argument("--feature", choices=["mix", "aligned", "resnet"], default="mix", help="ECG feature to probe")
    p.add_argument("--epochs", type=int, default=100, help="linear-probe epochs (spec: 100)")
    p.add_argument("--no-zero-shot", action="store_true", help="skip zero-shot")
    p.add_argument("--no-floor", action="store_true", help="skip the random-init floor")
    p.add_argument("--cpus-per-task", type=float, default=0.25, help="CPUs per probe task")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per probe task (fractions share a card)")
    p.add_argument("--features-dir", type=Path, help="where extracted features are kept (default: next to --out)")
    p.add_argument("--out", type=Path, default=Path("probe_results.csv"), help="CSV to write (parquet beside it)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from deri_sweep.common.cli_args import name_dirs
    from deri_sweep.orchestration.spaces import ProbePlan
    from deri_sweep.train.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(args.checkpoint)
        caches = name_dirs(args.caches)
        datasets = args.datasets or list(caches)
        missing = [d for d in datasets if d not in caches]
        if missing:
            raise ValueError(f"--datasets {missing} have no --caches entry")
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = ProbePlan(
        datasets=datasets, fractions=args.fractions, seeds=args.seeds, feature=args.feature, epochs=args.epochs,
        zero_shot=not args.no_zero_shot, random_floor=not args.no_floor,
    )  # fmt: skip
    from deri_sweep.common.storage import atomic_write_bytes, atomic_write_text
    from deri_sweep.orchestration.probe_jobs import ProbeResources, collect, probe_suite
    from deri_sweep.orchestration.runtime import init_ray

    init_ray(args.address)
    features_dir = args.features_dir or args.out.parent / "features"
    resources = ProbeResources(args.cpus_per_task, args.gpus_per_task)
    table = collect(probe_suite(args.checkpoint, plan, caches, features_dir, resources=resources))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, table.to_csv(index=False))
    atomic_write_bytes(args.out.with_suffix(".parquet"), table.to_parquet(index=False))
    headline = table[(table["metric"] == "test_auroc")]
    if len(headline):
        summary = headline.groupby(["encoder", "task", "fraction"])["value"].mean().unstack("fraction")
        print(summary.round(4).to_string())
    failed = int((table.get("status") == "failed").sum()) if "status" in table else 0
    print(f"\n{len(table)} rows ({failed} failed tasks) written to {args.out} and {args.out.with_suffix('.parquet')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

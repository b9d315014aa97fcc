r"""Pretrain DERI on Ray Train: ``python -m deri_sweep.pretrain``.

Examples:
    Two CPU workers on this machine, the synthetic MIMIC cache, a short run::

        python -m deri_sweep.pretrain --set data.cache=data/caches/mimic --set optim.epochs=2 \\
            --set optim.batch_size=32 --workers 2 --cpus-per-worker 0.49

    Four GPUs on a cluster (the same command, other resources and storage)::

        python -m deri_sweep.pretrain --config my_run.yaml --workers 4 --gpus-per-worker 1 \\
            --storage s3://my-bucket/deri-runs --name deri-full-seed42

Running the same command again with the same ``--name`` and ``--storage``
continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from deri_sweep.common.strict_loader import ConfigError, apply_overrides, load_yaml
from deri_sweep.orchestration.runtime import init_ray
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deri_sweep.pretrain",
        description="Pretrain DERI as a Ray Train TorchTrainer job.",
        epilog=__doc__.split("Examples:")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML with sections model/data/optim (default: the spec's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.interaction.depth=4 (repeatable)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0: train on CPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (fractions allowed)")
    parser.add_argument("--storage", default="runs/pretrain", help="local folder or s3:// / gs:// URI for checkpoints")
    parser.add_argument("--name", help="run name (default: pretrain-<time>); reuse it to resume")
    parser.add_argument("--max-failures", type=int, default=2, help="restarts from the last checkpoint after a crash")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a new local Ray)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one pretraining job; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = (
            load_yaml(TrainConfig, args.config, args.overrides)
            if args.config
            else apply_overrides(TrainConfig(), args.overrides)
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        from deri_sweep.common.strict_loader import to_dict

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from deri_sweep.common.storage import StorageError, check_writable
    from deri_sweep.data.cache import CacheError, SignalCache

    try:
        SignalCache.open(cfg.data.cache)
    except CacheError as exc:
        print(f"error: data.cache: {exc}", file=sys.stderr)
        return 2
    try:
        if "://" not in args.storage:
            check_writable(args.storage, what="checkpoint storage", min_free_gb=0.5)
    except StorageError as exc:
        print(f"error: --storage: {exc}", file=sys.stderr)
        return 2
    init_ray(args.address)
    from deri_sweep.orchestration.trainer import TrialResources, build_trainer

    resources = TrialResources(args.workers, args.gpus_per_worker, args.cpus_per_worker)
    storage = args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    name = args.name or time.strftime("pretrain-%Y%m%d-%H%M%S")
    result = build_trainer(cfg, resources, storage=storage, name=name, max_failures=args.max_failures).fit()
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    print(json.dumps({"checkpoint": result.checkpoint.path if result.checkpoint else None, **result.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 26: which per-epoch signal ranks pretraining trials as their final probes do?

A real tiny sweep over ``tpe_joint``'s axes (interaction depth, decode_t / decode_e, the loss
weights w_mix, w_uma, w_dec_t, w_dec_e) on the synthetic caches: configurations are drawn by
the space's own define-by-run with Optuna's random sampler; every trial is trained to the end
(the plain recipe in this process: no Ray, no ASHA, so nothing is cut short) with every rung
signal recorded at every epoch, then probed as the sweep probes: linear heads on the final
checkpoint's frozen features of every PTB-XL task, objective = mean validation macro AUROC.

It prints, per signal and per epoch (rung), the Spearman correlation with the final objective,
and the regret of keeping the top third by that signal at the first rung (best final objective
overall minus the best among the kept). One configuration is repeated over three seeds to show
how much of the ranking is seed noise. Last line: ``ratio: X``, the first-rung Spearman of the
best downstream signal (``rung_probe_auroc`` or ``rankme``) over ``max(rho_val_total, 0.05)``.

Usage:
    .venv/bin/python benchmarks/bench_signals.py --quick   # 10 configurations x 4 epochs, + 2 seed repeats
    .venv/bin/python benchmarks/bench_signals.py           # 16 configurations x 4 epochs, + 2 seed repeats
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

#: the whole 10 s record at 50 Hz: a batch-8 step costs a quarter of the default's (100 Hz, batch 16), and 80
#: such steps still take every seed of full DERI 0.07-0.36 AUROC above its random-init floor in all 8 cells
FS, LENGTH = 50, 500
SIGNALS = ("rung_probe_auroc", "rankme", "val_total", "val_cma", "val_uma")
#: larger is better for these; smaller for the losses
LARGER_BETTER = {"rung_probe_auroc", "rankme"}


def build_caches(root: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Synthetic MIMIC (pretraining) and PTB-XL (probes) caches of 10 s records at 50 Hz."""
    from deri_sweep.data.prepare import PrepareOptions, prepare
    from deri_sweep.data.signal import SignalOptions
    from deri_sweep.data.synth import write_all

    write_all(root / "raw", seed=7, sizes=sizes, defect_rate=0.0)
    short = SignalOptions(fs=FS, length=LENGTH, window=LENGTH)
    caches = {}
    for name, folder in (("mimic", "mimic-iv-ecg"), ("ptbxl", "ptb-xl")):
        prepare(root / "raw" / folder, root / name, PrepareOptions(name, short, shard_size=256, progress=False))
        caches[name] = root / name
    return caches


def configurations(count: int, seed: int) -> list[dict]:
    """``count`` configurations of tpe_joint's axes (depth capped for CPU), by its define-by-run."""
    import optuna

    from deri_sweep.orchestration.spaces import ParamSpec, define_by_run, load_space

    params = dict(load_space("tpe_joint").optuna)
    params["model.interaction.depth"] = ParamSpec("int", 0, 2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sample, out = define_by_run(params), []
    for _ in range(count):
        trial = study.ask()
        sample(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def _one_thread() -> None:
    """Trial processes: one torch thread each (``--jobs`` of them share the machine), warnings only."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def run_trial(
    overrides: dict, seed: int, caches: dict[str, Path], args: argparse.Namespace
) -> tuple[list, float, float]:
    """Pretrain one configuration to the end (signals every epoch), then its final probe objective.

    Returns:
        (every epoch's metrics, the final probe objective, wall seconds).
    """
    started = time.perf_counter()
    from deri_sweep.common.strict_loader import Override, with_overrides
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate.features import extract_features
    from deri_sweep.evaluate.linear_probe import ProbeConfig
    from deri_sweep.evaluate.probe_tasks import run_linear_probes, tasks_of_cache
    from deri_sweep.model.deri import DERI
    from deri_sweep.train.recipe import WorkerInfo, run_worker
    from deri_sweep.train.train_config import TrainConfig

    base = {
        "data.cache": str(caches["mimic"]), "model.ecg.num_samples": LENGTH, "model.loss.w_dec_t": 0.0,
        "model.loss.w_dec_e": 0.0, "optim.batch_size": args.batch, "optim.lr": 3e-4, "optim.t0": 10**6,
        "optim.epochs": args.epochs, "max_steps_per_epoch": args.steps, "data.loader_workers": 0,
        "signals.cache": str(caches["ptbxl"]), "signals.every": 1, "signals.train_records": args.signal_train,
        "signals.val_records": args.signal_val, "seed": seed,
    }  # fmt: skip
    cfg = with_overrides(TrainConfig(), [Override.of(k, v) for k, v in {**base, **overrides}.items()])
    reports: list[dict] = []
    models: list[DERI] = []

    def report(metrics: dict, directory: Path | None) -> None:
        if float(metrics["epoch"]).is_integer():
            reports.append(dict(metrics))
        if directory is not None and float(metrics["epoch"]) == cfg.optim.epochs:
            from deri_sweep.evaluate.pretrained import load_pretrained

            models.append(load_pretrained(directory)[0])

    run_worker(cfg, WorkerInfo(), report)
    cache = SignalCache.open(caches["ptbxl"])
    features = extract_features(models[-1], cache, "mix", norm=cfg.data.norm, progress=False)
    probe = ProbeConfig(epochs=args.probe_epochs)
    values = []
    for task in tasks_of_cache(cache):
        frame = run_linear_probes(features, cache, task, fractions=(1.0,), seeds=(0,), config=probe)
        values += frame[frame["metric"] == "best_val_auroc"]["value"].tolist()
    return reports, float(np.nanmean(values)), time.perf_counter() - started


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho over the pairs where both are finite."""
    from scipy.stats import spearmanr

    x, y = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    return float(spearmanr(x[keep], y[keep]).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 configurations x 4 epochs of 40 steps (full: 16 configurations)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=3, help="seed of the configuration draw")
    parser.add_argument("--jobs", type=int, default=2, help="trials trained at once (one process and thread each)")
    args = parser.parse_args()
    # batch 8 of 10 s at 50 Hz, 4 epochs of 40 steps: a trial leaves its near-collapsed start between steps 40
    # and 80, so epoch 1 ranks how trials leave it (rung probe rho over epochs 1-4: full 0.20, 0.36, 0.46, 0.84;
    # quick 0.15, 0.87, 0.69, 0.89). Longer trials do not help: at 5 epochs of 80 steps the configurations end within
    # 0.009 of each other (sd; seeds: 0.005), and the rung probe ranks them only at the last epoch (0.66)
    full = {"configs": 16, "epochs": 4, "steps": 40, "batch": 8, "probe_epochs": 30, "signal_train": 512,
            "signal_val": 160, "sizes": {"mimic": 1200, "ptbxl": 1600}}  # fmt: skip
    quick = {**full, "configs": 10, "probe_epochs": 20}
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-signals-") as tmp:
        caches = build_caches(Path(tmp), args.sizes)
        print(f"caches: {args.sizes} records, 10 s at {FS} Hz ({time.perf_counter() - started:.0f} s)", flush=True)
        configs = configurations(args.configs, args.seed)
        runs = [(i, c, 42) for i, c in enumerate(configs)] + [(0, configs[0], s) for s in (43, 44)]
        results = []
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:  # fmt: skip
            futures = {pool.submit(run_trial, overrides, seed, caches, args): (i, overrides, seed)
                       for i, overrides, seed in runs}  # fmt: skip
            for future in as_completed(futures):
                i, overrides, seed = futures[future]
                reports, objective, seconds = future.result()
                results.append((i, seed, overrides, reports, objective))
                short = {k.split(".")[-1]: (round(v, 2) if isinstance(v, float) else v) for k, v in overrides.items()}
                cost = np.mean([r["rung_signals_frac"] for r in reports])
                print(f"trial {i} seed {seed}: objective {objective:.4f}  {short}  ({seconds:.0f} s, signals "
                      f"{np.mean([r['rung_signals_s'] for r in reports]):.2f} s/rung = {cost:.0%} of an epoch)",
                      flush=True)  # fmt: skip
        results.sort(key=lambda r: (r[0], r[1]))
    main_runs = [r for r in results if r[1] == 42]
    objective = [r[4] for r in main_runs]
    epochs = range(1, args.epochs + 1)
    keep = math.ceil(len(main_runs) / 3)
    best = max(objective)
    print(f"\n{len(main_runs)} configurations x {args.epochs} epochs of {args.steps} steps (batch {args.batch}); "
          f"objective = mean val AUROC of linear probes on 4 PTB-XL tasks ({args.probe_epochs} epochs)")  # fmt: skip
    print(f"Spearman rho with the final objective, per epoch (losses negated: > 0 ranks the right way round); "
          f"regret of keeping the top {keep} at epoch 1")  # fmt: skip
    print(f"{'signal':<18}" + "".join(f"{f'epoch {e}':>10}" for e in epochs) + f"{'regret@1':>10}")
    first_rho = {}
    for name in SIGNALS:
        rhos = []
        sign = 1.0 if name in LARGER_BETTER else -1.0  # oriented: a loss ranks well when rho(-loss, objective) > 0
        for e in epochs:
            values = [sign * r[3][e - 1].get(name, math.nan) for r in main_runs]
            rhos.append(spearman(values, objective))
        at_first = np.array([r[3][0].get(name, math.nan) for r in main_runs], float)
        order = np.argsort(-at_first if name in LARGER_BETTER else at_first)  # NaN last
        regret = best - max(objective[j] for j in order[:keep])
        first_rho[name] = rhos[0]
        print(f"{name:<18}" + "".join(f"{rho:>10.3f}" for rho in rhos) + f"{regret:>10.4f}")
    seeds = [r[4] for r in results if r[0] == 0]
    rung_seeds = [r[3][0]["rung_probe_auroc"] for r in results if r[0] == 0]
    print(f"\nseed noise (configuration 0 over seeds 42, 43, 44): objective {np.round(seeds, 4).tolist()} "
          f"(sd {np.std(seeds, ddof=1):.4f}; sd across configurations {np.std(objective, ddof=1):.4f}); "
          f"epoch-1 rung_probe_auroc {np.round(rung_seeds, 4).tolist()}")  # fmt: skip
    cost = [r["rung_signals_s"] for res in results for r in res[3]]
    frac = [r["rung_signals_frac"] for res in results for r in res[3]]
    print(f"signal cost: {np.mean(cost):.2f} s per rung, {np.mean(frac):.1%} of an epoch (mean of {len(cost)} rungs)")
    downstream = max(("rung_probe_auroc", "rankme"), key=lambda n: -math.inf if math.isnan(first_rho[n])
                     else first_rho[n])  # fmt: skip
    rho_total = first_rho["val_total"]
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"best downstream signal at epoch 1: {downstream} rho {first_rho[downstream]:.3f}; "
          f"val_total rho {rho_total:.3f} (denominator max(rho, 0.05) = {max(rho_total, 0.05):.3f})")  # fmt: skip
    print(f"ratio: {first_rho[downstream] / max(rho_total, 0.05):.2f}")


if __name__ == "__main__":
    main()

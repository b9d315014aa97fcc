"""The sweep's orchestration overhead: how much of its wall time is training and probing.

Both paths run the same trials (the smoke space's variants at a tiny size: short
synthetic records, a few steps) on the same caches, and probe every checkpoint
with the same plan:

- ours: ``python -m deri_sweep.ablate`` -- one Ray session; Tune runs as many
  trials at once as the machine fits, each trial's TorchTrainer is released
  before its probes run as parallel Ray tasks, results are written as tables;
- baseline: the shell loop a researcher would write without it -- per trial,
  ``python -m deri_sweep.pretrain`` then ``python -m deri_sweep.probe``, one after
  the other, each process starting its own Ray.

Printed: the wall time of each path; for ours, the seconds spent inside trial
training (epochs, validation included) and inside probe work (submission to the
last result) summed over trials, their fraction of the sweep's wall time (with
concurrent trials it can pass 1), and the per-trial overhead
(``(wall - training - probes) / trials``, counting concurrency as overlap). The
last line is ``ratio: X``: the baseline's wall time over ours.

Usage: ``python benchmarks/bench_sweep.py [--quick] [--variants N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.synth import write_all

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SIZE = {  # the smoke space's trial shape at a size that fits a benchmark
    "model.ecg.num_samples": 1000,
    "optim.batch_size": 8,
    "optim.t0": 10000,
}
VARIANTS = {
    "full": {},
    "no_decode_t": {"model.interaction.decode_t": False},
    "no_decode_e": {"model.interaction.decode_e": False, "model.loss.w_dec_e": 0.0},
    "no_rme": {"model.rme.enabled": False, "model.loss.w_uma": 0.0},
}


def _space(variants: int, epochs: int, steps: int, workers: int, probe_epochs: int) -> dict:
    return {
        "name": "bench",
        "search": "grid",
        "base": {**SIZE, "optim.epochs": epochs, "max_steps_per_epoch": steps},
        "variants": dict(list(VARIANTS.items())[:variants]),
        "seeds": [42],
        "baseline": "full",
        "scheduler": {"type": "none"},
        "trial": {"workers": workers, "cpus_per_worker": 0.49, "driver_cpus": 0.01},
        "probes": {"datasets": ["ptbxl"], "fractions": [1.0], "seeds": [0], "epochs": probe_epochs,
                   "zero_shot": False, "random_floor": False},
    }  # fmt: skip


def _run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def ours(space_file: Path, caches: dict[str, Path], work: Path) -> tuple[float, list[dict]]:
    """The sweep through the CLI; returns (wall seconds, trial summaries)."""
    run_dir = work / "ours"
    caches_args = [f"{k}={v}" for k, v in caches.items()]
    started = time.perf_counter()
    _run([sys.executable, "-m", "deri_sweep.ablate", "--space", str(space_file), "--out", str(run_dir),
          "--no-report", "--min-free-gb", "0", "--caches", *caches_args], work)  # fmt: skip
    wall = time.perf_counter() - started
    return wall, [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*/trial.json"))]


def baseline(space: dict, caches: dict[str, Path], work: Path) -> float:
    """Per trial: the pretrain CLI, then the probe CLI; returns wall seconds."""
    started = time.perf_counter()
    for name, overrides in space["variants"].items():
        sets = [f"--set={k}={v}" for k, v in {**space["base"], **overrides, "data.cache": caches["mimic"]}.items()]
        workers, storage = str(space["trial"]["workers"]), str(work / "baseline")
        out = _run([sys.executable, "-m", "deri_sweep.pretrain", *sets, "--workers", workers,
                    "--cpus-per-worker", "0.49", "--storage", storage, "--name", name], work)  # fmt: skip
        checkpoint = json.loads(out[out.index("{\n") :])["checkpoint"]
        _run([sys.executable, "-m", "deri_sweep.probe", "--checkpoint", checkpoint, "--caches",
              f"ptbxl={caches['ptbxl']}", "--fractions", "1.0", "--epochs", str(space["probes"]["epochs"]),
              "--no-zero-shot", "--no-floor", "--out", str(work / "baseline" / f"{name}.csv")], work)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one trial of one worker, short probes (under a minute)")
    p.add_argument("--variants", type=int, default=2, help="smoke-space variants to run (1-4; default 2)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    variants, epochs, steps, workers, probe_epochs = (1, 2, 2, 1, 5) if args.quick else (args.variants, 3, 6, 2, 30)
    space = _space(variants, epochs, steps, workers, probe_epochs)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        write_all(work / "synth", seed=3, sizes={"mimic": 300, "ptbxl": 120}, datasets=("mimic", "ptbxl"))
        short = SignalOptions(length=1000, window=1000)
        caches = {}
        for name, folder in (("mimic", "mimic-iv-ecg"), ("ptbxl", "ptb-xl")):
            prepare(work / "synth" / folder, work / name, PrepareOptions(name, short, progress=False))
            caches[name] = work / name
        space_file = work / "bench.yaml"
        space_file.write_text(yaml.safe_dump(space))
        print(f"{variants} trial(s) of {workers} worker(s), {epochs} epochs x {steps} steps, 4 PTB-XL probe tasks")
        base_wall = baseline(space, caches, work)
        our_wall, trials = ours(space_file, caches, work)
    train = sum(t["train_seconds"] for t in trials)
    probes = sum(t.get("probe_seconds", 0.0) for t in trials)
    fits = sum(t["pretrain_seconds"] for t in trials)
    print(f"baseline (pretrain + probe CLI per trial): {base_wall:.1f} s")
    print(f"ours (python -m deri_sweep.ablate):        {our_wall:.1f} s for {len(trials)} trials")
    print(f"  inside training {train:.1f} s, inside probes {probes:.1f} s (summed over trials)")
    print(f"  fit wall {fits:.1f} s, of which worker-group start and checkpoints {fits - train:.1f} s")
    print(f"  useful fraction of the sweep's wall time: {(train + probes) / our_wall:.2f}")
    print(f"  overhead per trial: {(our_wall - train - probes) / max(len(trials), 1):.1f} s")
    print(f"ratio: {base_wall / our_wall:.2f}")


if __name__ == "__main__":
    main()

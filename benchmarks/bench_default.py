"""The default run's cost: the space shipped before issue 29 against today's ``search_spaces/smoke.yaml``.

The baseline is the default as shipped before issue 29: its space (a one-worker TorchTrainer per
trial, four at a time), run with Ray's own worker-pool settings (``OLD_RAY_ENV``: keep at most
``num_cpus`` idle workers, kill them after 1 s, start workers ahead of demand; a local run now keeps
16 for 2 minutes and starts none ahead, ``runtime.LOCAL_WORKER_POOL_ENV``). Both run today's code.

Both spaces run end to end through the CLI (``python -m deri_sweep.ablate``: Ray start, text
features, the sweep, tables and report), one after the other in this run, on the same synthetic
caches (written and prepared once, with the embedded tower's text features, before any timing, so
neither pays the data stage or the tower). Each run is
its own process session; its cost is the CPU time (user + system) of every process of that session
-- the CLI, Ray's daemons, trial drivers, Train workers, probe tasks -- read from ``/proc`` every
0.2 s (a process that lives under 0.2 s is missed in both runs alike). Core-seconds, not wall
seconds: the machine is shared, and wall time on 2 cores mostly measures who else is running.

``--quick`` runs reduced copies of both spaces: the first pretraining seed (42) of every variant,
with its floor, zero-shot where the space has it, and every label set -- the same mix of variants
as the full run (one full-DERI and one MERL-like trial, training side by side), a quarter of the
trials; about 3 minutes here, most of it the old space. It used to run two seeds of the baseline
only: full-DERI trials only, whose interaction stack the narrower ResNet does not make cheaper, so
it read below the full run (2.44-2.69 against 3.56). The full run runs both spaces as shipped.
The table prints each run's core-seconds, wall seconds and ``sweep.json`` timing; the last line
is ``ratio: X`` (the old space's core-seconds over the new one's).

Usage: ``flock /tmp/raylock python benchmarks/bench_default.py [--quick] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

#: search_spaces/smoke.yaml as shipped before issue 29 (the baseline of this benchmark)
OLD_SMOKE = """\
name: smoke
description: the default before issue 29 (80 steps of batch 16, 100 probe epochs, 4 trials at a time)
search: grid
workspace: {fs: 100, length: 1000}
base:
  data.cache: data/caches-100hz-1000/mimic
  model.ecg.num_samples: 1000
  optim.batch_size: 16
  optim.lr: 3.0e-4
  optim.epochs: 2
  optim.t0: 1000000
  max_steps_per_epoch: 40
variants:
  full: {}
  merl_like: {model.interaction.decode_t: false, model.interaction.decode_e: false, model.fusion: false,
              model.loss.w_mix: 0.0, model.loss.w_dec_e: 0.0}
seeds: [42, 43, 44, 45]
metric: val_total
mode: min
objective: pretrain
baseline: full
scheduler: {type: none}
trial: {workers: 1, gpus_per_worker: 0, cpus_per_worker: 0.49, driver_cpus: 0.01}
probes:
  datasets: [ptbxl]
  fractions: [0.1, 1.0]
  seeds: [0, 1, 2]
  feature: mix
  epochs: 100
  zero_shot: true
  report_generation: false
  random_floor: true
"""

#: Ray's defaults (``ray_config_def.h``), which the default run used before issue 29
OLD_RAY_ENV = {
    "RAY_num_workers_soft_limit": "-1",
    "RAY_idle_worker_killing_time_threshold_ms": "1000",
    "RAY_enable_worker_prestart": "1",
    "RAY_prestart_worker_first_driver": "1",
}

TICKS = os.sysconf("SC_CLK_TCK")


#: process title (``/proc/PID/cmdline``) -> what the core-seconds are spent on
KINDS = (
    ("ray::RayTrainWorker", "train workers"),
    ("ray::TrainController", "Train controllers"),
    ("ray::ImplicitFunc", "trial drivers (and in-driver training)"),
    ("ray::_extract", "probes: features"),
    ("ray::_linear_probe", "probes: linear heads"),
    ("ray::_zero_shot", "probes: zero-shot"),
    ("ray::_build_text_features", "text features"),
    ("ray::IDLE", "idle Ray workers (start, imports)"),
    ("deri_sweep.ablate", "CLI (Tune loop, tables, report)"),
)


def _kind(title: str) -> str:
    for prefix, kind in KINDS:
        if prefix in title:
            return kind
    return "Ray daemons and other" if title else "unknown"


def _session_cpu(session: int, seen: dict[tuple[int, int], float], spent: dict[str, float]) -> None:
    """Record the CPU seconds so far of every live process of ``session``.

    ``seen``: (pid, start time) -> CPU seconds so far; ``spent``: the growth since the last look, added
    under the kind of the process's current title (a pooled Ray worker changes title with its task).
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # after "pid (comm)": state ppid pgrp session ... utime(11) stime(12) ... starttime(19)
            if int(fields[3]) != session:
                continue
            title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        key = (int(stat.parent.name), int(fields[19]))
        now = (int(fields[11]) + int(fields[12])) / TICKS
        kind = _kind(title)
        spent[kind] = spent.get(kind, 0.0) + now - seen.get(key, 0.0)
        seen[key] = now


def measure(
    args: list[str], cwd: Path, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[float, float, int, dict[str, float]]:
    """Run ``python -m deri_sweep.ablate ARGS`` in a new session, with ``extra_env`` set.

    Returns:
        (core-seconds of every process of the session, wall seconds, exit status, core-seconds by kind).
    """
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    seen: dict[tuple[int, int], float] = {}
    spent: dict[str, float] = {}
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "deri_sweep.ablate", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        while child.poll() is None:
            _session_cpu(child.pid, seen, spent)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    time.sleep(1.0)  # Ray's daemons may outlive the CLI by a moment: count them too, then make sure they end
    _session_cpu(child.pid, seen, spent)
    _stop_session(child.pid)
    return sum(seen.values()), wall, child.returncode, spent


def _stop_session(session: int) -> None:
    """Kill what is left of the run's session (only processes this benchmark started)."""
    import signal

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == session:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def reduced(space: dict, quick: bool) -> dict:
    """The space as run here: as shipped, or (``quick``) its first seed of every variant."""
    return {**space, "seeds": space["seeds"][:1]} if quick else space


def main() -> None:
    """Run both spaces and print their costs; last line ``ratio: X``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced copies of both spaces")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--only", choices=["old", "new"], help="run one of the two spaces (no ratio)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-default-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from deri_sweep.data.signal import SignalOptions
    from deri_sweep.data.workspace import ensure_caches, ensure_synthetic
    from deri_sweep.model.config import TextConfig
    from deri_sweep.model.text_cache import build_text_features, feature_dir
    from deri_sweep.model.text_tower import TextTower

    new = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    old = yaml.safe_load(OLD_SMOKE)
    for space in (old, new):  # the data stage and the text features, before any timing
        fs, length = space["workspace"]["fs"], space["workspace"]["length"]
        synth = ensure_synthetic(work / "data" / "synthetic")
        caches = ensure_caches(
            synth, work / "data" / f"caches-{fs}hz-{length}", signal=SignalOptions(fs, length, length), progress=False
        )
        text = TextConfig()  # the embedded tower both spaces use: built here, neither run pays for it
        if not (feature_dir(caches["mimic"], text) / "meta.json").exists():
            build_text_features(caches["mimic"], TextTower(text), device="cpu", progress=False)
    rows, kinds = {}, {}
    for label, space in (("old", old), ("new", new)):
        if args.only and label != args.only:
            continue
        space = reduced(space, args.quick)
        (work / f"{label}.yaml").write_text(yaml.safe_dump(space))
        cli = ["--space", str(work / f"{label}.yaml"), "--out", str(work / label), "--data-dir", str(work / "data"),
               "--min-free-gb", "0"]  # fmt: skip
        cores, wall, status, spent = measure(cli, work, work / f"{label}.log", OLD_RAY_ENV if label == "old" else None)
        if status != 0:
            raise SystemExit(f"{label}: exit {status}; see {work / f'{label}.log'}:\n"
                             + (work / f"{label}.log").read_text()[-3000:])  # fmt: skip
        timing = json.loads((work / label / "sweep.json").read_text())["timing"]
        rows[label] = (cores, wall, timing)
        kinds[label] = spent
    print(f"{'space':6s} {'core-s':>8s} {'wall-s':>8s}  sweep.json timing (s; trial_* summed over trials)")
    for label, (cores, wall, timing) in rows.items():
        spent = ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timing.items() if k.endswith("_s"))
        print(f"{label:6s} {cores:8.0f} {wall:8.0f}  {spent}")
    print("core-seconds by process kind:")
    for kind in sorted({k for spent in kinds.values() for k in spent}):
        print(f"  {kind:34s}" + "".join(f" {label} {spent.get(kind, 0.0):6.0f}" for label, spent in kinds.items()))
    if len(rows) == 2:
        print(f"wall ratio: {rows['old'][1] / rows['new'][1]:.2f}")
        print(f"ratio: {rows['old'][0] / rows['new'][0]:.2f}")


if __name__ == "__main__":
    main()

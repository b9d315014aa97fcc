"""Pretraining: the plain recipe in one process, and Ray Train TorchTrainer runs on CPU workers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deri_sweep.checkpoint import load_checkpoint
from deri_sweep.config import apply_overrides
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.pretraining import WorkerInfo, run_worker
from deri_sweep.train_config import TrainConfig

# 2 s of signal instead of 10 s keeps CPU steps short; everything else is the real pipeline
SHORT = SignalOptions(length=1000, window=1000)


@pytest.fixture(scope="module")
def mimic_cache(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "mimic"
    prepare(synth_root / "mimic-iv-ecg", out, PrepareOptions("mimic", SHORT, shard_size=128, progress=False))
    return out


def _config(cache: Path, **extra: object) -> TrainConfig:
    overrides = {
        "data.cache": str(cache),
        "model.ecg.num_samples": 1000,
        "optim.batch_size": 8,
        "optim.epochs": 3,
        "optim.t0": 10000,
        "max_steps_per_epoch": 4,
        **extra,
    }
    return apply_overrides(TrainConfig(), [f"{k}={v}" for k, v in overrides.items()])


class Collector:
    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.checkpoints: list[Path] = []
        self._keep: list[Path] = []

    def __call__(self, metrics: dict, directory: Path | None) -> None:
        self.metrics.append(metrics)
        if directory is not None:  # the recipe deletes its temp dir after reporting: copy it
            import shutil

            target = Path(f"{directory}-kept")
            shutil.copytree(directory, target)
            self.checkpoints.append(target)


def test_one_process_run_reports_checkpoints_and_resumes_exactly(mimic_cache):
    cfg = _config(mimic_cache, report_every_steps=2)
    full = Collector()
    last = run_worker(cfg, WorkerInfo(), full)
    epochs = [m for m in full.metrics if float(m["epoch"]).is_integer()]
    steps = [m for m in full.metrics if not float(m["epoch"]).is_integer()]
    assert [m["epoch"] for m in epochs] == [1.0, 2.0, 3.0] and len(steps) == 3  # step 2 of each 4-step epoch
    for key in (
        "train_total",
        "train_cma",
        "train_mix",
        "train_uma",
        "train_dec_e",
        "val_total",
        "lr",
        "samples_per_s",
    ):
        assert np.isfinite(last[key]), key
    assert last["cpu_hours"] > 0 and len(full.checkpoints) == 3
    state, meta = load_checkpoint(full.checkpoints[-1])
    assert meta["epoch"] == 2 and meta["config"]["model"]["interaction"]["depth"] == 2 and meta["git_commit"]
    assert meta["text_hidden_size"] == 384 and not any(k.startswith("text.") for k in state["model"])
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng"} <= set(state)
    # continue from the epoch-2 checkpoint: the last epoch repeats the uninterrupted run
    resumed = Collector()
    again = run_worker(cfg, WorkerInfo(), resumed, resume=full.checkpoints[1])
    assert [m["epoch"] for m in resumed.metrics if float(m["epoch"]).is_integer()] == [3.0]
    for key in ("train_total", "val_total", "step"):
        assert again[key] == pytest.approx(last[key], rel=1e-5), key


def test_training_lowers_the_loss(mimic_cache):
    cfg = _config(mimic_cache, **{"optim.epochs": 6, "max_steps_per_epoch": 6, "optim.lr": 3e-4})
    runs = Collector()
    run_worker(cfg, WorkerInfo(), runs)
    totals = [m["train_total"] for m in runs.metrics]
    assert np.mean(totals[-2:]) < totals[0] - 0.5, totals


# ----------------------------------------------------------------------------- Ray Train
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    from deri_sweep.orchestration.runtime import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _fit(cfg, workers, storage, name, **kwargs):
    from deri_sweep.orchestration.pretrain import TrialResources, build_trainer

    resources = TrialResources(workers=workers, cpus_per_worker=0.49)
    return build_trainer(cfg, resources, storage=str(storage), name=name, **kwargs).fit()


@pytest.fixture(scope="module")
def two_worker_run(mimic_cache, local_ray, tmp_path_factory):
    """An uninterrupted 2-worker run of 4 epochs (the reference of the tests below)."""
    cfg = _config(mimic_cache, **{"optim.epochs": 4})
    return cfg, _fit(cfg, 2, tmp_path_factory.mktemp("two-workers"), "two")


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_match_one_worker_with_the_same_global_batch(mimic_cache, two_worker_run, tmp_path):
    _, two = two_worker_run
    one = _fit(_config(mimic_cache, **{"optim.batch_size": 16, "optim.epochs": 4}), 1, tmp_path, "one")
    assert two.error is None and one.error is None
    assert (
        two.metrics["epoch"] == 4.0
        and json.loads((Path(two.checkpoint.path) / "meta.json").read_text())["world_size"] == 2
    )
    # same samples in every global step; BatchNorm statistics and dropout draws differ per worker
    for key in ("train_total", "val_total"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=0.05), key


@pytest.mark.slow
@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint_with_the_same_result(two_worker_run, tmp_path):
    import os
    import signal

    from ray.util.state import list_actors

    cfg, reference = two_worker_run
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "victim").glob("checkpoint_*/meta.json")):
            time.sleep(0.5)
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append(workers[-1].pid)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    victim = _fit(cfg, 2, tmp_path, "victim", max_failures=2)
    watcher.join(timeout=5)
    assert killed, "no worker was killed"
    assert victim.error is None and victim.metrics["epoch"] == 4.0
    epochs = victim.metrics_dataframe["epoch"].tolist()
    assert epochs.count(4.0) >= 1 and len(epochs) <= 5  # at most the epoch in flight was repeated
    for key in ("train_total", "val_total", "step"):
        assert victim.metrics[key] == pytest.approx(reference.metrics[key], rel=1e-4), key

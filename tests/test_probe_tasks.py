"""Probe suite as dependent Ray tasks: results for every (task, fraction, seed); failures recorded, never lost."""

from __future__ import annotations

import pytest

from deri_sweep.common.strict_loader import apply_overrides, to_dict
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.data.signal import SignalOptions
from deri_sweep.evaluate.pretrained import random_init
from deri_sweep.orchestration.spaces import ProbePlan
from deri_sweep.train.checkpoint import save_checkpoint
from deri_sweep.train.train_config import TrainConfig

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.integration]
SHORT = SignalOptions(length=1000, window=1000)


@pytest.fixture(scope="module")
def setup(synth_root, tmp_path_factory):
    from deri_sweep.orchestration.runtime import init_ray

    root = tmp_path_factory.mktemp("probe-tasks")
    prepare(synth_root / "ptb-xl", root / "ptbxl", PrepareOptions("ptbxl", SHORT, shard_size=128, progress=False))
    cfg = apply_overrides(TrainConfig(), ["model.ecg.num_samples=1000", f"data.cache={root / 'ptbxl'}"])
    model = random_init(cfg, 384, seed=3)
    meta = {"config": to_dict(cfg), "text_hidden_size": 384, "epoch": 0}
    checkpoint = save_checkpoint(root / "ckpt", {"model": model.state_dict(), "epoch": 0, "step": 0}, meta)
    init_ray(num_cpus=2)
    yield root, checkpoint
    ray.shutdown()


def test_suite_runs_one_probe_task_per_encoder_and_task_with_every_head_on_shared_features(setup):
    from deri_sweep.data.cache import SignalCache
    from deri_sweep.evaluate import ProbeConfig
    from deri_sweep.evaluate.features import cached_features
    from deri_sweep.evaluate.probe_tasks import run_linear_probes, tasks_of_cache
    from deri_sweep.orchestration.probe_jobs import collect, probe_suite

    root, checkpoint = setup
    plan = ProbePlan(datasets=["ptbxl"], fractions=[0.5, 1.0], seeds=[0, 1], epochs=3, zero_shot=False)
    pending = probe_suite(checkpoint, plan, {"ptbxl": root / "ptbxl"}, root / "features")
    assert len(pending) == 2 * 4  # encoders x tasks; each task trains its 2 fractions x 2 seeds heads together
    assert all(p.heads == ((0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (1.0, 1.0)) for p in pending)
    table = collect(pending)
    assert (table["status"] == "ok").all()
    headline = table[table["metric"] == "test_auroc"]
    assert len(headline) == 32 and headline["value"].between(0, 1).all()
    assert not headline.duplicated(["encoder", "task", "fraction", "probe_seed"]).any()
    assert set(headline["encoder"]) == {"pretrained", "random_init"}
    assert len(list((root / "features").glob("*/*/mix.npy"))) == 2  # one extraction per encoder, shared by 4 tasks
    # each head of the batched task is the head trained alone (same subset, init, shuffles: same AUROC)
    cache = SignalCache.open(root / "ptbxl")
    features = cached_features(checkpoint, root / "ptbxl", "mix", root / "features", progress=False)
    task = next(t for t in tasks_of_cache(cache) if t.name == "ptbxl_sub")
    alone = run_linear_probes(features, cache, task, [0.5], [1], ProbeConfig(epochs=3))
    alone = alone.loc[alone["metric"] == "test_auroc", "value"].item()
    batched = headline[(headline["encoder"] == "pretrained") & (headline["task"] == "ptbxl_sub")]
    batched = batched.loc[(batched["fraction"] == 0.5) & (batched["probe_seed"] == 1), "value"].item()
    assert batched == pytest.approx(alone, abs=1e-6)


def test_a_failing_task_is_retried_then_reported_as_failed(setup):
    from deri_sweep.orchestration.probe_jobs import collect, probe_suite

    root, checkpoint = setup
    broken = root / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((checkpoint / "meta.json").read_text())
    (broken / "state.pt").write_bytes(b"not a torch file")
    plan = ProbePlan(datasets=["ptbxl"], fractions=[0.5, 1.0], seeds=[0], epochs=2, zero_shot=False,
                     random_floor=False)  # fmt: skip
    table = collect(probe_suite(broken, plan, {"ptbxl": root / "ptbxl"}, root / "features-broken"))
    assert len(table) == 8 and (table["status"] == "failed").all()  # one row per head of each failed task
    heads = set(table[["task", "fraction", "probe_seed"]].itertuples(index=False, name=None))
    tasks = ("ptbxl_super", "ptbxl_sub", "ptbxl_form", "ptbxl_rhythm")
    assert heads == {(t, f, 0.0) for t in tasks for f in (0.5, 1.0)}


def test_report_generation_task_scores_reports_and_saves_samples_only_when_asked(setup):
    from deri_sweep.orchestration.probe_jobs import collect, probe_suite

    root, checkpoint = setup
    plan = ProbePlan(datasets=["ptbxl"], fractions=[1.0], seeds=[0], epochs=2, zero_shot=False, random_floor=False,
                     report_generation=True, report_epochs=1, report_samples=2)  # fmt: skip
    table = collect(probe_suite(checkpoint, plan, {"ptbxl": root / "ptbxl"}, root / "features", samples_dir=root / "s"))
    report = table[table["method"] == "report_generation"].set_index("metric")["value"]
    assert {"bleu1", "bleu4", "rougeL"} <= set(report.index) and report[["bleu1", "rougeL"]].between(0, 1).all()
    samples = (root / "s" / "ptbxl_report_samples.json").read_text()
    assert '"generated"' in samples and '"reference"' in samples

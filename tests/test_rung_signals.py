"""Rung signals: RankMe and the ridge probe AUROC against hand-computed and scikit-learn values; the recipe hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from deri_sweep.common.strict_loader import ConfigError, apply_overrides
from deri_sweep.train.recipe import WorkerInfo, run_worker
from deri_sweep.train.rung_signals import (
    RungSignalConfig,
    RungSignalProbe,
    macro_auroc,
    rankme,
    ridge_scores,
)
from deri_sweep.train.train_config import TrainConfig


def _with_singular_values(values: list[float], shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (N, D) matrix U diag(values) V^T with random orthonormal U and V."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], len(values))))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], len(values))))
    return u @ np.diag(values) @ v.T


def test_rankme_of_known_rank_matrices():
    # singular values (3, 1, 0, 0): p = (3/4, 1/4), RankMe = exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = 4 / 3^(3/4)
    z = _with_singular_values([3.0, 1.0, 0.0, 0.0], (50, 8))
    assert rankme(z) == pytest.approx(4 / 3**0.75, abs=3e-5)  # 1.7548; the paper's eps=1e-7 on 8 values adds < 2e-5
    # r equal singular values: exactly r; a collapsed embedding (every row the same direction): 1
    assert rankme(_with_singular_values([2.0] * 5, (40, 16))) == pytest.approx(5.0, abs=1e-4)
    assert rankme(np.outer(np.arange(1, 31), np.ones(8))) == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(rankme(np.full((4, 3), np.nan)))


def test_probe_auroc_matches_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 5)) < [0.5, 0.1, 0.3, 0.05, 0.0]).astype(np.uint8)  # the last class has no positive
    scores = np.round(rng.normal(size=(200, 5)) + y, 1)  # rounded: ties, which take average ranks
    expected = np.mean([roc_auc_score(y[:, c], scores[:, c]) for c in range(4)])
    assert macro_auroc(y, scores) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(macro_auroc(y[:, 4:], scores[:, 4:]))


def test_ridge_probe_is_scikit_learns_ridge_on_standardised_features():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 16)) * rng.uniform(0.1, 10, size=16) + 3.0
    y = (x[:, :3] + rng.normal(size=(120, 3)) * 4 > 3.0).astype(np.uint8)
    xv = rng.normal(size=(40, 16)) * 5
    mean, std = x.mean(0), x.std(0) + 1e-8
    oracle = Ridge(alpha=0.5 * len(x)).fit((x - mean) / std, y)
    ours = ridge_scores(x, y, xv, ridge=0.5)
    # the same ranking (we drop the intercept, which AUROC ignores)
    np.testing.assert_allclose(ours, oracle.predict((xv - mean) / std) - oracle.intercept_, atol=1e-9)


def _config(caches: dict, **extra: object) -> TrainConfig:
    overrides = {
        "data.cache": str(caches["mimic"]),
        "model.ecg.num_samples": 1000,
        "optim.batch_size": 4,
        "optim.epochs": 3,
        "optim.t0": 10000,
        "max_steps_per_epoch": 1,
        "signals.cache": str(caches["ptbxl"]),
        "signals.rungs": "[1]",
        "signals.train_records": 48,
        "signals.val_records": 16,
        **extra,
    }
    return apply_overrides(TrainConfig(), [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.slow  # an in-process pretraining run (and the text features of the shared cache)
def test_recipe_reports_the_signals_at_the_rungs_and_last_epoch_with_their_cost(short_caches):
    reports: list[dict] = []
    run_worker(_config(short_caches), WorkerInfo(), lambda metrics, _: reports.append(metrics))
    with_signals = [m["epoch"] for m in reports if math.isfinite(m["rung_probe_auroc"])]
    assert [m["epoch"] for m in reports] == [1.0, 2.0, 3.0] and with_signals == [1.0, 3.0]  # rung 1 and the last
    assert math.isnan(reports[1]["rankme"]) and "rung_signals_s" not in reports[1]  # NaN between rungs (Tune's check)
    for m in reports[0], reports[2]:
        assert 0.0 <= m["rung_probe_auroc"] <= 1.0 and 1.0 <= m["rankme"] <= 64  # <= 64 rows
        assert m["rung_signals_s"] > 0 and m["rung_signals_frac"] > 0  # seconds, and the fraction of the epoch
        assert {"val_cma", "val_total", "val_mix", "val_uma"} <= set(m)  # the unweighted terms are still there


def test_the_subset_is_fixed_and_bad_settings_name_their_key(short_caches):
    from deri_sweep.model.deri import DERI
    from deri_sweep.train.engine import seed_everything

    config = RungSignalConfig(cache=str(short_caches["ptbxl"]), train_records=48, val_records=16)
    first, again = (RungSignalProbe.load(config) for _ in range(2))
    assert first.n_train == 48 and 48 + 8 <= len(first.ecg) <= 48 + 16 and first.ecg.shape[1:] == (12, 1000)
    assert np.array_equal(first.ecg.numpy(), again.ecg.numpy())
    model_cfg = apply_overrides(TrainConfig(), ["model.ecg.num_samples=1000"]).model
    seed_everything(0)
    model = DERI(model_cfg, text_hidden_size=384)
    a, b = (probe.compute(model, device=torch.device("cpu")) for probe in (first, again))
    assert a["rung_probe_auroc"] == b["rung_probe_auroc"] and a["rankme"] == b["rankme"]
    with pytest.raises(ConfigError, match="signals.task='nope'"):
        RungSignalProbe.load(RungSignalConfig(cache=str(short_caches["ptbxl"]), task="nope"))
    with pytest.raises(ConfigError, match="model.ecg.num_samples"):
        RungSignalProbe.load(config, num_samples=5000)
    with pytest.raises(ConfigError, match="signals.every"):
        RungSignalConfig(every=-1)

"""Tests for deri_sweep.evaluate.linear_probe on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deri_sweep.evaluate.linear_probe import (
    ProbeConfig,
    fit_heads,
    init_head,
    linear_probe,
    linear_probe_many,
)
from deri_sweep.evaluate.probe_tasks import probe_fractions, probe_with_fraction, task_rows

FAST = ProbeConfig(epochs=8)


def gaussian_task(
    n: int, d: int = 16, c: int = 3, shift: float = 2.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-label records: x = noise + shift * sum of the class means of its labels; split 60/20/20."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(100).normal(size=(c, d))  # fixed across calls: one "true" task
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    x = (rng.normal(size=(n, d)) + shift * y @ means / np.sqrt(d)).astype(np.float32)
    split = np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10))
    return x, y, split


def blocks(x: np.ndarray, y: np.ndarray, split: np.ndarray) -> list[np.ndarray]:
    return [a[split == s] for s in ("train", "val", "test") for a in (x, y)]


def test_separable_features_reach_high_auroc() -> None:
    x, y, split = gaussian_task(1500, shift=6.0)
    result = linear_probe(*blocks(x, y, split), FAST, ["a", "b", "c"])
    assert result.test_auroc_at_best_val > 0.95
    assert result.class_names == ["a", "b", "c"]
    assert (result.n_train, result.n_val, result.n_test) == (900, 300, 300)


def test_noise_features_stay_near_chance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    y = (rng.random((3000, 3)) < 0.3).astype(np.uint8)
    split = np.array(["train"] * 1000 + ["val"] * 1000 + ["test"] * 1000)
    result = linear_probe(*blocks(x, y, split), FAST)
    # 1000 test records, 3 classes: the macro AUROC's sd under chance is ~0.012; the band is ~5 sd.
    assert 0.44 < result.test_auroc_at_best_val < 0.56


def test_result_bookkeeping() -> None:
    x, y, split = gaussian_task(600, shift=0.7)
    result = linear_probe(*blocks(x, y, split), FAST)
    assert len(result.val_curve) == len(result.test_curve) == FAST.epochs
    assert result.best_epoch == int(np.argmax(result.val_curve)) + 1
    assert result.best_val_auroc == result.val_curve[result.best_epoch - 1]
    assert result.test_auroc_at_best_val == result.test_curve[result.best_epoch - 1]
    assert result.max_test_auroc == max(result.test_curve) >= result.test_auroc_at_best_val
    assert np.nanmean(result.per_class_test_auroc) == pytest.approx(result.test_auroc_at_best_val)
    assert result.n_undefined_classes == 0 and result.seconds > 0
    assert result.to_dict()["best_epoch"] == result.best_epoch


def test_class_absent_from_train_and_undefined_in_test() -> None:
    x, y, split = gaussian_task(600)
    y[split == "train", 2] = 0  # never positive in train: the head just learns to push it down
    y[split == "test", 1] = 0  # one label value in test: NaN, counted, left out of the macro
    result = linear_probe(*blocks(x, y, split), FAST)
    assert np.isnan(result.per_class_test_auroc[1]) and result.n_undefined_classes == 1
    assert np.isfinite(result.test_auroc_at_best_val)
    assert result.test_auroc_at_best_val == pytest.approx(np.nanmean(result.per_class_test_auroc))


def reference_fit(x: np.ndarray, y: np.ndarray, seed: int, config: ProbeConfig) -> torch.Tensor:
    """The plain nn.Linear + torch.optim + BCEWithLogitsLoss loop that fit_heads must reproduce."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    with torch.no_grad():
        p = init_head(x.shape[1], y.shape[1], g)
        head.weight.copy_(p[:, :-1])
        head.bias.copy_(p[:, -1])
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(head.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=False)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    for _ in range(config.epochs):
        perm = torch.randperm(len(xt), generator=g)
        for batch in perm.split(config.batch_size):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(head(xt[batch]), yt[batch]).backward()
            opt.step()
    return torch.cat([head.weight, head.bias[:, None]], dim=1).detach()


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_fit_heads_matches_torch_optim_reference(optimizer: str) -> None:
    x, y, _ = gaussian_task(100, shift=1.0)  # 100 rows: six full batches of 16 and a short one of 4
    config = ProbeConfig(epochs=4, optimizer=optimizer, weight_decay=0.05)  # large decay: coupling matters
    params, _ = fit_heads(x, y, [np.arange(100)], [3], config)
    torch.testing.assert_close(params[0], reference_fit(x, y, 3, config), atol=2e-5, rtol=1e-4)


def test_many_heads_equal_separate_probes() -> None:
    x, y, split = gaussian_task(900, shift=1.0)
    tr_x, tr_y, *rest = blocks(x, y, split)
    rng = np.random.default_rng(5)
    subsets = [np.arange(len(tr_x)), np.sort(rng.choice(len(tr_x), 50, replace=False)), np.arange(100, 300)]
    seeds = [0, 1, 2]  # subset sizes 540 / 50 / 200: 34, 4 and 13 steps per epoch
    config = ProbeConfig(epochs=5)
    together = linear_probe_many(tr_x, tr_y, *rest, subsets, seeds, config)
    params, _ = fit_heads(tr_x, tr_y, subsets, seeds, config)
    for sub, seed, res, p in zip(subsets, seeds, together, params, strict=True):
        alone_cfg = ProbeConfig(epochs=5, seed=seed)
        alone = linear_probe(tr_x[sub], tr_y[sub], *rest, alone_cfg)
        np.testing.assert_allclose(res.val_curve, alone.val_curve, atol=1e-6)
        np.testing.assert_allclose(res.test_curve, alone.test_curve, atol=1e-6)
        assert res.best_epoch == alone.best_epoch and res.n_train == alone.n_train == len(sub)
        p_alone, _ = fit_heads(tr_x[sub], tr_y[sub], [np.arange(len(sub))], [seed], config)
        torch.testing.assert_close(p, p_alone[0], atol=1e-5, rtol=1e-5)


def test_task_rows_drop_unlabelled_and_nest_fractions() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((5000, 4)) < 0.2).astype(np.uint8)
    split = rng.choice(["train", "val", "test"], size=5000, p=[0.8, 0.1, 0.1])
    labelled = labels.sum(1) > 0
    n_train = int((labelled & (split == "train")).sum())
    rows = {f: task_rows(labels, split, f, seed=11) for f in (0.01, 0.1, 1.0)}
    for f, r in rows.items():
        assert len(r["train"]) == max(1, round(f * n_train))
        assert labelled[r["train"]].all() and (split[r["train"]] == "train").all()
        np.testing.assert_array_equal(r["val"], np.flatnonzero(labelled & (split == "val")))
        np.testing.assert_array_equal(r["test"], np.flatnonzero(labelled & (split == "test")))
    assert set(rows[0.01]["train"]) <= set(rows[0.1]["train"]) <= set(rows[1.0]["train"])
    assert not np.array_equal(task_rows(labels, split, 0.1, seed=12)["train"], rows[0.1]["train"])


def test_probe_fractions_batched_equals_single() -> None:
    x, y, split = gaussian_task(800, shift=1.0)
    y[:40] = 0  # unlabelled records are left out of every split
    config = ProbeConfig(epochs=4)
    results = probe_fractions(x, y, split, [0.1, 1.0], [0, 1], config)
    assert [(r.fraction, r.seed) for r in results] == [(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)]
    n_train = int(((split == "train") & (y.sum(1) > 0)).sum())
    assert [r.n_train for r in results] == [round(0.1 * n_train)] * 2 + [n_train] * 2
    single = probe_with_fraction(x, y, split, 0.1, 1, config)
    np.testing.assert_allclose(single.val_curve, results[1].val_curve, atol=1e-6)
    assert single.fraction == 0.1 and single.n_test == results[1].n_test


def test_bad_inputs_raise() -> None:
    x, y, split = gaussian_task(200)
    with pytest.raises(ValueError, match="class names"):
        linear_probe(*blocks(x, y, split), FAST, ["only-one"])
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(*blocks(x, y, split), ProbeConfig(epochs=1, optimizer="sgd"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty split"):
        probe_with_fraction(x, y, np.array(["train"] * 200), 1.0, 0, FAST)

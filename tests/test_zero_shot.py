"""Tests for deri_sweep.evaluate.zero_shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deri_sweep.evaluate.zero_shot import build_prompts, zero_shot_auroc, zero_shot_scores


def aligned_embeddings(n: int = 2000, c: int = 4, d: int = 32, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Class prompts = random directions; a record of class k = 3 x prompt k + small noise (one label each)."""
    rng = np.random.default_rng(seed)
    prompts = rng.normal(size=(c, d))
    cls = rng.integers(0, c, n)
    ecg = 3 * prompts[cls] / np.linalg.norm(prompts[cls], axis=1, keepdims=True) + 0.05 * rng.normal(size=(n, d))
    return ecg, prompts, np.eye(c, dtype=np.uint8)[cls]


def test_scores_are_cosine_similarities() -> None:
    rng = np.random.default_rng(1)
    ecg, cls = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    got = zero_shot_scores(ecg, cls)
    expected = (ecg @ cls.T) / np.outer(np.linalg.norm(ecg, axis=1), np.linalg.norm(cls, axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(zero_shot_scores(7 * ecg, torch.from_numpy(cls * 0.1)), got, atol=1e-12)
    assert got.shape == (5, 3) and np.abs(got).max() <= 1


def test_aligned_prompts_give_perfect_auroc() -> None:
    ecg, prompts, labels = aligned_embeddings()
    result = zero_shot_auroc(ecg, prompts, labels)
    assert result.macro == 1.0 and result.n_undefined == 0


def test_shuffled_labels_give_chance_auroc() -> None:
    ecg, prompts, labels = aligned_embeddings()
    shuffled = labels[np.random.default_rng(2).permutation(len(labels))]
    # 2000 records, 4 classes of ~500 positives: the macro AUROC's sd under chance is ~0.008.
    assert zero_shot_auroc(ecg, prompts, shuffled).macro == pytest.approx(0.5, abs=0.05)


def test_undefined_class_is_reported() -> None:
    ecg, prompts, labels = aligned_embeddings()
    labels[:, 3] = 0
    result = zero_shot_auroc(ecg, prompts, labels)
    assert result.undefined == [3] and result.macro == 1.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        zero_shot_scores(np.ones((2, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        zero_shot_scores(np.ones(4), np.ones((3, 4)))


def test_build_prompts() -> None:
    names = ["NORM", "AFIB", "LBBB", "STach"]
    descriptions = {"NORM": "Normal ECG", "afib": "Atrial  Fibrillation", "STACH": ""}
    synonyms = {"AFIB": ["AF", "atrial fibrillation", " irregular  rhythm "], "LBBB": ["left bundle branch block"]}
    assert build_prompts(names, descriptions, synonyms) == [
        "normal ecg",
        "atrial fibrillation, af, irregular rhythm",  # case-insensitive lookup, duplicate skipped
        "lbbb, left bundle branch block",  # no description: the class name
        "stach",  # empty description: the class name
    ]
    assert build_prompts(["NORM"], None) == ["norm"]

"""Tests for deri_sweep.evaluate.metrics: AUROC against brute force, macro handling, BLEU/ROUGE-L."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deri_sweep.evaluate.metrics import auroc, auroc_columns, macro_auroc, macro_over_defined, report_metrics


def brute_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ordered correctly; a tie counts one half."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(6))
def test_auroc_equals_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    y[:2] = [0, 1]  # both label values present
    scores = rng.integers(0, 6, n).astype(float) if seed % 2 == 0 else rng.normal(size=n)  # heavy ties / none
    assert auroc(y, scores) == pytest.approx(brute_auroc(y, scores), abs=1e-12)


def test_auroc_columns_matches_per_column_and_leading_dims() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random((200, 4)) < 0.3).astype(np.uint8)
    scores = rng.integers(0, 10, (3, 200, 4)).astype(np.float32)  # K=3 heads, many ties
    scores[1] = rng.normal(size=(200, 4))  # one head without ties
    got = auroc_columns(y, scores)
    assert got.shape == (3, 4)
    for k in range(3):
        for c in range(4):
            assert got[k, c] == pytest.approx(brute_auroc(y[:, c], scores[k, :, c]), abs=1e-12)


def test_auroc_known_values() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert auroc(y, s) == 1.0
    assert auroc(y, -s) == 0.0
    assert auroc(y, np.full(6, 0.4)) == 0.5
    assert math.isnan(auroc(np.ones(6), s))
    assert math.isnan(auroc(np.zeros(6), s))
    s_nan = s.copy()
    s_nan[0] = np.nan
    assert math.isnan(auroc(y, s_nan))
    assert np.isnan(auroc_columns(y[:, None], s_nan[:, None])).all()


def test_macro_auroc_reports_one_valued_classes() -> None:
    y = np.array([[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
    scores = np.array([[0.1, 0.5, 0.3, 0.9], [0.9, 0.5, 0.3, 0.1], [0.2, 0.5, 0.3, 0.8], [0.8, 0.5, 0.3, 0.2]])
    result = macro_auroc(y, scores)
    assert result.n_undefined == 2
    assert result.undefined == [1, 2]  # all 0 / all 1
    assert np.isnan(result.per_class[[1, 2]]).all()
    assert result.per_class[[0, 3]].tolist() == [1.0, 1.0]
    assert result.macro == 1.0
    none_defined = macro_auroc(np.zeros((4, 2)), scores[:, :2])
    assert math.isnan(none_defined.macro) and none_defined.n_undefined == 2


def test_macro_over_defined() -> None:
    per_class = np.array([[0.5, np.nan, 1.0], [np.nan, np.nan, np.nan]])
    got = macro_over_defined(per_class)
    assert got[0] == 0.75 and math.isnan(got[1])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="must be"):
        auroc_columns(np.zeros((5, 2)), np.zeros((5, 3)))


def test_report_metrics_identical_is_one() -> None:
    text = ["sinus rhythm with left axis deviation.", "atrial fibrillation with rapid ventricular response."]
    got = report_metrics(text, text)
    assert set(got) == {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL"}
    assert all(v == pytest.approx(1.0) for v in got.values())


def test_report_metrics_hand_computed_partial_overlap() -> None:
    # ref: sinus rhythm with left axis deviation (r = 6 tokens); hyp: sinus rhythm with normal axis (c = 5).
    # brevity penalty exp(1 - 6/5) = exp(-0.2). Clipped n-gram precisions:
    #   p1 = 4/5 (sinus, rhythm, with, axis); p2 = 2/4 (sinus rhythm, rhythm with);
    #   p3 = 1/3 (sinus rhythm with); p4 = 0/2 -> smoothing method 1: epsilon 0.1 / 2 = 0.05.
    # BLEU-n = BP * (p1...pn)^(1/n) (cumulative, uniform weights).
    # ROUGE-L: LCS = sinus rhythm with axis = 4; P = 4/5, R = 4/6, F1 = 2PR/(P+R) = 8/11.
    bp = math.exp(-0.2)
    expected = {
        "bleu1": bp * 0.8,
        "bleu2": bp * (0.8 * 0.5) ** (1 / 2),
        "bleu3": bp * (0.8 * 0.5 / 3) ** (1 / 3),
        "bleu4": bp * (0.8 * 0.5 / 3 * 0.05) ** (1 / 4),
        "rougeL": 8 / 11,
    }
    got = report_metrics(["sinus rhythm with left axis deviation"], ["sinus rhythm with normal axis"])
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["bleu1"] == pytest.approx(0.654985, abs=1e-6)  # the same numbers, evaluated
    assert got["bleu4"] == pytest.approx(0.233947, abs=1e-6)


def test_report_metrics_whitespace_tokens_and_mean() -> None:
    # "rhythm." and "rhythm" are different whitespace tokens for BOTH metrics (rouge-score's default
    # tokenizer would strip the full stop and give ROUGE-L 1.0): LCS 1 of 2 -> F1 0.5; BLEU-1 = 1/2.
    got = report_metrics(["sinus rhythm.", "normal ecg"], ["sinus rhythm", "normal ecg"])
    assert got["rougeL"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["bleu1"] == pytest.approx((0.5 + 1.0) / 2)


def test_report_metrics_edge_cases() -> None:
    with pytest.raises(ValueError, match="references"):
        report_metrics(["a"], [])
    assert all(math.isnan(v) for v in report_metrics([], []).values())
    assert report_metrics(["sinus rhythm"], [""]) == dict.fromkeys(["bleu1", "bleu2", "bleu3", "bleu4", "rougeL"], 0.0)

"""Report generation on frozen features: fine-tuning lowers the CE and beats the untrained decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.evaluate.report_generation import ReportGenConfig, report_rows, run_report_generation
from deri_sweep.model.config import ReportDecoderConfig

# Small and fast: a tiny GPT-2 over the MiniLM tokenizer, 16 test records, short generations.
FAST = ReportGenConfig(ReportDecoderConfig(name="tiny", max_length=40), epochs=8, batch_size=16, max_test=16, seed=0)
TEXT_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")


@pytest.fixture(scope="module")
def cache(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SignalCache:
    out = tmp_path_factory.mktemp("reportgen") / "ptbxl"
    prepare(synth_root / "ptb-xl", out, PrepareOptions("ptbxl", shard_size=64, workers=2, progress=False))
    return SignalCache.open(out)


@pytest.fixture(scope="module")
def features(cache: SignalCache) -> np.ndarray:
    """Stand-in for frozen ECG embeddings (N, 256): a fixed random map of each record's labels, plus noise."""
    rng = np.random.default_rng(0)
    labels = np.concatenate([cache.labels(s) for s in cache.label_sets], axis=1).astype(np.float32)
    x = labels @ rng.normal(size=(labels.shape[1], 256)) + 0.1 * rng.normal(size=(len(cache), 256))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def untrained(cache: SignalCache, features: np.ndarray) -> tuple[dict, list]:
    return run_report_generation(features, cache, ReportGenConfig(**{**FAST.__dict__, "epochs": 0, "n_samples": 0}))


@pytest.fixture(scope="module")
def trained(cache: SignalCache, features: np.ndarray) -> tuple[dict, list]:
    return run_report_generation(features, cache, ReportGenConfig(**{**FAST.__dict__, "n_samples": 3}))


def test_fine_tuning_lowers_the_ce_and_beats_the_untrained_decoder(untrained, trained) -> None:
    (before, _), (after, _) = untrained, trained
    assert np.isnan(before["train_ce_first"]) and before["epochs"] == 0
    assert after["train_ce_last"] < after["train_ce_first"] - 5.0  # measured (seed 0): 9.15 -> 1.28
    assert after["test_ce"] < before["test_ce"] - 6.0  # measured: 10.32 -> 1.32 nats per token
    for key in TEXT_KEYS:
        assert 0.0 <= before[key] <= 1.0 and 0.0 <= after[key] <= 1.0
    # measured (seed 0): untrained 0.0 everywhere (it babbles to max_length); fine-tuned BLEU-1 0.53, BLEU-4 0.28,
    # ROUGE-L 0.54. After 8 epochs on 124 reports it mostly writes the majority report ("sinusrhythmus normales ecg.").
    assert after["bleu1"] > before["bleu1"] + 0.3 and after["rougeL"] > before["rougeL"] + 0.3
    assert after["n_test"] == before["n_test"] == 16 and after["n_train"] > 50


def test_samples_only_when_asked(untrained, trained, cache: SignalCache) -> None:
    assert untrained[1] == []
    samples = trained[1]
    rows, texts = report_rows(cache)
    assert len(samples) == 3 and [s["reference"] for s in samples] == [texts[i] for i in rows["test"][:3]]
    assert all(isinstance(s["generated"], str) and s["record_id"] for s in samples)


def test_bad_inputs_are_refused(cache: SignalCache, features: np.ndarray) -> None:
    with pytest.raises(ValueError, match="must be"):
        run_report_generation(features[:-1], cache, FAST)


@pytest.mark.slow
def test_the_decoder_uses_the_ecg_features(cache: SignalCache, features: np.ndarray) -> None:
    """Informative features beat the same features shuffled across records (the decoder cross-attends)."""
    config = ReportGenConfig(**{**FAST.__dict__, "epochs": 20, "n_samples": 0})
    shuffled = np.random.default_rng(1).permutation(features)
    informed, _ = run_report_generation(features, cache, config)
    blind, _ = run_report_generation(shuffled, cache, config)
    # measured (seed 0, 20 epochs): test CE 0.20 vs 0.38; BLEU-1 0.61 vs 0.53 (blind: mostly the majority report).
    # Over seeds 0-7 (each a different training trajectory): CE ratio 0.42-0.60 (mean 0.52, sd 0.06: the 0.75 bar is
    # ~4 sd away); BLEU-1 gap 0.09-0.32 (blind always 0.526), seed 0 the lowest, ~3 records better than the
    # majority report where the 0.03 bar is ~1 record; with 64 test records the gaps are the same (0.12-0.28).
    assert informed["test_ce"] < 0.75 * blind["test_ce"], (informed, blind)
    assert informed["bleu1"] > blind["bleu1"] + 0.03, (informed, blind)

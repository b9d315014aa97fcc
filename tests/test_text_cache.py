"""Text feature cache: write once, reuse, pad per batch, and match the raw-text path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel

from deri_sweep.model.config import ECGConfig, ModelConfig, TextConfig
from deri_sweep.model.deri import DERI
from deri_sweep.model.text_cache import (
    TextFeatureStore,
    build_text_features,
    caching_applies,
    feature_dir,
    feature_slug,
)
from deri_sweep.model.text_tower import TextTower
from deri_sweep.train.losses import DeriLoss

REPORTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response. left axis deviation. abnormal ecg.",
    "sinus bradycardia. possible inferior infarct, age undetermined.",
    "sinus rhythm. left ventricular hypertrophy with repolarization abnormality. abnormal ecg.",
    "sinus tachycardia.",
]


@pytest.fixture(scope="module")
def tower() -> TextTower:
    return TextTower(TextConfig())


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    ids = np.arange(len(REPORTS), dtype=np.int64)
    pd.DataFrame({"report_id": ids[::-1], "text": REPORTS[::-1]}).to_parquet(tmp_path / "reports.parquet")
    return tmp_path


class CountingTower:
    """Wraps a tower's forward to count calls."""

    def __init__(self, tower: TextTower) -> None:
        self.tower, self.calls = tower, 0
        self.original = tower.forward

    def __enter__(self) -> CountingTower:
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.tower.forward = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.tower.forward


def test_writes_once_then_reuses(tower: TextTower, cache_dir: Path) -> None:
    with CountingTower(tower) as counter:
        out = build_text_features(cache_dir, tower, batch_size=2, progress=False)
        assert counter.calls == 3  # 5 reports in batches of 2
        assert out == feature_dir(cache_dir, tower.cfg) and out.parent.name == "text_features"
        mtime = (out / "tokens.npy").stat().st_mtime_ns
        assert build_text_features(cache_dir, tower, batch_size=2, progress=False) == out
        assert counter.calls == 3  # reused: nothing recomputed
    assert (out / "tokens.npy").stat().st_mtime_ns == mtime
    meta = json.loads((out / "meta.json").read_text())
    assert meta["done"] and meta["count"] == 5 and meta["hidden_size"] == 384 and meta["max_length"] == 256
    pooled, tokens, offsets = (np.load(out / f"{n}.npy") for n in ("pooled", "tokens", "offsets"))
    lengths = [len(tower.tokenizer(t)["input_ids"]) for t in REPORTS]
    assert pooled.dtype == tokens.dtype == np.float16 and pooled.shape == (5, 384)
    assert offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert tokens.shape == (sum(lengths), 384)
    assert sorted(p.name for p in out.parent.iterdir()) == [f".{out.name}.lock", out.name]  # no temporary folders


def test_changed_reports_are_recomputed(tower: TextTower, cache_dir: Path) -> None:
    build_text_features(cache_dir, tower, progress=False)
    pd.DataFrame({"report_id": [0, 1], "text": ["sinus rhythm.", "normal ecg."]}).to_parquet(
        cache_dir / "reports.parquet"
    )
    with CountingTower(tower) as counter:
        out = build_text_features(cache_dir, tower, progress=False)
        assert counter.calls == 1
    assert TextFeatureStore(out).pooled.shape == (2, 384)


def test_store_pads_only_to_longest_and_matches_tower(tower: TextTower, cache_dir: Path) -> None:
    build_text_features(cache_dir, tower, batch_size=4, progress=False)
    store = TextFeatureStore.open(cache_dir, tower.cfg)
    short = [0, 4]  # the two shortest reports
    pooled, tokens, mask = store.batch(np.array(short))
    assert tokens.shape == (2, int(store.lengths[short].max()), 384) and tokens.dtype == torch.float32
    assert mask.sum(1).tolist() == store.lengths[short].tolist()
    assert (tokens[~mask] == 0).all()
    feats = tower.encode_texts([REPORTS[i] for i in short])
    torch.testing.assert_close(pooled, feats.pooled, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(tokens, feats.tokens, rtol=2e-3, atol=5e-3)
    assert torch.equal(mask, feats.mask)
    with pytest.raises(IndexError):
        store.batch(torch.tensor([5]))


def test_cached_path_matches_raw_text_path(tower: TextTower, cache_dir: Path) -> None:
    """Same loss from fp16 cached features as from running the tower (tolerance for fp16 storage)."""
    store = TextFeatureStore(build_text_features(cache_dir, tower, progress=False))
    cfg = ModelConfig(ecg=ECGConfig(num_samples=1000))
    torch.manual_seed(0)
    model = DERI(cfg, text_tower=tower).eval()
    ids = torch.tensor([1, 0, 3, 4])
    ecg = torch.randn(4, 12, 1000)
    loss = DeriLoss(cfg.loss)
    torch.manual_seed(1)
    raw = loss(model(ecg, **tower.tokenize([REPORTS[i] for i in ids])))
    pooled, tokens, mask = store.batch(ids)
    torch.manual_seed(1)
    cached = loss(model(ecg, pooled=pooled, tokens=tokens, token_mask=mask))
    for name in raw:
        torch.testing.assert_close(cached[name], raw[name], rtol=1e-3, atol=1e-3)


def test_caching_applies_only_to_frozen_towers(tower: TextTower, cache_dir: Path) -> None:
    assert caching_applies(TextConfig()) and not caching_applies(TextConfig(trainable_layers=2))
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    trainable = TextTower(TextConfig(trainable_layers=1), model=bert, tokenizer=tower.tokenizer)
    with pytest.raises(ValueError, match="trainable_layers"):
        build_text_features(cache_dir, trainable, progress=False)


def test_slugs() -> None:
    assert feature_slug(TextConfig(name="ncbi/MedCPT-Query-Encoder")) == "ncbi--MedCPT-Query-Encoder-len256-pooler"
    assert feature_slug(TextConfig(max_length=64, pooling="cls")) == "embedded-len64-cls"


BUILDER = """
import logging, sys
from deri_sweep.model.config import TextConfig
from deri_sweep.model.text_cache import build_text_features
from deri_sweep.model.text_tower import TextTower

logging.basicConfig(level=logging.INFO, format="%(message)s")
__import__("torch").set_num_threads(1)
build_text_features(sys.argv[1], TextTower(TextConfig()), batch_size=1, progress=False)
"""


def _builder(cache_dir: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(cache_dir)], stderr=log.open("w"))


def _wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_builder_killed_mid_way_leaves_nothing_finished_and_a_waiting_builder_rebuilds(
    tower: TextTower, cache_dir: Path, tmp_path: Path
) -> None:
    """Two builders of one folder (two sweeps): the second waits on the lock; the first is killed mid-build."""
    texts = [f"{REPORTS[i % 5]} heart rate {i} bpm." for i in range(60)]
    pd.DataFrame({"report_id": np.arange(60), "text": texts}).to_parquet(cache_dir / "reports.parquet")
    out = feature_dir(cache_dir, tower.cfg)
    first = _builder(cache_dir, tmp_path / "first.log")
    try:
        _wait(lambda: list(out.parent.glob(f".{out.name}.tmp-*/offsets.npy")), "the first build to start")
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-build, holding the lock
        partial = next(out.parent.glob(f".{out.name}.tmp-*"))
        second = _builder(cache_dir, tmp_path / "second.log")
        _wait(lambda: "waiting for" in (tmp_path / "second.log").read_text(), "the second builder to wait")
        assert not out.exists() and second.poll() is None  # nothing looks finished; the second really waits
        with pytest.raises(FileNotFoundError, match="no finished text features"):
            TextFeatureStore(out)
        os.kill(first.pid, signal.SIGKILL)
        assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()
    finally:
        first.kill()
    first.wait()
    log = (tmp_path / "second.log").read_text()
    assert "removing an unfinished text-feature build" in log and log.count("computing text features") == 1
    assert not partial.exists() and sorted(p.name for p in out.parent.iterdir()) == [f".{out.name}.lock", out.name]
    # the rebuilt folder is complete and holds what an uninterrupted build computes
    store = TextFeatureStore.open(cache_dir, tower.cfg)
    assert store.meta["done"] and len(store) == 60
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    pd.DataFrame({"report_id": np.arange(60), "text": texts}).to_parquet(reference_dir / "reports.parquet")
    reference = TextFeatureStore(build_text_features(reference_dir, tower, batch_size=1, progress=False))
    assert np.array_equal(store.offsets, reference.offsets)
    np.testing.assert_allclose(store.pooled, reference.pooled, atol=2e-3)
    np.testing.assert_allclose(store.tokens, reference.tokens, atol=5e-3)

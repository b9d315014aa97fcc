"""Frozen-feature extraction, the on-disk feature store and checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deri_sweep.common.strict_loader import to_dict
from deri_sweep.data.cache import SignalCache
from deri_sweep.data.prepare import PrepareOptions, prepare
from deri_sweep.evaluate.features import (
    RandomInit,
    cache_fingerprint,
    cached_features,
    checkpoint_fingerprint,
    extract_features,
    random_fingerprint,
)
from deri_sweep.evaluate.pretrained import load_pretrained, random_init
from deri_sweep.train.checkpoint import CheckpointError, save_checkpoint
from deri_sweep.train.train_config import TrainConfig

HIDDEN = 384  # the embedded MiniLM tower; no tower is loaded in these tests


@pytest.fixture(scope="module")
def cache_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features") / "ptbxl_small"
    opts = PrepareOptions("ptbxl", shard_size=8, limit=14, progress=False, max_skip_fraction=0.5)
    prepare(synth_root / "ptb-xl", out, opts)
    return out


@pytest.fixture(scope="module")
def cache(cache_dir: Path) -> SignalCache:
    return SignalCache.open(cache_dir)


@pytest.fixture(scope="module")
def config() -> TrainConfig:
    return TrainConfig()


@pytest.fixture(scope="module")
def checkpoint(config: TrainConfig, cache: SignalCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint in the pretraining contract: no text weights, BatchNorm statistics moved off their init."""
    model = random_init(config, HIDDEN, seed=5).train()
    with torch.no_grad():
        model.encode_ecg(cache.signals(np.arange(6)), "resnet")  # a train-mode forward updates running stats
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text.")}
    meta = {"config": to_dict(config), "text_hidden_size": HIDDEN, "epoch": 1, "metrics": {}}
    full = {"model": state, "optimizer": {}, "scheduler": {}, "scaler": None, "epoch": 1, "step": 3, "rng": None}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch_001", full, meta)


def test_load_pretrained_round_trips(checkpoint: Path, config: TrainConfig, cache: SignalCache) -> None:
    model, loaded_config = load_pretrained(checkpoint)
    assert loaded_config == config and not model.training and model.text is None
    reference = random_init(config, HIDDEN, seed=5).train()
    x = cache.signals(np.arange(6))
    with torch.no_grad():
        reference.encode_ecg(x, "resnet")  # the same BatchNorm update as the saved model
        reference.eval()
        for feature in ("mix", "resnet"):
            assert torch.equal(model.encode_ecg(x[:3], feature), reference.encode_ecg(x[:3], feature))
    bn = model.ecg.resnet.stem[1]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # buffers were loaded


def test_random_init_is_deterministic_per_seed(config: TrainConfig) -> None:
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a, b, c = (random_init(config, HIDDEN, seed=s).state_dict() for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["proj_t.0.weight"], c["proj_t.0.weight"])
    assert random_fingerprint(1, config, HIDDEN).startswith("random-1-")
    assert random_fingerprint(1, config, HIDDEN) != random_fingerprint(1, config, 768)


def test_missing_or_corrupt_checkpoint_names_the_path(checkpoint: Path, tmp_path: Path, cache_dir: Path) -> None:
    missing = tmp_path / "no_such_ckpt"
    with pytest.raises(CheckpointError, match="no_such_ckpt"):
        load_pretrained(missing)
    with pytest.raises(CheckpointError, match="no_such_ckpt"):
        cached_features(missing, cache_dir, "mix", tmp_path / "feats")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text((checkpoint / "meta.json").read_text())
    (corrupt / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt.*unreadable"):
        load_pretrained(corrupt)
    meta = json.loads((checkpoint / "meta.json").read_text())
    (corrupt / "state.pt").write_bytes((checkpoint / "state.pt").read_bytes())
    (corrupt / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "text_hidden_size"}))
    with pytest.raises(CheckpointError, match="corrupt.*text_hidden_size"):
        load_pretrained(corrupt)


def test_extraction_is_deterministic_aligned_and_sized(checkpoint: Path, cache: SignalCache) -> None:
    model, _ = load_pretrained(checkpoint)
    model.train()  # extraction must switch to eval mode itself, and restore the mode afterwards
    first = extract_features(model, cache, "mix", batch_size=8, progress=False)
    assert model.training
    again = extract_features(model, cache, "mix", batch_size=8, progress=False)
    other_batching = extract_features(model, cache, "mix", batch_size=5, progress=False)
    assert first.dtype == np.float32 and first.shape == (len(cache), 256)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, other_batching, rtol=1e-4, atol=1e-5)
    rows = np.array([len(cache) - 1, 0, 3])
    with torch.no_grad():
        direct = model.eval().encode_ecg(cache.signals(rows), "mix").numpy()
    np.testing.assert_allclose(first[rows], direct, rtol=1e-4, atol=1e-5)  # row i = cache.index.iloc[i]
    dims = {f: extract_features(model, cache, f, batch_size=16, progress=False).shape[1] for f in ("aligned", "resnet")}
    assert dims == {"aligned": 256, "resnet": 512}


def test_features_are_stored_once_and_reused(checkpoint: Path, cache_dir: Path, config: TrainConfig, tmp_path) -> None:
    root = tmp_path / "features"
    first = cached_features(checkpoint, cache_dir, "aligned", root, batch_size=16, progress=False)
    folder = root / checkpoint_fingerprint(checkpoint) / cache_fingerprint(cache_dir)
    stored, meta = folder / "aligned.npy", json.loads((folder / "aligned.json").read_text())
    assert meta["rows"] == len(first) and meta["shape"] == [len(first), 256] and meta["norm"] == "minmax_record"
    mtime = stored.stat().st_mtime_ns
    second = cached_features(checkpoint, cache_dir, "aligned", root, batch_size=16, progress=False)
    np.testing.assert_array_equal(first, second)
    assert stored.stat().st_mtime_ns == mtime  # loaded, not recomputed
    model, _ = load_pretrained(checkpoint)
    np.testing.assert_array_equal(first, extract_features(model, SignalCache.open(cache_dir), "aligned", batch_size=16))
    stored.unlink()  # an incomplete entry is recomputed
    np.testing.assert_array_equal(first, cached_features(checkpoint, cache_dir, "aligned", root, batch_size=16))

    floor = cached_features(RandomInit(3, config, HIDDEN), cache_dir, "aligned", root)
    assert (root / random_fingerprint(3, config, HIDDEN)).is_dir() and not np.allclose(floor, first)
    again = cached_features(RandomInit(3, config, HIDDEN), cache_dir, "aligned", root)
    np.testing.assert_array_equal(floor, again)  # the same seed is the same floor, read back from the store
    other = cached_features(RandomInit(4, config, HIDDEN), cache_dir, "aligned", root)
    assert not np.allclose(other, floor)

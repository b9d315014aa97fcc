"""Frozen ECG features of a downstream cache, computed once per (checkpoint, cache, feature) and reused.

Every probe, zero-shot and report-generation run of a checkpoint reads the same
features, so they are stored on disk::

    <feature_root>/<checkpoint fingerprint>/<cache fingerprint>/<feature>.npy   float32 (N, D)
    <feature_root>/<checkpoint fingerprint>/<cache fingerprint>/<feature>.json  what was embedded

Rows are aligned with the cache index (row i = ``cache.index.iloc[i]``). The JSON is
written after the array (both atomically), so an array without its JSON is ignored.
A checkpoint is fingerprinted by a hash of its ``state.pt`` content (blake2b: measured
0.2-0.3 s for a 108 MB DERI checkpoint with optimizer state); the random-init floor by
``random-<seed>-<config hash>``; a cache by its directory name plus a hash of
``cache.json`` and ``index.parquet``.

The encoder runs in eval mode (BatchNorm running statistics, no dropout; RME is not
used by :meth:`DERI.encode_ecg`) under ``torch.no_grad``, with the signal
normalisation the checkpoint was pretrained with (``config.data.norm``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deri_sweep.common.storage import atomic_write_bytes, atomic_write_text
from deri_sweep.common.strict_loader import to_dict
from deri_sweep.data.cache import SignalCache
from deri_sweep.data.signal import NormMode
from deri_sweep.evaluate.pretrained import load_pretrained, random_init, read_train_config
from deri_sweep.model.config import ProbeFeature
from deri_sweep.model.deri import DERI
from deri_sweep.train.checkpoint import META_FILE, STATE_FILE, CheckpointError
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = typing.get_args(ProbeFeature)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RandomInit:
    """The random-init floor as a feature source: an untrained DERI of a run's architecture.

    Attributes:
        seed: weight seed (the pretraining seed it pairs with).
        train_config: the run's config (architecture, ``data.norm``).
        text_hidden_size: the run's text hidden size (the projection's input).
    """

    seed: int
    train_config: TrainConfig
    text_hidden_size: int

    def __str__(self) -> str:
        return f"random-init(seed={self.seed})"


#: What features are computed from: a checkpoint directory, or the random-init floor.
FeatureSource = str | Path | RandomInit


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """16-hex blake2b digest of a file's content, read in 4 MiB chunks."""
    h = hashlib.blake2b(digest_size=8)
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_fingerprint(directory: str | Path) -> str:
    """Content hash of a checkpoint's ``state.pt`` (16 hex characters).

    Raises:
        CheckpointError: no ``state.pt``/``meta.json`` there (names the path).
    """
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file() or not (directory / META_FILE).is_file():
        raise CheckpointError(f"{directory}: not a finished deri-sweep checkpoint (needs {STATE_FILE} and {META_FILE})")
    return file_digest(directory / STATE_FILE)


def random_fingerprint(seed: int, train_config: TrainConfig, text_hidden_size: int) -> str:
    """``random-<seed>-<hash>``: the hash covers the model config, text hidden size and ``data.norm``."""
    blob = json.dumps([to_dict(train_config.model), text_hidden_size, train_config.data.norm], sort_keys=True)
    return f"random-{seed}-{_digest(blob.encode())[:12]}"


def cache_fingerprint(cache_dir: str | Path) -> str:
    """``<cache folder name>-<hash of cache.json and index.parquet>``."""
    cache_dir = Path(cache_dir)
    digest = _digest((cache_dir / "cache.json").read_bytes(), (cache_dir / "index.parquet").read_bytes())
    return f"{cache_dir.name}-{digest[:12]}"


@torch.no_grad()
def extract_features(
    model: DERI,
    cache: SignalCache,
    feature: ProbeFeature,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    norm: NormMode = "minmax_record",
    progress: bool = True,
) -> np.ndarray:
    """Embed every record of a cache with the frozen encoder.

    The model is put in eval mode for the call and its previous mode restored after.

    Args:
        model: a DERI (features-only or with a tower).
        cache: the downstream cache; its signal length must equal ``model.cfg.ecg.num_samples``.
        feature: ``"mix"`` (m_e, d), ``"aligned"`` (z_e, d) or ``"resnet"`` (mean-pooled F, 8 * ecg.width).
        batch_size: records per forward.
        device: where to run the encoder (the model is moved there).
        norm: signal normalisation; must be the one used in pretraining (``data.norm``).
        progress: show a tqdm bar.

    Returns:
        (N, D) float32, row i = record ``cache.index.iloc[i]``.

    Raises:
        ValueError: unknown feature, or signal length differs from the model's.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature={feature!r}; choose one of {FEATURES}")
    length, expected = int(cache.info["signal"]["length"]), model.cfg.ecg.num_samples
    if length != expected:
        raise ValueError(
            f"{cache.root}: signals have {length} samples but the model expects {expected} (ecg.num_samples)"
        )
    was_training = model.training
    model.to(device).eval()
    out: list[np.ndarray] = []
    try:
        with tqdm(total=len(cache), desc=f"embed {cache.root.name}/{feature}", disable=not progress, unit="ecg") as bar:
            for start in range(0, len(cache), batch_size):
                rows = np.arange(start, min(start + batch_size, len(cache)))
                ecg = cache.signals(rows, norm).to(device)  # (B, 12, L)
                out.append(model.encode_ecg(ecg, feature).float().cpu().numpy())  # (B, D)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if not out:
        width = model.ecg.resnet.out_channels if feature == "resnet" else model.cfg.token.dim
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def feature_paths(directory: Path, feature: str) -> tuple[Path, Path]:
    """``(<feature>.npy, <feature>.json)`` inside a (checkpoint, cache) feature folder."""
    return directory / f"{feature}.npy", directory / f"{feature}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load_source(source: FeatureSource) -> tuple[str, TrainConfig, int, Any]:
    """Fingerprint, config, hidden size and a model loader of a feature source."""
    if isinstance(source, RandomInit):
        fingerprint = random_fingerprint(source.seed, source.train_config, source.text_hidden_size)
        return (
            fingerprint,
            source.train_config,
            source.text_hidden_size,
            lambda: random_init(source.train_config, source.text_hidden_size, source.seed),
        )
    directory = Path(source)
    fingerprint = checkpoint_fingerprint(directory)
    meta = _read_json(directory / META_FILE)
    if meta is None:
        raise CheckpointError(f"{directory}: {META_FILE} is unreadable")
    config, hidden = read_train_config(directory, meta)
    return fingerprint, config, hidden, lambda: load_pretrained(directory)[0]


def cached_features(
    source: FeatureSource,
    cache_dir: str | Path,
    feature: ProbeFeature,
    feature_root: str | Path,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Features of a cache from a checkpoint (or the random-init floor): computed once, then loaded.

    Args:
        source: checkpoint directory, or :class:`RandomInit` for the random-init floor.
        cache_dir: prepared downstream cache.
        feature: ``"mix"``, ``"aligned"`` or ``"resnet"``.
        feature_root: root of the on-disk feature store.
        batch_size: records per forward.
        device: where to run the encoder.
        progress: show a tqdm bar while embedding.

    Returns:
        (N, D) float32, rows aligned with the cache index.

    Raises:
        CheckpointError: missing or corrupt checkpoint (names the path).
        ValueError: bad ``source`` or feature.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature={feature!r}; choose one of {FEATURES}")
    cache_dir = Path(cache_dir)
    fingerprint, config, hidden, build = _load_source(source)
    cache = SignalCache.open(cache_dir)
    folder = Path(feature_root) / fingerprint / cache_fingerprint(cache_dir)
    array_path, meta_path = feature_paths(folder, feature)
    records = _digest("\n".join(cache.index["record_id"].astype(str)).encode())
    meta = _read_json(meta_path)
    if meta and meta.get("rows") == len(cache) and meta.get("records") == records and array_path.is_file():
        features = np.load(array_path)
        if features.shape == tuple(meta["shape"]):
            log.info("features reused: %s", array_path)
            return features
    start = time.perf_counter()
    features = extract_features(
        build(), cache, feature, batch_size=batch_size, device=device, norm=config.data.norm, progress=progress
    )
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write_bytes(array_path, buffer.getvalue())
    description = {
        "format": FORMAT_VERSION,
        "source": str(source),
        "fingerprint": fingerprint,
        "cache_dir": str(cache_dir.resolve()),
        "cache": folder.name,
        "feature": feature,
        "norm": config.data.norm,
        "text_hidden_size": hidden,
        "rows": len(cache),
        "records": records,
        "shape": list(features.shape),
        "seconds": round(seconds, 3),
    }
    atomic_write_text(meta_path, json.dumps(description, indent=2))
    log.info("features written: %s %s in %.1f s", array_path, features.shape, seconds)
    return features

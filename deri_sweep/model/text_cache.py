"""Frozen-text-tower feature cache: encode each UNIQUE report once, store fp16, pad per batch.

Input contract: a prepared cache directory holds ``reports.parquet`` with columns
``report_id`` (int64, 0..R-1) and ``text`` (str). Output, under
``<cache_dir>/text_features/<slug>/`` (slug = tower name + max_length + pooling):

- ``pooled.npy``  (R, H) float16, the pooled vector p per report;
- ``tokens.npy``  (sum of lengths, H) float16, token states trimmed to the real length;
- ``offsets.npy`` (R+1,) int64, report r owns rows ``offsets[r]:offsets[r+1]``;
- ``meta.json``   tower name, hidden size, max_length, pooling, count, reports digest, done.

The folder is written in a temporary sibling and renamed into place, and reused
when its ``meta.json`` matches. One process builds a folder at a time (a ``flock`` on
``.<slug>.lock`` beside it); others wait and then reuse its result, and the unfinished
build of a killed builder is removed by the next one. Only valid for a frozen tower
(:func:`caching_applies`): with ``text.trainable_layers > 0`` features change during training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from deri_sweep.common.storage import LockHeld, file_lock
from deri_sweep.model.config import TextConfig
from deri_sweep.model.text_tower import TextTower

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def caching_applies(text: TextConfig) -> bool:
    """True when the text tower is frozen, so its features may be cached."""
    return text.trainable_layers == 0


def feature_slug(text: TextConfig) -> str:
    """Folder name for a tower, e.g. ``ncbi--MedCPT-Query-Encoder-len256-pooler``.

    Local paths use their last component plus a short hash of the full path.
    """
    name = text.name
    if os.sep in name and Path(name).exists():
        digest = hashlib.sha1(str(Path(name).resolve()).encode()).hexdigest()[:8]
        name = f"{Path(name).name}-{digest}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-")
    return f"{name}-len{text.max_length}-{text.pooling}"


def feature_dir(cache_dir: str | Path, text: TextConfig) -> Path:
    """``<cache_dir>/text_features/<slug>``."""
    return Path(cache_dir) / "text_features" / feature_slug(text)


def _reports(cache_dir: Path) -> list[str]:
    df = pd.read_parquet(cache_dir / "reports.parquet", columns=["report_id", "text"])
    ids = df["report_id"].to_numpy(np.int64)
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise ValueError(f"{cache_dir}/reports.parquet: report_id must be 0..R-1 without gaps")
    return df.sort_values("report_id")["text"].astype(str).tolist()


def _expected_meta(tower: TextTower, texts: list[str]) -> dict[str, Any]:
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()
    return {
        "format": FORMAT_VERSION,
        "tower": tower.cfg.name,
        "hidden_size": tower.hidden_size,
        "max_length": tower.cfg.max_length,
        "pooling": tower.cfg.pooling,
        "count": len(texts),
        "reports_sha1": digest,
        "done": True,
    }


def _read_meta(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None


@torch.no_grad()
def build_text_features(
    cache_dir: str | Path,
    tower: TextTower,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Encode every unique report of ``cache_dir`` once (or reuse a matching folder).

    Args:
        cache_dir: prepared cache directory with ``reports.parquet``.
        tower: a frozen :class:`TextTower` (its config names the folder).
        batch_size: reports per forward; reports are length-sorted so padding stays small.
        device: where to run the tower (default: where it is).
        progress: show a tqdm bar.

    Returns:
        The feature folder.

    Raises:
        ValueError: the tower is not frozen, or reports.parquet is malformed.
    """
    if not caching_applies(tower.cfg):
        raise ValueError("text.trainable_layers > 0: text features change during training; do not cache them")
    cache_dir = Path(cache_dir)
    texts = _reports(cache_dir)
    out_dir = feature_dir(cache_dir, tower.cfg)
    meta = _expected_meta(tower, texts)
    if _read_meta(out_dir) == meta:
        log.info("text features reused: %s", out_dir)
        return out_dir

    lock = out_dir.with_name(f".{out_dir.name}.lock")
    try:
        with file_lock(lock):
            return _build_locked(texts, tower, out_dir, meta, batch_size, device, progress)
    except LockHeld as held:
        log.info("text features %s: waiting for %s, which is building them", out_dir.name, held.holder)
    with file_lock(lock, wait=True):
        return _build_locked(texts, tower, out_dir, meta, batch_size, device, progress)


def _build_locked(
    texts: list[str],
    tower: TextTower,
    out_dir: Path,
    meta: dict[str, Any],
    batch_size: int,
    device: torch.device | str | None,
    progress: bool,
) -> Path:
    """The tower pass of :func:`build_text_features`; the caller holds the folder's lock."""
    if _read_meta(out_dir) == meta:  # another sweep built them while this one waited
        log.info("text features reused: %s", out_dir)
        return out_dir
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # a killed builder's: only the lock holder builds
        log.info("removing an unfinished text-feature build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    log.info("computing text features of %d unique reports into %s", len(texts), out_dir)
    device = torch.device(device) if device is not None else next(tower.parameters()).device
    tower = tower.to(device).eval()
    ids = tower.tokenizer(texts, truncation=True, max_length=tower.cfg.max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)  # (R,)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (R+1,)
    order = np.argsort(lengths, kind="stable")  # length-sorted batches pad little

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    tmp.mkdir(parents=True)
    pooled = np.lib.format.open_memmap(
        tmp / "pooled.npy", mode="w+", dtype=np.float16, shape=(len(texts), meta["hidden_size"])
    )
    tokens = np.lib.format.open_memmap(
        tmp / "tokens.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), meta["hidden_size"])
    )
    np.save(tmp / "offsets.npy", offsets)
    with tqdm(total=len(texts), desc=f"text features {out_dir.name}", disable=not progress, unit="report") as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]  # (b,)
            width = int(lengths[rows].max())
            input_ids = torch.full((len(rows), width), tower.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                input_ids[i, : lengths[r]] = torch.as_tensor(ids[r])
                mask[i, : lengths[r]] = 1
            feats = tower(input_ids.to(device), mask.to(device))  # p (b, H), H (b, N, H)
            pooled[rows] = feats.pooled.float().cpu().numpy().astype(np.float16)
            hidden = feats.tokens.float().cpu().numpy().astype(np.float16)  # (b, N, H)
            for i, r in enumerate(rows):
                tokens[offsets[r] : offsets[r + 1]] = hidden[i, : lengths[r]]
            bar.update(len(rows))
    pooled.flush()
    tokens.flush()
    del pooled, tokens
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    if out_dir.exists():  # stale or mismatching: move aside, then swap in
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("text features written: %s (%d reports, %d tokens)", out_dir, len(texts), int(offsets[-1]))
    return out_dir


class TextFeatureStore:
    """Read cached text features and pad a batch only to its longest report.

    Args:
        directory: a folder written by :func:`build_text_features`.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta = _read_meta(self.directory)
        if meta is None or not meta.get("done"):
            raise FileNotFoundError(f"{self.directory}: no finished text features; run build_text_features first")
        self.meta = meta
        self.hidden_size: int = int(meta["hidden_size"])
        self.pooled = np.load(self.directory / "pooled.npy", mmap_mode="r")  # (R, H) fp16
        self.tokens = np.load(self.directory / "tokens.npy", mmap_mode="r")  # (sum N, H) fp16
        self.offsets = np.load(self.directory / "offsets.npy")  # (R+1,)
        self.lengths = np.diff(self.offsets)  # (R,)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the folder only (a loader worker reopens the memory maps instead of copying them)."""
        return {"directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"])

    @classmethod
    def open(cls, cache_dir: str | Path, text: TextConfig) -> TextFeatureStore:
        """Open the features of tower ``text`` in a prepared cache directory."""
        return cls(feature_dir(cache_dir, text))

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, report_ids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of a batch of reports.

        Args:
            report_ids: (B,) int report ids.

        Returns:
            pooled (B, H) float32, tokens (B, Nmax, H) float32 zero-padded, mask (B, Nmax) bool,
            where Nmax is the longest report in the batch.
        """
        ids = np.asarray(report_ids.cpu() if isinstance(report_ids, torch.Tensor) else report_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"report ids must be in [0, {len(self)}); got min {ids.min()} max {ids.max()}")
        lengths = self.lengths[ids]  # (B,)
        width = int(lengths.max()) if ids.size else 0
        tokens = np.zeros((len(ids), width, self.hidden_size), dtype=np.float32)  # (B, Nmax, H)
        mask = np.arange(width)[None, :] < lengths[:, None]  # (B, Nmax)
        # one gather for the whole batch: row r of report i is tokens[offsets[i] + r]
        first = np.repeat(self.offsets[ids] - (np.cumsum(lengths) - lengths), lengths)  # (sum N,)
        tokens[mask] = self.tokens[first + np.arange(int(lengths.sum()))]
        pooled = np.asarray(self.pooled[ids], dtype=np.float32)  # (B, H)
        return torch.from_numpy(pooled), torch.from_numpy(tokens), torch.from_numpy(mask)

    def padded(self, report_ids: np.ndarray, dtype: type[np.floating] = np.float16) -> dict[str, torch.Tensor]:
        """The batch's text inputs as a loader worker ships them (``DERI.forward`` keyword names).

        The values are those of :meth:`batch` (the store is fp16, so float32 is an exact upcast);
        fp16 halves what crosses to the device, where the training process casts it.

        Args:
            report_ids: (B,) int report ids.
            dtype: ``np.float16`` (what crosses to a GPU) or ``np.float32``.

        Returns:
            ``pooled`` (B, H), ``tokens`` (B, Nmax, H) zero-padded, both ``dtype``; ``token_mask``
            (B, Nmax) bool; Nmax is the longest report in the batch.
        """
        ids = np.asarray(report_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"report ids must be in [0, {len(self)}); got min {ids.min()} max {ids.max()}")
        lengths = self.lengths[ids]  # (B,)
        width = int(lengths.max()) if ids.size else 0
        tokens = np.zeros((len(ids), width, self.hidden_size), dtype=dtype)  # (B, Nmax, H)
        mask = np.arange(width)[None, :] < lengths[:, None]  # (B, Nmax)
        first = np.repeat(self.offsets[ids] - (np.cumsum(lengths) - lengths), lengths)  # (sum N,)
        tokens[mask] = self.tokens[first + np.arange(int(lengths.sum()))]
        pooled = np.asarray(self.pooled[ids], dtype=dtype)  # (B, H)
        return {
            "pooled": torch.from_numpy(pooled),
            "tokens": torch.from_numpy(tokens),
            "token_mask": torch.from_numpy(mask),
        }

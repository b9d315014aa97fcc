"""Read a prepared signal cache: fast random-access batches for training.

A cache directory (written by :mod:`deri_sweep.data.prepare`) holds::

    cache.json            settings, counts, label sets; "complete": true when done
    index.parquet         one row per usable record: record_id, subject_id, split,
                          shard, row, report_id (-1: none), repaired, degraded,
                          fs, n_samples, meta (JSON) and one uint8 column per
                          class named "<label set>/<class>"
    reports.parquet       report_id (int64), text: unique report texts
    skipped.csv           record_id, reason, detail: every record not used
    shards/shard_00000.npy  int16 (n, 12, length), microvolts (gain 1000/mV)

Signals are memory-mapped, so a batch read touches only the rows it needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deri_sweep.data.signal import NormMode

CACHE_VERSION = 2  # 2: plausibility checks, warnings.csv, shard checksums
GAIN_PER_MV = 1000.0  # int16 units per mV in the shards


class CacheError(RuntimeError):
    """A cache that is missing, incomplete or built with other settings."""


def label_column(label_set: str, name: str) -> str:
    """Name of the index column holding 0/1 for one class of one label set."""
    return f"{label_set}/{name}"


@dataclass
class SignalCache:
    """An opened cache directory.

    Attributes:
        root: the cache directory.
        info: parsed ``cache.json``.
        index: the index table (one row per usable record).
    """

    root: Path
    info: dict[str, Any]
    index: pd.DataFrame

    @classmethod
    def open(cls, root: str | Path) -> SignalCache:
        """Open a complete cache.

        Raises:
            CacheError: no cache there, or an unfinished build (names the fix).
        """
        root = Path(root)
        meta = root / "cache.json"
        if not meta.exists():
            raise CacheError(
                f"{root}: not a deri-sweep cache (no cache.json); build one with "
                "`python -m deri_sweep.data.prepare ROOT --format FORMAT --out {root}`"
            )
        info = json.loads(meta.read_text())
        if not info.get("complete"):
            raise CacheError(f"{root}: cache build did not finish; rerun the same prepare command to resume it")
        index = pd.read_parquet(root / "index.parquet")
        return cls(root=root, info=info, index=index)

    def __post_init__(self) -> None:
        self._shards: dict[int, np.ndarray] = {}
        self._shard = self.index["shard"].to_numpy(np.int64)
        self._row = self.index["row"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def label_sets(self) -> dict[str, list[str]]:
        """Label set name -> ordered class names."""
        return {k: list(v) for k, v in self.info["label_sets"].items()}

    def shard(self, number: int) -> np.ndarray:
        """Memory-mapped int16 shard ``number``: (n, 12, length)."""
        if number not in self._shards:
            self._shards[number] = np.load(self.root / "shards" / f"shard_{number:05d}.npy", mmap_mode="r")
        return self._shards[number]

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """int16 signals of index rows, in the order given.

        Args:
            rows: (B,) positional row numbers into :attr:`index`.

        Returns:
            (B, 12, length) int16 array (microvolts).
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), 12, int(self.info["signal"]["length"])), dtype=np.int16)
        shards = self._shard[rows]
        for number in np.unique(shards):
            pick = np.flatnonzero(shards == number)
            within = self._row[rows[pick]]
            order = np.argsort(within, kind="stable")  # ascending rows read the memmap sequentially
            out[pick[order]] = self.shard(int(number))[within[order]]
        return out

    def signals(self, rows: np.ndarray, norm: NormMode = "minmax_record") -> torch.Tensor:
        """Normalised float32 signals of index rows.

        Args:
            rows: (B,) positional row numbers.
            norm: normalisation (spec section 1).

        Returns:
            (B, 12, length) float32 tensor.
        """
        raw = self.raw(rows)  # (B, 12, L) int16 microvolts
        if norm == "minmax_record":
            # one fused int16 -> float32 multiply-add pass per batch (3x faster than torch on one core)
            flat = raw.reshape(len(raw), -1)
            lo = flat.min(axis=1).astype(np.float32)
            scale = 1.0 / np.maximum(flat.max(axis=1).astype(np.float32) - lo, 1.0)
            out = np.multiply(raw, scale[:, None, None], dtype=np.float32)
            out += (-lo * scale)[:, None, None]
        elif norm == "zscore_lead":
            out = raw.astype(np.float32)
            out -= out.mean(axis=2, keepdims=True)
            out /= np.maximum(out.std(axis=2, keepdims=True), 1.0)
        elif norm == "none":
            out = np.multiply(raw, np.float32(1.0 / GAIN_PER_MV), dtype=np.float32)
        else:
            raise ValueError(f"unknown normalisation {norm!r}; choose minmax_record, zscore_lead or none")
        return torch.from_numpy(out)

    def signals16(self, rows: np.ndarray, norm: NormMode = "minmax_record") -> dict[str, torch.Tensor]:
        """Signals of index rows as they cross to the device: int16 samples and the normalisation's operands.

        :func:`finish_signals` on any device turns the result into float32 values bit-identical
        to :meth:`signals` (the same float32 operations in the same order: the int16 -> float32
        cast is exact, then one IEEE multiply, add or divide per operand).

        Args:
            rows: (B,) positional row numbers.
            norm: normalisation (spec section 1).

        Returns:
            ``ecg`` (B, 12, L) int16 microvolts and, per mode, ``ecg_mul`` (B, 1, 1) and ``ecg_add``
            (B, 1, 1) float32 (``minmax_record``), ``ecg_add`` and ``ecg_div`` (B, 12, 1) float32
            (``zscore_lead``), or ``ecg_mul`` (1, 1, 1) (``none``).
        """
        raw = self.raw(rows)  # (B, 12, L) int16 microvolts
        out = {"ecg": torch.from_numpy(raw)}
        if norm == "minmax_record":
            flat = raw.reshape(len(raw), -1)
            lo = flat.min(axis=1).astype(np.float32)
            scale = 1.0 / np.maximum(flat.max(axis=1).astype(np.float32) - lo, 1.0)
            out["ecg_mul"] = torch.from_numpy(np.ascontiguousarray(scale[:, None, None], dtype=np.float32))
            out["ecg_add"] = torch.from_numpy(np.ascontiguousarray((-lo * scale)[:, None, None], dtype=np.float32))
        elif norm == "zscore_lead":
            full = raw.astype(np.float32)  # the statistics need the float32 values, as in signals()
            mean = full.mean(axis=2, keepdims=True)
            full -= mean
            out["ecg_add"] = torch.from_numpy(-mean)
            out["ecg_div"] = torch.from_numpy(np.maximum(full.std(axis=2, keepdims=True), 1.0).astype(np.float32))
        elif norm == "none":
            out["ecg_mul"] = torch.full((1, 1, 1), np.float32(1.0 / GAIN_PER_MV), dtype=torch.float32)
        else:
            raise ValueError(f"unknown normalisation {norm!r}; choose minmax_record, zscore_lead or none")
        return out

    def labels(self, label_set: str) -> np.ndarray:
        """(N, C) uint8 label matrix of one label set, columns in class order."""
        if label_set not in self.info["label_sets"]:
            raise KeyError(f"{self.root}: no label set {label_set!r}; has {sorted(self.info['label_sets'])}")
        cols = [label_column(label_set, c) for c in self.info["label_sets"][label_set]]
        return self.index[cols].to_numpy(np.uint8)

    def reports(self) -> pd.DataFrame:
        """Unique report texts: columns ``report_id``, ``text``."""
        return pd.read_parquet(self.root / "reports.parquet")

    def skipped(self) -> pd.DataFrame:
        """Every record not used, with its reason and detail."""
        return pd.read_csv(self.root / "skipped.csv", dtype=str, keep_default_na=False)


def finish_signals(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalised float32 signals from :meth:`SignalCache.signals16` operands, computed where they are.

    Args:
        batch: ``ecg`` (B, 12, L) int16 and the ``ecg_mul`` / ``ecg_add`` / ``ecg_div`` operands present
            (already on the target device), or ``ecg`` float32 (returned unchanged).

    Returns:
        (B, 12, L) float32, bit-identical to :meth:`SignalCache.signals` of the same rows.
    """
    ecg = batch["ecg"]
    if ecg.dtype == torch.float32:
        return ecg
    x = ecg.to(torch.float32)
    if "ecg_mul" in batch:
        x.mul_(batch["ecg_mul"])  # separate kernels, no fused multiply-add: numpy rounds the product first
    if "ecg_add" in batch:
        x.add_(batch["ecg_add"])
    if "ecg_div" in batch:
        x.div_(batch["ecg_div"])
    return x


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for :class:`CacheDataset`: its batches are already stacked."""
    return batch


class CacheDataset(torch.utils.data.Dataset):
    """Torch dataset over some rows of a cache, fetching whole batches at once.

    ``DataLoader`` calls :meth:`__getitems__` with a batch of indices, so one
    memmap gather serves the whole batch; pass ``collate_fn=keep_batch``. In a
    loader worker it also prepares the batch's text inputs (``text``), so that the
    training process only moves ready tensors to its device.

    Args:
        cache: the opened cache.
        rows: positional index rows in this dataset (e.g. the train split).
        norm: normalisation mode.
        text: report ids (B,) -> extra tensors of the batch (e.g. the padded text features of
            ``TextFeatureStore.padded``); must be picklable when the loader spawns workers.
        wire16: ship signals as int16 plus normalisation operands (:meth:`SignalCache.signals16`;
            :func:`finish_signals` normalises them on the device) instead of float32.
    """

    def __init__(
        self,
        cache: SignalCache,
        rows: np.ndarray,
        norm: NormMode = "minmax_record",
        *,
        text: Callable[[np.ndarray], dict[str, torch.Tensor]] | None = None,
        wire16: bool = False,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.norm = norm
        self.report_ids = cache.index["report_id"].to_numpy(np.int64)
        self.text = text
        self.wire16 = wire16

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """One batch of ``indices``.

        Returns:
            ``ecg`` (B, 12, L) float32 (int16 and its operands with ``wire16``), ``report_id`` (B,)
            int64, ``row`` (B,) int64, and what ``text`` returns.
        """
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        batch = self.cache.signals16(rows, self.norm) if self.wire16 else {"ecg": self.cache.signals(rows, self.norm)}
        ids = self.report_ids[rows]
        batch.update(report_id=torch.from_numpy(ids), row=torch.from_numpy(rows))
        if self.text is not None:
            batch.update(self.text(ids))
        return batch

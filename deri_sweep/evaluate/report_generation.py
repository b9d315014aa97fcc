"""Downstream report generation on FROZEN ECG features (spec sections 7-8).

A GPT-2 :class:`~deri_sweep.model.report_decoder.ReportDecoder` (``"tiny"`` locally,
``distilgpt2`` or another GPT-2 id/path on clusters) cross-attends to one memory token:
its own ``ecg_proj`` Linear applied to the chosen ECG embedding (e.g. ``mix``, (N, 256)).
Only the decoder (and that mapping) is trained: teacher-forced cross-entropy, AdamW lr
1e-3, weight decay 1e-8, on the records of the TRAIN split that have a report. Reports
are then generated with beam search (3 beams) for the TEST split and scored with
BLEU-1..4 and ROUGE-L (:func:`deri_sweep.evaluate.metrics.report_metrics`).

Decisions where the spec is silent: no model selection on val (a fixed number of
epochs, the val split is unused); the learning rate is constant; the decoder's
dropout is on while training and off for scoring and generation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deri_sweep.data.cache import SignalCache
from deri_sweep.evaluate.metrics import report_metrics
from deri_sweep.model.config import ReportDecoderConfig
from deri_sweep.model.report_decoder import ReportDecoder
from deri_sweep.model.text_tower import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class ReportGenConfig:
    """Report-generation settings: the decoder (its own config) and how it is fine-tuned and scored.

    Attributes:
        decoder: the GPT-2 decoder (:class:`ReportDecoderConfig`: ``name`` ``"tiny"`` for a small
            random GPT-2 over ``tokenizer``, or a hub id / local path; ``max_length`` tokens
            including [BOS], spec 257; ``num_beams``, spec 3; the tiny decoder's size). It
            cross-attends to one memory token (the frozen feature), whatever its ``feature``.
        tokenizer: text tower name whose tokenizer the tiny decoder uses (``"embedded"``: MiniLM).
        epochs: fine-tuning epochs over the train split (0: the untrained decoder).
        batch_size: reports per training step.
        lr: AdamW learning rate (spec: 1e-3).
        weight_decay: AdamW weight decay (spec: 1e-8).
        eval_batch_size: records per scoring / generation call.
        max_test: score only the first N test records (0: all).
        n_samples: generated samples returned, the first test records (0: none).
        seed: decoder initialisation and shuffling.
        device: where the decoder runs.
    """

    decoder: ReportDecoderConfig = field(default_factory=lambda: ReportDecoderConfig(name="tiny"))
    tokenizer: str = "embedded"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-8
    eval_batch_size: int = 64
    max_test: int = 0
    n_samples: int = 5
    seed: int = 0
    device: str = "cpu"

    def decoder_config(self) -> ReportDecoderConfig:
        """The decoder's config with one memory token (the frozen feature is one vector per record)."""
        return dataclasses.replace(self.decoder, feature="token")


def report_rows(cache: SignalCache) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rows of the train and test splits that have a report, and the report text of every index row.

    Returns:
        ``({"train": rows, "test": rows}, texts)`` with ``texts[i]`` the report of index row i
        (``""`` without one).

    Raises:
        ValueError: the cache has no reports.
    """
    report_id = cache.index["report_id"].to_numpy(np.int64)
    if not (cache.root / "reports.parquet").is_file() or (report_id < 0).all():
        raise ValueError(f"{cache.root}: no reports in this cache; report generation needs e.g. a PTB-XL cache")
    table = cache.reports()
    by_id = dict(zip(table["report_id"].astype(int), table["text"].astype(str), strict=True))
    texts = [by_id.get(int(r), "") if r >= 0 else "" for r in report_id]
    has = np.array([bool(t.strip()) for t in texts])
    split = cache.index["split"].to_numpy(str)
    return {name: np.flatnonzero(has & (split == name)) for name in ("train", "test")}, texts


def _memory(features: np.ndarray, rows: np.ndarray, device: str) -> torch.Tensor:
    """(B,) rows -> (B, 1, d) float32 memory on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(features[rows], dtype=np.float32)).unsqueeze(1).to(device)


def _train(
    decoder: ReportDecoder, features: np.ndarray, texts: list[str], rows: np.ndarray, config: ReportGenConfig
) -> list[float]:
    """Fine-tune ``decoder`` on ``rows``; returns the mean teacher-forced CE of each epoch."""
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    curve = []
    decoder.train()
    for epoch in range(config.epochs):
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        total = count = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            ids, mask = decoder.tokenize([texts[i] for i in batch])  # (B, N), (B, N)
            loss = decoder(_memory(features, batch, config.device), ids.to(config.device), mask.to(config.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(batch), count + len(batch)
        curve.append(total / max(count, 1))
        log.info("report decoder epoch %d/%d: train CE %.4f", epoch + 1, config.epochs, curve[-1])
    return curve


@torch.no_grad()
def _score(
    decoder: ReportDecoder, features: np.ndarray, texts: list[str], rows: np.ndarray, config: ReportGenConfig
) -> tuple[float, list[str]]:
    """Teacher-forced CE (mean over predicted tokens) and beam-search reports of ``rows``."""
    decoder.eval()
    total = tokens = 0.0
    generated: list[str] = []
    for start in range(0, len(rows), config.eval_batch_size):
        batch = rows[start : start + config.eval_batch_size]
        memory = _memory(features, batch, config.device)  # (B, 1, d)
        ids, mask = decoder.tokenize([texts[i] for i in batch])
        n_pred = float(mask[:, 1:].sum())  # every real token after [BOS] is predicted
        total += float(decoder(memory, ids.to(config.device), mask.to(config.device))) * n_pred
        tokens += n_pred
        generated += decoder.generate(memory, num_beams=config.decoder.num_beams, max_length=config.decoder.max_length)
    return total / max(tokens, 1.0), generated


def run_report_generation(
    features: np.ndarray, cache: SignalCache, config: ReportGenConfig | None = None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Fine-tune a report decoder on frozen features and score its reports on the test split.

    Args:
        features: (N, d) float32 ECG features, rows aligned with ``cache.index``.
        cache: a downstream cache with reports (``report_id`` + ``reports.parquet``) and train/test splits.
        config: settings (default :class:`ReportGenConfig`).

    Returns:
        ``(metrics, samples)``: metrics ``bleu1..bleu4``, ``rougeL`` (fractions in [0, 1]),
        ``test_ce`` (teacher-forced CE on the test reports), ``train_ce_first`` / ``train_ce_last``
        (mean CE of the first / last epoch, NaN without epochs), ``n_train``, ``n_test``,
        ``epochs``, ``seconds``; samples: up to ``config.n_samples`` dicts ``record_id``,
        ``reference``, ``generated`` for the first test records.

    Raises:
        ValueError: features and cache disagree in length, or no reports / empty split.
    """
    config, start = config or ReportGenConfig(), time.perf_counter()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(cache):
        raise ValueError(f"features {features.shape} must be (N, d) with N = {len(cache)} records of {cache.root}")
    rows, texts = report_rows(cache)
    if config.max_test:
        rows["test"] = rows["test"][: config.max_test]
    if not len(rows["train"]) or not len(rows["test"]):
        raise ValueError(
            f"{cache.root}: need train and test records with reports, got { {k: len(v) for k, v in rows.items()} }"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = load_tokenizer(config.tokenizer) if config.decoder.name == "tiny" else None
        decoder = ReportDecoder(config.decoder_config(), text_tokenizer=tokenizer, ecg_dim=features.shape[1])
        decoder.to(config.device)
        curve = _train(decoder, features, texts, rows["train"], config)
        test_ce, generated = _score(decoder, features, texts, rows["test"], config)
    references = [texts[i] for i in rows["test"]]
    metrics = report_metrics(references, generated)
    metrics.update(
        test_ce=test_ce,
        train_ce_first=curve[0] if curve else math.nan,
        train_ce_last=curve[-1] if curve else math.nan,
        n_train=float(len(rows["train"])),
        n_test=float(len(rows["test"])),
        epochs=float(config.epochs),
        seconds=time.perf_counter() - start,
    )
    record_ids = cache.index["record_id"].astype(str).to_numpy()
    samples = [
        {"record_id": record_ids[row], "reference": references[i], "generated": generated[i]}
        for i, row in enumerate(rows["test"][: max(config.n_samples, 0)])
    ]
    log.info("report generation: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics, samples

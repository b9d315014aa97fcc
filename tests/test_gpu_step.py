"""The GPU-minded training step, checked on CPU: the chunked caption loss and the 16-bit signal wire."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deri_sweep.model import report_decoder as rd
from deri_sweep.model.config import ReportDecoderConfig
from deri_sweep.model.report_decoder import ReportDecoder
from deri_sweep.model.text_tower import load_tokenizer

REPORTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response. left axis deviation. abnormal ecg.",
    "sinus bradycardia",
]


def test_chunked_caption_loss_and_gradients_equal_the_plain_lm_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Micro-batches of one caption each (under checkpointing) vs ``GPT2LMHeadModel(labels=...)``, float32."""
    torch.manual_seed(0)
    cfg = ReportDecoderConfig(name="tiny", max_length=40, tiny_layers=2, tiny_embd=64, tiny_heads=4)
    decoder = ReportDecoder(cfg, text_tokenizer=load_tokenizer("embedded"), ecg_dim=16).eval()  # no dropout
    ids, mask = decoder.tokenize(REPORTS)
    memory = torch.randn(len(REPORTS), 1, 16)
    assert ids.shape[1] > 20  # 40 tokens per micro-batch: one row each

    labels = ids.masked_fill(mask == 0, -100)
    plain = decoder.lm(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=decoder.ecg_proj(memory), labels=labels
    )
    plain.loss.backward()
    expected = {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}
    decoder.zero_grad(set_to_none=True)

    monkeypatch.setattr(rd, "CAPTION_TOKENS_PER_CHUNK", 40)  # one row per micro-batch
    chunked = decoder(memory, ids, mask)
    chunked.backward()
    assert chunked.dtype == torch.float32
    assert abs(chunked.item() - plain.loss.item()) <= 1e-5
    got = {n: p.grad for n, p in decoder.named_parameters() if p.grad is not None}
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_16_bit_signals_finish_bit_identical_to_float32(tmp_path) -> None:
    """int16 samples + normalisation operands, finished with torch, equal the numpy float32 path bit for bit."""
    import json

    import pandas as pd

    from deri_sweep.data.cache import SignalCache, finish_signals

    rng = np.random.default_rng(0)
    raw = rng.integers(-3000, 3000, size=(6, 12, 500), dtype=np.int16)
    raw[2] = 7  # a flat record: minmax's floor of 1
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "shard_00000.npy", raw)
    index = pd.DataFrame({"shard": np.zeros(6, np.int64), "row": np.arange(6), "report_id": np.arange(6)})
    index.to_parquet(tmp_path / "index.parquet")
    (tmp_path / "cache.json").write_text(json.dumps({"complete": True, "signal": {"length": 500}, "label_sets": {}}))
    cache = SignalCache.open(tmp_path)
    rows = np.array([4, 0, 2, 5])
    for norm in ("minmax_record", "zscore_lead", "none"):
        wire = cache.signals16(rows, norm)
        assert wire["ecg"].dtype == torch.int16
        assert torch.equal(finish_signals(wire), cache.signals(rows, norm)), norm


@pytest.mark.slow
def test_every_shipped_row_fits_24_gb_at_batch_512_per_gpu() -> None:
    """Issue 24: the dry run's per-worker estimate of every grid row of every cluster space is under 24 GB."""
    import dataclasses

    from deri_sweep.orchestration.dry_run import TARGET_GPU_GB, estimate_gpu_memory, resolve_plan
    from deri_sweep.orchestration.spaces import load_space

    estimates: dict[tuple[str, str], float] = {}
    for name in ("paper_ablation", "interaction_depth", "decoders", "loss_weights", "tpe_joint"):
        for record in resolve_plan(load_space(name)):
            cfg = record.config
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, batch_size=512))
            estimates[(name, record.variant)] = estimate_gpu_memory(cfg)["estimate_gb"]
    over = {key: gb for key, gb in estimates.items() if gb > TARGET_GPU_GB}
    assert not over, over
    # the estimate sees what a row adds: the caption decoder and the interaction stacks cost memory
    assert estimates[("paper_ablation", "with_caption")] > estimates[("paper_ablation", "full")] + 2.0
    assert estimates[("paper_ablation", "full")] > estimates[("paper_ablation", "merl_like")] + 2.0

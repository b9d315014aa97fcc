"""Optional report decoder: GPT-2 with cross-attention to the ECG representation (spec section 7).

``report_decoder.name``:
- ``"tiny"``: a small randomly initialised GPT-2 (``tiny_layers`` x ``tiny_heads``,
  ``tiny_embd`` wide) over a copy of the text tower's tokenizer, for offline runs;
- a GPT-2 hub id or local path (``"distilgpt2"``, the paper's decoder): pretrained
  weights, new cross-attention layers.

Tokens ``[BOS]`` and ``[PAD]`` are added; a sequence is ``[BOS] report [EOS]`` (EOS is
the tokenizer's own EOS, else its [SEP], else an added ``[EOS]``), at most
``max_length`` tokens. The ECG embedding (B, M, 256) is mapped by one Linear to the
decoder width and passed as ``encoder_hidden_states``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from deri_sweep.model.config import ReportDecoderConfig
from deri_sweep.model.text_tower import offline_error, resolve_text_name

log = logging.getLogger(__name__)


def _prepare_tokenizer(tokenizer: Any) -> Any:
    """Copy ``tokenizer`` and add [BOS], [PAD] (and an EOS when it has none)."""
    tokenizer = copy.deepcopy(tokenizer)
    special = {"bos_token": "[BOS]", "pad_token": tokenizer.pad_token or "[PAD]"}
    if tokenizer.eos_token is None:
        special["eos_token"] = tokenizer.sep_token or "[EOS]"
    tokenizer.add_special_tokens(special)
    return tokenizer


#: caption tokens (rows x padded length) per micro-batch of the caption loss: its (2048, 50260) float32 logits
#: with their bf16 source and gradient are ~1 GB, and only one micro-batch's decoder activations exist at a time
CAPTION_TOKENS_PER_CHUNK = 2048


def caption_chunk_rows(length: int) -> int:
    """Rows per micro-batch of the caption loss for captions padded to ``length`` tokens."""
    return max(1, CAPTION_TOKENS_PER_CHUNK // max(length, 1))


class ReportDecoder(nn.Module):
    """GPT2LMHeadModel (``add_cross_attention=True``) conditioned on an ECG embedding.

    Args:
        cfg: the ``report_decoder`` config section (``name`` must not be ``"none"``).
        text_tokenizer: the text tower's tokenizer, required for ``name="tiny"``.
        ecg_dim: width of the ECG embedding it cross-attends to (token.dim).
    """

    def __init__(self, cfg: ReportDecoderConfig, *, text_tokenizer: Any = None, ecg_dim: int = 256) -> None:
        super().__init__()
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        if not cfg.enabled:
            raise ValueError("report_decoder.name=none: there is no decoder to build")
        self.cfg = cfg
        if cfg.name == "tiny":
            if text_tokenizer is None:
                raise ValueError("report_decoder.name=tiny needs the text tower's tokenizer (text_tokenizer=...)")
            self.tokenizer = _prepare_tokenizer(text_tokenizer)
            self._set_special_ids()
            gpt_cfg = GPT2Config(
                vocab_size=len(self.tokenizer),
                n_positions=cfg.max_length,
                n_embd=cfg.tiny_embd,
                n_layer=cfg.tiny_layers,
                n_head=cfg.tiny_heads,
                add_cross_attention=True,
                bos_token_id=self.bos_id,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
            )
            self.lm = GPT2LMHeadModel(gpt_cfg)
        else:
            path = resolve_text_name(cfg.name)
            try:
                self.tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(path))
                self.lm = GPT2LMHeadModel.from_pretrained(path, add_cross_attention=True, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise offline_error(cfg.name, exc, key="report_decoder.name") from exc
            self.lm.resize_token_embeddings(len(self.tokenizer))
            if self.lm.config.n_positions < cfg.max_length:
                raise ValueError(f"report_decoder.max_length={cfg.max_length} > {cfg.name} n_positions")
            self._set_special_ids()
            self.lm.config.bos_token_id, self.lm.config.eos_token_id = self.bos_id, self.eos_id
            self.lm.config.pad_token_id = self.pad_id
        self.lm.loss_type = "ForCausalLM"  # mean CE over labels != -100, shifted inside the model
        self.ecg_proj = nn.Linear(ecg_dim, self.lm.config.n_embd)

    def _set_special_ids(self) -> None:
        ids = self.tokenizer.convert_tokens_to_ids
        self.bos_id = int(ids(self.tokenizer.bos_token))
        self.eos_id = int(ids(self.tokenizer.eos_token))
        self.pad_id = int(ids(self.tokenizer.pad_token))

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Reports -> (ids (B, N) int64 ``[BOS] ... [EOS]`` right padded with [PAD], mask (B, N) int64)."""
        body = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.cfg.max_length - 2
        )
        seqs = [[self.bos_id, *ids, self.eos_id] for ids in body["input_ids"]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, N)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, N)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        return ids, mask

    def forward(self, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced cross-entropy of the report given the ECG.

        Args:
            memory: (B, M, ecg_dim) ECG embedding(s) to cross-attend to (M = 1 for one token).
            ids: (B, N) from :meth:`tokenize`.
            mask: (B, N) 1 at real tokens.

        Returns:
            Scalar mean CE over predicted real tokens (the report and [EOS]), in float32. It is what
            ``GPT2LMHeadModel(labels=...)`` returns, computed in micro-batches of
            :data:`CAPTION_TOKENS_PER_CHUNK` tokens under activation checkpointing: the full (B, N, V)
            logits never exist, nor more than one micro-batch's decoder activations.
        """
        count = int(mask[:, 1:].sum())  # predicted real tokens: the report and [EOS]
        rows = caption_chunk_rows(ids.shape[1])
        total = memory.new_zeros((), dtype=torch.float32)
        for start in range(0, ids.shape[0], rows):
            part = (memory[start : start + rows], ids[start : start + rows], mask[start : start + rows])
            if torch.is_grad_enabled():  # keep only the micro-batch's inputs; recompute it in the backward pass
                total = total + checkpoint(self._summed_ce, *part, use_reentrant=False)
            else:
                total = total + self._summed_ce(*part)
        return total / count

    def _summed_ce(self, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Summed float32 CE of one micro-batch: memory (b, M, ecg_dim), ids/mask (b, N) -> ()."""
        hidden = self.lm.transformer(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=self.ecg_proj(memory), use_cache=False
        ).last_hidden_state  # (b, N, E)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (b, N-1): position i predicts token i+1
        keep = targets != -100
        logits = self.lm.lm_head(hidden[:, :-1][keep]).float()  # (T, V), T <= CAPTION_TOKENS_PER_CHUNK
        return F.cross_entropy(logits, targets[keep], reduction="sum")

    @torch.no_grad()
    def generate(self, memory: Tensor, *, num_beams: int | None = None, max_length: int | None = None) -> list[str]:
        """Beam-search reports for a batch of ECG embeddings.

        Args:
            memory: (B, M, ecg_dim).
            num_beams: beam size (default ``cfg.num_beams`` = 3).
            max_length: most tokens including [BOS] (default ``cfg.max_length``).

        Returns:
            B decoded strings (special tokens removed).
        """
        b = memory.shape[0]
        bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=memory.device)  # (B, 1)
        out = self.lm.generate(
            input_ids=bos,
            attention_mask=torch.ones_like(bos),
            encoder_hidden_states=self.ecg_proj(memory),
            num_beams=num_beams or self.cfg.num_beams,
            max_length=max_length or self.cfg.max_length,
            do_sample=False,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )  # (B, <= max_length)
        return self.tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)

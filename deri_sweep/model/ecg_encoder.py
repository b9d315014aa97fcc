"""ECG side of DERI: ResNet18-1D backbone, token head and attention-pool blocks (spec sections 2 and 4).

Shapes for the reference input (B, 12, 5000): the backbone gives F (B, 512, 313),
the strided 1x1 conv gives D (B, 256, 105) and the attention-pool block gives the
token sequence E (B, 105, 256). :func:`token_count` computes T for other lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deri_sweep.model.config import ECGConfig, Init, TokenConfig

#: Stage widths of the reference ResNet18-1D (two BasicBlocks per stage); ``ecg.width`` scales them.
WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
STRIDES: tuple[int, ...] = (1, 2, 2, 2)


def stage_widths(width: int) -> tuple[int, ...]:
    """Stage widths for a stem width ``width`` (64 -> 64/128/256/512, the reference)."""
    return tuple(width * w // WIDTHS[0] for w in WIDTHS)


def _conv_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def backbone_length(num_samples: int) -> int:
    """Time steps of F for an input of ``num_samples`` (5000 -> 313)."""
    length = _conv_len(num_samples, 7, 2, 3)  # stem
    for stride in STRIDES:
        length = _conv_len(length, 3, stride, 1)
    return length


def token_count(num_samples: int, stride: int) -> int:
    """Number of ECG tokens T after the strided 1x1 conv (5000, 3 -> 105)."""
    return _conv_len(backbone_length(num_samples), 1, stride, 0)


class BasicBlock1D(nn.Module):
    """Two k3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, L) -> (B, c_out, L / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet1D18(nn.Module):
    """Randomly initialised ResNet18-1D: stem k7/s2 (no max-pool), 4 stages x 2 BasicBlocks.

    ~3.85 M parameters at the reference width 64, about a quarter of that at 32.

    Args:
        in_leads: input channels.
        width: channels of the stem and first stage (64, the reference); F has ``8 * width``.
    """

    def __init__(self, in_leads: int = 12, width: int = 64) -> None:
        super().__init__()
        widths = stage_widths(width)
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, c_in = [], widths[0]
        for c_out, stride in zip(widths, STRIDES, strict=True):
            stages.append(nn.Sequential(BasicBlock1D(c_in, c_out, stride), BasicBlock1D(c_out, c_out, 1)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.out_channels = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, leads, 5000) -> F (B, 8 * width, 313); (B, 512, 313) at the reference width."""
        return self.stages(self.stem(x))


class AttentionPool(nn.Module):
    """Learned pos-emb for n+2 positions, one separator at both ends, one multi-head self-attention.

    As in the reference (MERL/DERI ``AttentionPool``) there is no residual, norm or
    FFN, and no projection after the attention: the reference defines ``c_proj`` but
    its forward has it commented out. ``projection=True`` (``token.pool_projection``)
    adds that Linear(dim, dim) as ``proj``. Separators are dropped from the output.

    Args:
        dim: token width d.
        heads: attention heads (must divide ``dim``).
        n_tokens: sequence length n the positional embedding is sized for.
        projection: apply a Linear(dim, dim) after the attention.
        init: ``reference`` (separator std 1, positions std 1/dim) or ``small`` (std 0.02).
    """

    def __init__(self, dim: int, heads: int, n_tokens: int, projection: bool = False, init: Init = "reference") -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.sep = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, n_tokens + 2, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj: nn.Linear | None = nn.Linear(dim, dim) if projection else None
        if init == "reference":  # the authors': torch.randn(dim) and torch.randn(1, n + 2, dim) / dim
            nn.init.normal_(self.sep, std=1.0)
            nn.init.normal_(self.pos, std=1.0 / dim)
        else:
            nn.init.trunc_normal_(self.sep, std=0.02)
            nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, dim) -> (B, n, dim)."""
        if x.shape[1] != self.n_tokens:
            raise ValueError(f"AttentionPool sized for {self.n_tokens} tokens got {x.shape[1]} (check ecg.num_samples)")
        sep = self.sep.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        h = torch.cat([sep, x, sep], dim=1) + self.pos  # (B, n+2, dim)
        h, _ = self.attn(h, h, h, need_weights=False)  # (B, n+2, dim)
        h = h[:, 1:-1]  # (B, n, dim)
        return self.proj(h) if self.proj is not None else h


class TokenHead(nn.Module):
    """Strided 1x1 conv (8w -> d, 512 -> d at the reference width) and the 4-head attention-pool block.

    0.42 M parameters at the reference size (0.49 M with ``token.pool_projection``,
    the figure of spec section 10, which counts the reference's unused ``c_proj``).
    """

    def __init__(self, c_in: int, cfg: TokenConfig, n_tokens: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, cfg.dim, 1, stride=cfg.stride)
        self.pool = AttentionPool(cfg.dim, cfg.heads, n_tokens, cfg.pool_projection, cfg.init)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """F (B, 512, L) -> (D (B, T, d), E (B, T, d))."""
        d = self.conv(feats).transpose(1, 2)  # (B, T, d)
        return d, self.pool(d)


class ECGEncoder(nn.Module):
    """Backbone + token head.

    Args:
        ecg: input channels and signal length (sets T).
        token: token head settings.
    """

    def __init__(self, ecg: ECGConfig, token: TokenConfig) -> None:
        super().__init__()
        self.num_samples = ecg.num_samples
        self.n_tokens = token_count(ecg.num_samples, token.stride)
        self.resnet = ResNet1D18(ecg.in_leads, ecg.width)
        self.token_head = TokenHead(self.resnet.out_channels, token, self.n_tokens)

    def forward(self, ecg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a batch of ECGs.

        Args:
            ecg: (B, leads, num_samples).

        Returns:
            F (B, 8 * width, L), D (B, T, d) and E (B, T, d).
        """
        if ecg.shape[-1] != self.num_samples:
            raise ValueError(
                f"ECG has {ecg.shape[-1]} samples; the model is built for ecg.num_samples={self.num_samples}"
            )
        feats = self.resnet(ecg)  # (B, 8 * width, L)
        d, e = self.token_head(feats)  # (B, T, d) each
        return feats, d, e


class RMEPools(nn.Module):
    """Two random masked views of D, each pooled by its own attention-pool block.

    0.58 M parameters at the reference size (0.71 M with ``projection``, the ~0.7 M of
    spec section 10, which counts the reference's unused ``c_proj``).

    Each view keeps ``int(T * keep_ratio)`` tokens chosen at random per sample, in time
    order (the reference shuffles; keeping time order is the spec's decision).

    Args:
        dim: token width d.
        heads: attention heads of each pool.
        n_tokens: T, the length of D.
        keep_ratio: fraction of the T tokens each view keeps.
        projection: apply a Linear(dim, dim) after each pool's attention (``token.pool_projection``).
        init: the pools' separator/position initialisation (``token.init``).
    """

    def __init__(
        self, dim: int, heads: int, n_tokens: int, keep_ratio: float, projection: bool = False, init: Init = "reference"
    ) -> None:
        super().__init__()
        self.n_keep = max(1, int(n_tokens * keep_ratio))
        self.pool1 = AttentionPool(dim, heads, self.n_keep, projection, init)
        self.pool2 = AttentionPool(dim, heads, self.n_keep, projection, init)

    def _view(self, d: Tensor) -> Tensor:
        b, t, dim = d.shape
        keep = torch.rand(b, t, device=d.device).argsort(dim=1)[:, : self.n_keep]  # (B, K) random subset
        keep = keep.sort(dim=1).values  # (B, K) in time order
        return d.gather(1, keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, K, d)

    def forward(self, d: Tensor) -> tuple[Tensor, Tensor]:
        """D (B, T, d) -> (u1 (B, d), u2 (B, d))."""
        u1 = self.pool1(self._view(d)).mean(dim=1)  # (B, d)
        u2 = self.pool2(self._view(d)).mean(dim=1)  # (B, d)
        return u1, u2

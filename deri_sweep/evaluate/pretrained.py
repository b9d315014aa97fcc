"""Load a pretrained DERI from a checkpoint directory, or build the random-init floor.

Checkpoint contract (written by :func:`deri_sweep.train.checkpoint.save_checkpoint` in the
pretraining job): ``state.pt`` holds ``{"model": DERI state_dict, "optimizer", ...}``,
where the model state has NO ``text.*`` weights when the run trained from the text
feature cache; ``meta.json`` holds ``{"config": TrainConfig as a dict,
"text_hidden_size": int, "epoch": int, "metrics": {...}, "git_commit": str}``.

Downstream evaluation needs the ECG side only, so :func:`load_pretrained` builds a
features-only DERI by default (``with_text_tower=False``: no text weights are
loaded, ``text.*`` keys in the state are ignored). Zero-shot needs the tower: with
``with_text_tower=True`` the frozen tower is loaded from ``config.model.text`` (its
weights are the published ones, not part of the checkpoint) unless the state carries
them. The random-init floor (:func:`random_init`) is the same architecture with
untrained weights, a pure function of (config, text hidden size, seed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from deri_sweep.common.strict_loader import ConfigError, from_dict
from deri_sweep.model.deri import DERI
from deri_sweep.model.text_tower import TextTower
from deri_sweep.train.checkpoint import CheckpointError, load_checkpoint
from deri_sweep.train.train_config import TrainConfig

log = logging.getLogger(__name__)

#: Prefixes that wrappers add to state-dict keys (DistributedDataParallel, torch.compile).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
TEXT_PREFIX = "text."


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP / torch.compile key prefixes (``module.ecg...`` -> ``ecg...``)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def read_train_config(directory: str | Path, meta: dict[str, Any]) -> tuple[TrainConfig, int]:
    """The run's :class:`TrainConfig` and text hidden size from a checkpoint's ``meta.json``.

    Args:
        directory: the checkpoint directory (for error messages).
        meta: its parsed ``meta.json``.

    Returns:
        ``(config, text_hidden_size)``.

    Raises:
        CheckpointError: a key is missing or the config no longer validates (names the path).
    """
    try:
        config = from_dict(TrainConfig, meta["config"])
        hidden = int(meta["text_hidden_size"])
    except KeyError as exc:
        raise CheckpointError(
            f"{directory}: meta.json lacks {exc.args[0]!r}; not a DERI pretraining checkpoint"
        ) from exc
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}: meta.json config does not validate ({exc})") from exc
    return config, hidden


def load_pretrained(
    directory: str | Path, *, with_text_tower: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[DERI, TrainConfig]:
    """Rebuild the pretrained DERI of a checkpoint, in eval mode.

    Args:
        directory: checkpoint directory (``state.pt`` + ``meta.json``).
        with_text_tower: also build the frozen text tower (zero-shot); its weights come
            from the state when present, else from ``config.model.text.name``.
        map_location: where tensors are loaded (the model stays there).

    Returns:
        ``(model, config)``: the model in eval mode and the run's :class:`TrainConfig`.

    Raises:
        CheckpointError: missing, unfinished or corrupt checkpoint, or weights that do
            not fit the architecture its config describes; the message names the path.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    state, meta = load_checkpoint(directory, map_location=map_location)
    config, hidden = read_train_config(directory, meta)
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{directory}: state.pt has no 'model' state dict")
    weights = _strip_wrappers(weights)
    if with_text_tower:
        model = DERI(config.model, text_tower=TextTower(config.model.text))
        if model.text_hidden_size != hidden:
            raise CheckpointError(
                f"{directory}: trained with a {hidden}-d text tower, but text.name={config.model.text.name!r} "
                f"loads a {model.text_hidden_size}-d one"
            )
    else:
        model = DERI(config.model, text_hidden_size=hidden)
        weights = {k: v for k, v in weights.items() if not k.startswith(TEXT_PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{directory}: weights do not fit the configured model ({exc})") from exc
    missing = [k for k in missing if not k.startswith(TEXT_PREFIX)]
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit the configured model; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.to(map_location).eval()
    log.info("loaded %s (epoch %s, text hidden %d)", directory, meta.get("epoch"), hidden)
    return model, config


def random_init(train_config: TrainConfig, text_hidden_size: int, seed: int) -> DERI:
    """The random-init floor: an untrained features-only DERI of ``train_config.model``, in eval mode.

    The global RNG state is left untouched (the weights are drawn in a forked RNG), so
    the same (config, hidden size, seed) always gives the same weights. BatchNorm layers
    keep their initial running statistics (mean 0, variance 1).

    Args:
        train_config: the run config whose architecture to build.
        text_hidden_size: hidden size of the text tower the run would use (384 MiniLM, 768 MedCPT).
        seed: weight seed.

    Returns:
        The model in eval mode, on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DERI(train_config.model, text_hidden_size=text_hidden_size)
    return model.eval()

"""Zero-shot classification by ECG-prompt similarity (spec section 8).

One text prompt per class (its description, optionally expanded with synonyms)
is encoded elsewhere by the text tower + ``proj_t``; here the class embeddings
and the ECG embeddings (``m_e``) are L2-normalised and compared by cosine
similarity, and the similarities are scored by macro AUROC.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

from deri_sweep.evaluate.metrics import MacroAuroc, macro_auroc

log = logging.getLogger(__name__)
T = TypeVar("T")


def _normalise(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """(N, d) -> float64 tensor with unit rows (a zero row stays zero)."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, d), got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1)


def zero_shot_scores(ecg_emb: np.ndarray | torch.Tensor, class_emb: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity of every record to every class prompt.

    Args:
        ecg_emb: (N, d) ECG embeddings.
        class_emb: (C, d) prompt embeddings, one row per class.

    Returns:
        (N, C) float64 cosine similarities in [-1, 1].
    """
    e, c = _normalise(ecg_emb, "ecg_emb"), _normalise(class_emb, "class_emb")
    if e.shape[1] != c.shape[1]:
        raise ValueError(f"embedding widths differ: ECG {e.shape[1]}, classes {c.shape[1]}")
    return (e @ c.T).numpy()


def zero_shot_auroc(
    ecg_emb: np.ndarray | torch.Tensor, class_emb: np.ndarray | torch.Tensor, labels: np.ndarray
) -> MacroAuroc:
    """Macro AUROC of the zero-shot similarities.

    Args:
        ecg_emb: (N, d) ECG embeddings.
        class_emb: (C, d) prompt embeddings.
        labels: (N, C) 0/1 labels.

    Returns:
        :class:`MacroAuroc` (classes with one label value are NaN and counted).
    """
    return macro_auroc(np.asarray(labels), zero_shot_scores(ecg_emb, class_emb))


def _lookup(table: Mapping[str, T] | None, name: str) -> T | None:
    """``table[name]``, else a case-insensitive match, else None."""
    if not table:
        return None
    if name in table:
        return table[name]
    return {str(k).lower(): v for k, v in table.items()}.get(name.lower())


def build_prompts(
    class_names: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """One lower-case prompt per class: its description (else its name), then synonyms joined by ", ".

    Descriptions and synonyms are looked up by the exact class name first, then
    case-insensitively. Synonyms equal to the text already in the prompt are skipped.

    Args:
        class_names: (C,) class names (e.g. ``"NORM"``, ``"AFIB"``).
        descriptions: class name -> description (e.g. ``"atrial fibrillation"``).
        synonyms: class name -> extra phrasings appended to the prompt.

    Returns:
        (C,) prompts, in the order of ``class_names``.
    """
    prompts = []
    for name in class_names:
        description = _lookup(descriptions, name)
        parts = [" ".join(str(description or name).split()).lower()]
        for extra in _lookup(synonyms, name) or ():
            text = " ".join(str(extra).split()).lower()
            if text and text not in parts:
                parts.append(text)
        if description is None and descriptions:
            log.debug("no description for class %r: using its name", name)
        prompts.append(", ".join(parts))
    return prompts

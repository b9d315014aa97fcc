"""Zero-shot classification by ECG-prompt similarity (spec section 8).

One text prompt per class (its description, optionally expanded with synonyms)
is encoded elsewhere by the text tower + ``proj_t``; here the class embeddings
and the ECG embeddings (``m_e``) are L2-normalised and compared by cosine
similarity, and the similarities are scored by macro AUROC.
:func:`zero_shot_task` does the whole task: prompts from the cache's class
descriptions, encoded by a model with its text tower, scored on the TEST split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import torch

from deri_sweep.data.cache import SignalCache
from deri_sweep.evaluate.metrics import MacroAuroc, macro_auroc
from deri_sweep.evaluate.probe_tasks import TIDY_COLUMNS, Task, task_rows

if TYPE_CHECKING:
    from deri_sweep.model.deri import DERI

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


@torch.no_grad()
def encode_prompts(model: DERI, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Prompts -> L2-normalised class embeddings z_t = norm(proj_t(p)) via the model's text tower.

    Args:
        model: a DERI WITH its text tower (``load_pretrained(..., with_text_tower=True)``).
        prompts: (C,) prompt strings.
        batch_size: prompts per forward.

    Returns:
        (C, d) float32 on the CPU.
    """
    if model.text is None:
        raise ValueError("zero-shot needs the text tower: load the model with with_text_tower=True")
    was_training = model.training
    model.eval()
    device = next(model.proj_t.parameters()).device
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = model.text.tokenize(list(prompts[start : start + batch_size]))
            out.append(model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def zero_shot_task(
    model: DERI,
    features: np.ndarray,
    cache: SignalCache,
    task: Task,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Zero-shot macro AUROC of one task on the TEST split.

    Prompts are the class descriptions of ``cache.info["class_descriptions"][task.label_set]``
    (class names where missing, see :func:`build_prompts`); test records without any
    positive label of the task are left out, as in the linear probe.

    Args:
        model: a DERI with its text tower.
        features: (N, d) ``mix`` features (m_e) of every record, rows aligned with ``cache.index``.
        cache: the task's cache.
        task: which label set.
        synonyms: optional extra phrasings per class name.

    Returns:
        Tidy rows (:data:`~deri_sweep.evaluate.probe_tasks.TIDY_COLUMNS`, method ``"zero_shot"``,
        fraction and probe_seed NaN): metrics ``zero_shot_auroc``, ``n_undefined_classes``,
        ``n_test`` and ``zero_shot_auroc/<class>``.
    """
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(cache):
        raise ValueError(f"features {features.shape} must be (N, d) with N = {len(cache)} records of {cache.root}")
    names = cache.label_sets[task.label_set]
    descriptions = cache.info.get("class_descriptions", {}).get(task.label_set)
    prompts = build_prompts(names, descriptions, synonyms)
    labels = cache.labels(task.label_set)
    test = task_rows(labels, cache.index["split"].to_numpy(str), 1.0, 0)["test"]
    if not len(test):
        raise ValueError(f"{task.name}: no test record with a label of this task")
    result = zero_shot_auroc(features[test], encode_prompts(model, prompts), labels[test])
    values = {"zero_shot_auroc": result.macro, "n_undefined_classes": float(result.n_undefined), "n_test": len(test)}
    values.update({f"zero_shot_auroc/{n}": float(v) for n, v in zip(names, result.per_class, strict=True)})
    log.info("%s zero-shot macro AUROC %.4f (%d test records)", task.name, result.macro, len(test))
    base = {"task": task.name, "label_set": task.label_set, "method": "zero_shot", "fraction": np.nan}
    rows = [{**base, "probe_seed": np.nan, "metric": k, "value": float(v)} for k, v in values.items()]
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))

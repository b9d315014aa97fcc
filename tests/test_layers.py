"""Layers point one way: data, model, the training library and evaluation never import Ray or Optuna.

Read from the source (every ``import``, at the top of a module or inside a function) and
checked again at run time (importing every module of the lower layers in a fresh process
loads neither Ray nor Optuna). The rules:

- ``deri_sweep/common``: plumbing; imports nothing else of deri_sweep.
- ``deri_sweep/data``: readers, caches, the synthetic twin; only ``common`` besides itself.
- ``deri_sweep/model``: torch, its own config and the plumbing of ``common``; nothing of data,
  training, evaluation or orchestration (loading a trained encoder from a checkpoint is
  ``evaluate/pretrained.py``).
- ``deri_sweep/train``: the training library; no evaluation, no orchestration.
- ``deri_sweep/evaluate``: probes on frozen features; no orchestration.
- ``analysis``: reads result files; no orchestration.
None of them imports ``ray`` or ``optuna``; only ``deri_sweep/orchestration`` and the entry
points do.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "optuna", "deri_sweep.orchestration", "deri_sweep.ablate", "deri_sweep.pretrain",
                 "deri_sweep.probe")  # fmt: skip
#: layer folder -> module prefixes it must not import
FORBIDDEN = {
    "deri_sweep/common": (
        *ORCHESTRATION,
        "deri_sweep.data",
        "deri_sweep.model",
        "deri_sweep.train",
        "deri_sweep.evaluate",
        "analysis",
    ),
    "deri_sweep/data": (*ORCHESTRATION, "deri_sweep.model", "deri_sweep.train", "deri_sweep.evaluate", "analysis"),
    "deri_sweep/model": (
        *ORCHESTRATION,
        "deri_sweep.data",
        "deri_sweep.train",
        "deri_sweep.evaluate",
        "analysis",
    ),
    "deri_sweep/train": (*ORCHESTRATION, "deri_sweep.evaluate", "analysis"),
    "deri_sweep/evaluate": (*ORCHESTRATION, "analysis"),
    "analysis": ORCHESTRATION,
}


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, the modules it may load) of every absolute import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from deri_sweep import orchestration`` names the module in the alias
            found.append((node.lineno, [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]))
    return found


def _violations(layer: str) -> list[str]:
    banned = FORBIDDEN[layer]
    bad = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for line, modules in _imports(path):
            hits = [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]
            if hits:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {hits[0]}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    assert (REPO / layer).is_dir()
    assert _violations(layer) == []


def test_the_rule_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    """A forbidden import hidden in a function body is found (the check reads the syntax tree, not the top)."""
    layer = tmp_path / "deri_sweep" / "model"
    layer.mkdir(parents=True)
    (layer / "sneaky.py").write_text("def f():\n    from deri_sweep.train.checkpoint import load_checkpoint\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _violations("deri_sweep/model") == ["deri_sweep/model/sneaky.py:2 imports deri_sweep.train.checkpoint"]


def test_importing_every_lower_module_loads_neither_ray_nor_optuna():
    code = """
import importlib, pkgutil, sys
import analysis, deri_sweep.common, deri_sweep.data, deri_sweep.evaluate, deri_sweep.model, deri_sweep.train
for package in (deri_sweep.common, deri_sweep.data, deri_sweep.model, deri_sweep.train, deri_sweep.evaluate, analysis):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print(sorted({m.split(".")[0] for m in sys.modules} & {"ray", "optuna"}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

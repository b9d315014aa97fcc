"""Every configuration of every shipped space builds, trains one step and gives its probe feature real numbers.

The sweeps in CI run two spaces end to end (the default, and every row of the paper's ablation);
this checks all the others row by row, in one process, on the model they resolve to: each grid
configuration of each shipped space, and for the sampled space (``tpe_joint``) every corner of its
structural parameters (interaction depth at its bounds x decode_t x decode_e, loss weights at
their upper bounds, the ``when`` conditions honoured by the space's own define-by-run function
through Optuna's ``FixedTrial``). The towers are the ones the package ships (``--local-towers``:
the embedded MiniLM for MedCPT, the tiny GPT-2 for DistilGPT2; no hub access here) and the signal
is 1000 samples; everything else is the configuration as resolved for the trial.

One training step each: real report texts through the real text tower, the DERI objective with
the trial's weights, a backward pass and an AdamW step, then the frozen feature the space probes
(``probes.feature``, read from m_e or z_e as the configuration allows).
"""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
import torch

from deri_sweep.model.deri import DERI
from deri_sweep.model.text_tower import TextTower
from deri_sweep.orchestration.spaces import SPACES_DIR, DefineByRun, ParamSpec, SearchSpace, load_space
from deri_sweep.train.engine import TextSource, build_optimizer
from deri_sweep.train.losses import DeriLoss

SHORT = 1000
REPORTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response. left axis deviation. abnormal ecg.",
    "sinus bradycardia. possible inferior infarct, age undetermined.",
    "sinus tachycardia. st depression, consider ischemia.",
]


def _corners(params: dict[str, ParamSpec]) -> list[dict[str, object]]:
    """The sampled space's corners: ints at both bounds x every choice; floats at their upper bound."""
    structural = {k: ([int(p.low), int(p.high)] if p.type == "int" else p.choices) for k, p in params.items()
                  if p.type in ("int", "categorical")}  # fmt: skip
    floats = {k: p.high for k, p in params.items() if p.type == "float"}
    corners = []
    for values in itertools.product(*structural.values()):
        trial = optuna.trial.FixedTrial({**dict(zip(structural, values, strict=True)), **floats})
        DefineByRun(params)(trial)  # suggests exactly what the sweep would, honouring `when`
        corners.append(dict(trial.params))
    return corners


def _rows(space: SearchSpace) -> list[tuple[str, dict[str, object]]]:
    if space.search == "optuna":
        return [(",".join(f"{k.split('.')[-1]}={v}" for k, v in c.items()), c) for c in _corners(space.optuna)]
    return space.grid_points()


ROWS = [
    pytest.param(path.stem, label, overrides, id=f"{path.stem}:{label}")
    for path in sorted(SPACES_DIR.glob("*.yaml"))
    for label, overrides in _rows(load_space(path).with_local_towers())
]


@pytest.fixture(scope="module")
def tower() -> TextTower:
    from deri_sweep.model.config import TextConfig

    return TextTower(TextConfig())  # the embedded MiniLM, shared by every row (frozen, as configured)


def test_every_shipped_space_contributes_rows():
    spaces = {row.values[0] for row in ROWS}
    assert spaces == {p.stem for p in SPACES_DIR.glob("*.yaml")}
    tpe = [row for row in ROWS if row.values[0] == "tpe_joint"]
    assert len(tpe) == 2 * 2 * 2  # depth {0, 6} x decode_t x decode_e
    for overrides in (row.values[2] for row in tpe):  # w_dec_t is sampled (at its bound) only where decode_t is on
        decode_t = overrides["model.interaction.decode_t"]
        assert overrides.get("model.loss.w_dec_t") == (1.0 if decode_t else None), overrides


@pytest.mark.parametrize(("space_name", "label", "overrides"), ROWS)
def test_the_row_trains_a_step_and_gives_its_probe_feature(space_name, label, overrides, tower):
    space = load_space(space_name).with_local_towers()
    seed = space.seeds[0]
    cfg = space.train_config({**overrides, "model.ecg.num_samples": SHORT}, seed)
    assert cfg.model.text.name == "embedded" and cfg.model.report_decoder.name in ("none", "tiny")
    torch.manual_seed(seed)
    model = DERI(cfg.model, text_tower=tower).train()
    generator = torch.Generator().manual_seed(seed)
    ecg = torch.randn(len(REPORTS), 12, SHORT, generator=generator)
    inputs = TextSource(REPORTS).inputs(model, torch.arange(len(REPORTS)), torch.device("cpu"))
    terms = DeriLoss(cfg.model.loss)(model(ecg, **inputs))
    total = terms["total"].item()
    assert math.isfinite(total) and total > 0, terms
    weighted = {k for k in terms if k != "total"}
    expected = {k for k in ("cma", "mix", "uma", "dec_e", "dec_t", "cap") if getattr(cfg.model.loss, f"w_{k}") > 0}
    assert weighted == expected, (weighted, expected)
    optimizer, _ = build_optimizer(model, cfg.optim)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    terms["total"].backward()
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    representation = cfg.model.representation(space.probes.feature)
    with torch.no_grad():
        feature = model.eval().encode_ecg(ecg, space.probes.feature)
    assert feature.shape[0] == len(REPORTS) and feature.ndim == 2 and torch.isfinite(feature).all(), representation
    assert feature.std(dim=0).max() > 0  # not a constant: the records are told apart

"""The authors' probe protocol (``probes.protocol: reference``): optimiser, schedule, encoder mode, max over epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deri_sweep.evaluate.reference_probe import (
    ReferenceProbeConfig,
    head_optimizer,
    reference_probe,
)


def _encoder() -> nn.Module:
    """A tiny real encoder with BatchNorm and no dropout: batch statistics are the only batch dependence."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 6, 5), nn.BatchNorm1d(6), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()
    )  # (B, 2, L) -> (B, 6)


def _split(n: int, seed: int) -> tuple[Tensor, np.ndarray]:
    """(n, 2, 40) signals and (n, 2) labels that depend on the signal's mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 40, generator=g)
    level = x.mean(dim=(1, 2)).numpy()
    y = np.stack([level > 0, level > 0.1], axis=1).astype(np.uint8)
    return x, y


@pytest.fixture(scope="module")
def splits() -> tuple[tuple[Tensor, np.ndarray], ...]:
    return _split(100, 1), _split(60, 2), _split(60, 3)


def test_schedule_drops_lr_after_the_schedulers_50th_step_counting_iterations_and_epochs(splits) -> None:
    train, val, test = splits
    result = reference_probe(_encoder(), train, val, test, ReferenceProbeConfig(epochs=8))
    # 100 records in batches of 16: 7 steps per epoch, 8 scheduler steps per epoch (7 + 1). The scheduler's
    # 50th step comes after 6 epochs (48) and 2 more iterations: 6 * 7 + 2 = 44 optimiser steps at 0.01.
    assert len(result.lrs) == 8 * 7
    assert result.lrs[:44] == [0.01] * 44
    assert result.lrs[44:] == pytest.approx([1e-3] * 12)


def test_head_optimizer_is_adam_with_coupled_l2() -> None:
    config = ReferenceProbeConfig(lr=0.1, weight_decay=0.5)
    torch.manual_seed(3)
    heads = [nn.Linear(4, 2) for _ in range(3)]
    for h in heads[1:]:
        h.load_state_dict(heads[0].state_dict())
    x, target = torch.randn(5, 4), torch.rand(5, 2)
    optimizers = [
        head_optimizer(heads[0], config),
        torch.optim.Adam(heads[1].parameters(), lr=0.1, weight_decay=0.5),
        torch.optim.AdamW(heads[2].parameters(), lr=0.1, weight_decay=0.5),
    ]
    before = heads[0].weight.detach().clone()
    grads = []
    for h, opt in zip(heads, optimizers, strict=True):
        loss = nn.functional.binary_cross_entropy_with_logits(h(x), target)
        loss.backward()
        grads.append(h.weight.grad.clone())
        opt.step()
    # first Adam step with coupled L2: p - lr * g' / (|g'| + eps), g' = g + wd * p
    coupled = grads[0] + 0.5 * before
    expected = before - 0.1 * coupled / (coupled.abs() + 1e-8)
    torch.testing.assert_close(heads[0].weight.detach(), expected)
    torch.testing.assert_close(heads[0].weight.detach(), heads[1].weight.detach(), rtol=0, atol=0)
    assert (heads[0].weight - heads[2].weight).abs().max() > 1e-3  # decoupled decay (ours) differs


def test_encoder_runs_in_train_mode_frozen_and_untouched(splits) -> None:
    train, val, test = splits
    encoder = _encoder()
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    first = train[0][0]
    seen: list[tuple[bool, int, Tensor]] = []

    def embed(module: nn.Module, x: Tensor) -> Tensor:
        out = module(x)
        hit = torch.nonzero((x == first).flatten(1).all(dim=1)).flatten()
        if len(hit):
            seen.append((module.training, len(x), out[hit[0]].detach().clone()))
        return out

    reference_probe(encoder, train, val, test, ReferenceProbeConfig(epochs=4, eval_batch_size=64), embed=embed)
    in_training = [f for training, n, f in seen if training]
    assert len(in_training) == 4  # record 0 once per epoch, always through a train-mode encoder
    spread = torch.stack(in_training).std(dim=0).max()
    assert spread > 1e-3  # the same record's features move with the other 15 records of its batch
    for k, v in encoder.state_dict().items():  # the caller's encoder (and its BN statistics) is untouched
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in encoder.parameters())


def test_reported_value_is_the_maximum_of_the_test_curve_and_repeats_with_the_seed(splits) -> None:
    train, val, test = splits
    config = ReferenceProbeConfig(epochs=6, seed=4)
    result = reference_probe(_encoder(), train, val, test, config)
    again = reference_probe(_encoder(), train, val, test, config)
    assert len(result.test_curve) == 6 and all(0.0 <= v <= 1.0 for v in result.test_curve)
    assert result.max_test_auroc == max(result.test_curve)
    assert result.test_curve[result.max_epoch - 1] == result.max_test_auroc
    best_val = int(np.argmax(result.val_curve))
    assert result.test_auroc_at_best_val == result.test_curve[best_val] <= result.max_test_auroc
    assert again.test_curve == result.test_curve  # one seed: one result


REFERENCE_SPACE = """\
search: grid
base: {model.ecg.num_samples: 1000, optim.batch_size: 8, optim.epochs: 1, optim.t0: 10000, max_steps_per_epoch: 2}
variants: {full: {}}
seeds: [42]
baseline: full
scheduler: {type: none}
trial: {workers: 1, gpus_per_worker: 0, cpus_per_worker: 0.5, driver_cpus: 0}
probes: {datasets: [ptbxl], tasks: [ptbxl_super], fractions: [1.0], seeds: [0], epochs: 2, zero_shot: false,
         random_floor: false, protocol: reference}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_reference_protocol_runs_in_a_tiny_sweep_and_its_table_is_labelled(short_caches, tmp_path) -> None:
    import pandas as pd
    from helpers import run_ablate

    from analysis.published import DERI, REFERENCE_LABEL
    from analysis.tables import comparison_table, reference_table, write_reference_table

    (tmp_path / "space.yaml").write_text(REFERENCE_SPACE)
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    run = run_ablate(["--space", "space.yaml", "--out", "run", "--concurrency", "1", "--caches", *caches], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = pd.read_parquet(tmp_path / "run" / "results.parquet")
    ref = results[results["eval"] == "linear_probe_reference"].set_index("metric")["value"]
    assert 0.0 <= ref["max_test_auroc"] <= 1.0 and ref["max_epoch"] in (1.0, 2.0)
    assert ref["test_auroc_at_best_val"] <= ref["max_test_auroc"]
    selected = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert len(selected) == 1  # the project's protocol still runs: it stays the headline

    table = reference_table(results)
    assert table.notes[0] == REFERENCE_LABEL and "published numbers' protocol" in REFERENCE_LABEL
    published = table.frame[table.frame["source"] == "published"]
    assert DERI in set(published["variant"]) and set(published["task"]) == {"ptbxl_super"}
    assert table.cell(DERI, "ptbxl_super", 1.0)["mean"] == pytest.approx(0.905)
    headline = comparison_table(results)  # its published rows moved to the reference table
    assert (headline.frame["source"] == "run").all()
    assert any("reference-protocol table" in n for n in headline.notes)
    paths = write_reference_table(results, tmp_path / "tables")
    text = paths["reference_md"].read_text()
    assert text.startswith("# Authors' probe protocol (the published numbers' protocol)")
    assert "DERI (published)" in text and REFERENCE_LABEL in text

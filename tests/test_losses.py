"""ClipLoss and DeriLoss properties (spec section 5)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deri_sweep.model.config import LossConfig
from deri_sweep.train.losses import ClipLoss, DeriLoss

SCALE = 1 / 0.07


def test_uniform_similarities_give_two_log_b() -> None:
    for b in (2, 8, 33):
        x = torch.ones(b, 16)  # every pair has the same similarity
        y = torch.randn(1, 16).expand(b, -1)
        assert ClipLoss()(x, y, SCALE).item() == pytest.approx(2 * math.log(b), rel=1e-5)


def test_symmetric_and_scale_invariant_inputs() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(6, 32), torch.randn(6, 32)
    loss = ClipLoss()
    torch.testing.assert_close(loss(x, y, SCALE), loss(y, x, SCALE))
    torch.testing.assert_close(loss(3.0 * x, y, SCALE), loss(x, y, SCALE))  # features are L2-normalised


def test_sum_not_mean_of_the_two_terms() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    s = SCALE * torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(y, dim=-1).T
    labels = torch.arange(5)
    expected = torch.nn.functional.cross_entropy(s, labels) + torch.nn.functional.cross_entropy(s.T, labels)
    torch.testing.assert_close(ClipLoss()(x, y, SCALE), expected)
    assert ClipLoss()(x, x, 100.0).item() < 1e-3  # perfectly aligned, sharp


def _outputs(b: int = 4, h: int = 12, d: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    keys = {"z_e": d, "z_t": d, "m_e": d, "m_t": d, "u1": d, "u2": d, "o_e": d, "d_e": d, "p": h, "d_t": h}
    out = {k: torch.randn(b, w, requires_grad=True) for k, w in keys.items()}
    out["caption_loss"] = torch.tensor(2.5, requires_grad=True)
    out["logit_scale"] = torch.tensor(SCALE)
    return out


def test_deri_loss_returns_only_weighted_terms_and_total() -> None:
    out = _outputs()
    terms = DeriLoss(LossConfig())(out)  # reference weights 1, 1, 1, 1, 0, 0
    assert set(terms) == {"cma", "mix", "uma", "dec_e", "total"}
    torch.testing.assert_close(terms["total"], terms["cma"] + terms["mix"] + terms["uma"] + terms["dec_e"])
    cfg = LossConfig(w_cma=0.5, w_mix=0, w_uma=0, w_dec_e=0, w_dec_t=2.0, w_cap=0.1)
    terms = DeriLoss(cfg)(out)
    assert set(terms) == {"cma", "dec_t", "cap", "total"}
    torch.testing.assert_close(terms["total"], 0.5 * terms["cma"] + 2.0 * terms["dec_t"] + 0.1 * out["caption_loss"])
    terms["total"].backward()
    assert out["m_e"].grad is None and out["p"].grad is not None


def test_deri_loss_names_missing_outputs() -> None:
    out = _outputs()
    del out["u1"]
    with pytest.raises(KeyError, match="uma"):
        DeriLoss(LossConfig())(out)
    with pytest.raises(KeyError, match="caption"):
        DeriLoss(LossConfig(w_cap=1.0))({k: v for k, v in _outputs().items() if k != "caption_loss"})


def test_temperature_falls_back_to_config() -> None:
    out = _outputs()
    scale = out.pop("logit_scale")
    a = DeriLoss(LossConfig(temperature=0.07))(out)["total"]
    b = DeriLoss(LossConfig())({**out, "logit_scale": scale})["total"]
    torch.testing.assert_close(a, b)


def _worker(rank: int, world: int, port: int, x: torch.Tensor, y: torch.Tensor, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = x.shape[0] // world
    xl = x[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = ClipLoss(rank=rank, world_size=world)(xl, y[rank * b : (rank + 1) * b], SCALE)
    loss.backward()
    results[rank] = (loss.item(), xl.grad.clone())
    dist.destroy_process_group()


def test_gathered_loss_equals_global_batch_and_grad_only_local() -> None:
    """Two gloo workers: same loss as one worker on the whole batch; each gets its shard's gradient."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_worker, args=(2, port, x, y, shared), nprocs=2, join=True)
        results = dict(shared)
    xg = x.clone().requires_grad_(True)
    full = ClipLoss()(xg, y, SCALE)
    full.backward()
    for rank in (0, 1):
        loss, grad = results[rank]
        assert loss == pytest.approx(full.item(), rel=1e-5)
        # the local shard gets exactly the full-batch gradient of its rows; other shards are constants
        torch.testing.assert_close(grad, xg.grad[rank * 3 : (rank + 1) * 3], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_gives_the_float32_loss() -> None:
    """The similarity and its cross-entropy leave autocast: bf16 features' float32 loss, to 1e-6."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    for scale in (SCALE, 100.0, torch.tensor(50.0)):
        expected = ClipLoss()(x, y, scale)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ClipLoss()(x, y, scale)
        assert got.dtype == torch.float32
        assert abs(got.item() - expected.item()) <= 1e-6

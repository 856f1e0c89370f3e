"""Grokfast-EMA: the zero-start closed form, the amplifying sign, and that step() uses the filtered grad."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.optim import MuonGrokfast, grokfast_ema_
from tests.optim.standins import tag

ALPHA, LAM = 0.9, 0.3


def test_constant_gradient_is_filtered_to_the_zero_start_closed_form():
    g = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ema = torch.zeros_like(g)
    gains = []
    for k in range(1, 31):
        grad = g.clone()
        grokfast_ema_([grad], [ema], alpha=ALPHA, lam=LAM)
        expected = g * (1 + LAM * (1 - ALPHA**k))
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
        gains.append((grad / g).mean().item())
    # Amplifying, same direction as g, rising monotonically from 1 + λ(1 − α) towards 1 + λ.
    assert gains[0] == pytest.approx(1 + LAM * (1 - ALPHA))
    assert all(1 < a < b < 1 + LAM for a, b in zip(gains, gains[1:]))


def test_alternating_gradient_is_damped_relative_to_a_constant_one():
    # A low-pass filter: a sign-flipping gradient's EMA settles at amplitude (1 − α)/(1 + α), so its extra
    # gain is λ(1 − α)/(1 + α) (≈ 0.016 here) against λ for a constant gradient.
    g = torch.ones(3, dtype=torch.float64)
    ema = torch.zeros_like(g)
    for k in range(200):
        grad = g.clone() * (-1) ** k
        grokfast_ema_([grad], [ema], alpha=ALPHA, lam=LAM)
    extra = (grad.abs() - 1).max().item()
    assert extra == pytest.approx(LAM * (1 - ALPHA) / (1 + ALPHA), rel=1e-6)


def _manual_filter(grads: list[torch.Tensor], emas: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for g, e in zip(grads, emas):
        e.mul_(ALPHA).add_(g, alpha=1 - ALPHA)
        out.append(g + LAM * e)
    return out


def _random_grads(params, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    # A persistent direction plus noise, so the EMA is not just the last gradient.
    return [torch.ones_like(p) * 0.3 + torch.randn(p.shape, generator=gen) for p in params]


@pytest.mark.parametrize("role", ["norm", "muon"])
def test_step_applies_the_optimizer_to_the_filtered_gradient(role):
    torch.manual_seed(0)
    p = tag(nn.Parameter(torch.randn(6, 4)), role)
    ref = nn.Parameter(p.detach().clone())
    opt = MuonGrokfast([p], muon_lr=1e-2, grokfast_alpha=ALPHA, grokfast_lambda=LAM, weight_decay=0.01)
    if role == "muon":
        ref_opt = torch.optim.Muon([ref], lr=1e-2, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    else:
        ref_opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    emas = [torch.zeros_like(p)]
    for step in range(6):
        (g,) = _random_grads([p], step)
        p.grad = g.clone()
        (ref.grad,) = _manual_filter([g], emas)
        opt.step()
        ref_opt.step()
        # The update is the reference optimizer on the filtered gradient, and .grad holds that gradient.
        # Within float32 rounding: the filter's foreach kernels and the manual ops may round differently.
        torch.testing.assert_close(p.grad, ref.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-6)
    assert torch.equal(opt.state[p]["grokfast_ema"], emas[0])


def test_lambda_zero_is_the_identity_and_keeps_no_ema():
    p = tag(nn.Parameter(torch.randn(4)), "norm")
    opt = MuonGrokfast([p], grokfast_lambda=0.0)
    g = torch.randn(4)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    assert "grokfast_ema" not in opt.state_dict()["state"][0]


def test_clipping_acts_on_the_filtered_gradient():
    params = [tag(nn.Parameter(torch.randn(8, 4)), "muon"), tag(nn.Parameter(torch.randn(4)), "bias")]
    opt = MuonGrokfast(params, grokfast_alpha=ALPHA, grokfast_lambda=LAM, max_grad_norm=0.5)
    emas = [torch.zeros_like(p) for p in params]
    for step in range(3):
        grads = _random_grads(params, step)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        filtered = _manual_filter(grads, emas)
        opt.step()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(f) for f in filtered]))
        torch.testing.assert_close(opt.last_grad_norm, norm)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        assert after.item() == pytest.approx(0.5, rel=1e-5)
        for p, f in zip(params, filtered):  # same direction, only shortened
            torch.testing.assert_close(p.grad, f * (0.5 / norm), rtol=1e-5, atol=1e-7)

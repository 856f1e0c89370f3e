"""QK-clip: only heads whose recorded max logit exceeds τ are rescaled, to exactly τ; records are reset."""

from __future__ import annotations

import math

import pytest
import torch

from shared.errors import InvalidSpecError
from shared.optim import MuonGrokfast, qk_clip_scales
from tests.optim.standins import QKAttention

TAU = 30.0
HEADS, HEAD_DIM, D = 4, 8, 16
HOT = 2  # the head pushed over τ


def _attention(seed: int = 0) -> QKAttention:
    torch.manual_seed(seed)
    attn = QKAttention(D, HEADS, HEAD_DIM)
    with torch.no_grad():
        rows = slice(HOT * HEAD_DIM, (HOT + 1) * HEAD_DIM)
        attn.w_q.weight[rows] *= 12.0
        attn.w_k.weight[rows] *= 12.0
    return attn


def _x() -> torch.Tensor:
    return torch.randn(2, 10, D, generator=torch.Generator().manual_seed(1))


def _head_rows(w: torch.Tensor, h: int) -> torch.Tensor:
    return w.detach()[h * HEAD_DIM:(h + 1) * HEAD_DIM]


def test_scales_are_exactly_one_at_or_below_tau():
    s = torch.tensor([-math.inf, 10.0, TAU, 4 * TAU, math.inf, math.nan])
    scales = qk_clip_scales(s, TAU)
    assert scales[[0, 1, 2, 4, 5]].tolist() == [1.0] * 5
    assert scales[3].item() == pytest.approx(0.5)


def test_only_the_hot_head_is_clipped_to_tau():
    attn = _attention()
    x = _x()
    attn(x)
    recorded = attn.max_logits().clone()
    assert recorded[HOT] > TAU and (recorded[torch.arange(HEADS) != HOT] < TAU).all()
    wq, wk = attn.w_q.weight.detach().clone(), attn.w_k.weight.detach().clone()

    # No gradients: the step changes nothing but QK-clip, so the logits on x can be checked exactly.
    opt = MuonGrokfast(attn.parameters(), qk_modules=[attn], qk_clip_threshold=TAU)
    opt.step()
    assert torch.equal(attn.max_logits(), torch.full((HEADS,), -math.inf))  # reset
    assert torch.equal(opt.last_max_logits[0], recorded)
    for h in range(HEADS):
        same = torch.equal(_head_rows(attn.w_q.weight, h), _head_rows(wq, h)) and torch.equal(
            _head_rows(attn.w_k.weight, h), _head_rows(wk, h))
        assert same == (h != HOT), h

    with torch.no_grad():
        after = attn.logits(x).amax(dim=(0, 2, 3))
    assert after[HOT].item() == pytest.approx(TAU, abs=1e-4)
    others = torch.arange(HEADS) != HOT
    assert torch.equal(after[others], recorded[others])


def test_clip_applies_to_the_post_step_weights_and_spares_other_heads_bitwise():
    # Twins with gradients: one optimizer clips, the other does not; everything but the hot head's q/k
    # rows must end bit-identical, and those rows must be the unclipped post-step rows times √(τ/S).
    clipped, plain = _attention(), _attention()
    opt_clipped = MuonGrokfast(clipped.parameters(), qk_modules=[clipped], qk_clip_threshold=TAU)
    opt_plain = MuonGrokfast(plain.parameters(), qk_clip_threshold=TAU)
    x = _x()
    for attn, opt in ((clipped, opt_clipped), (plain, opt_plain)):
        attn(x).square().mean().backward()
        opt.step()
    scale = math.sqrt(TAU / opt_clipped.last_max_logits[0][HOT].item())
    for name in ("w_v", "w_o"):
        assert torch.equal(getattr(clipped, name).weight, getattr(plain, name).weight), name
    for name in ("w_q", "w_k"):
        a, b = getattr(clipped, name).weight, getattr(plain, name).weight
        for h in range(HEADS):
            if h == HOT:
                torch.testing.assert_close(_head_rows(a, h), _head_rows(b, h) * scale, rtol=1e-6, atol=0)
                assert scale < 0.9
            else:
                assert torch.equal(_head_rows(a, h), _head_rows(b, h)), (name, h)


def test_attach_replaces_and_validates():
    attn = _attention()
    opt = MuonGrokfast(attn.parameters())
    opt.attach_qk_modules([attn])
    opt.attach_qk_modules([attn])  # attaching again must not clip twice
    attn(_x())
    recorded = attn.max_logits()[HOT].item()
    before = _head_rows(attn.w_q.weight, HOT).clone()
    opt.step()
    torch.testing.assert_close(_head_rows(attn.w_q.weight, HOT), before * math.sqrt(TAU / recorded))
    with pytest.raises(InvalidSpecError) as err:
        opt.attach_qk_modules([torch.nn.Linear(2, 2)])
    assert err.value.field == "qk_modules"

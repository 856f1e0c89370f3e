"""Non-Muon roles get exactly torch.optim.AdamW (bias correction, decoupled weight decay)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.optim import MuonGrokfast
from tests.optim.standins import tag


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_norm_and_embedding_updates_equal_torch_adamw(weight_decay):
    torch.manual_seed(0)
    norm = tag(nn.Parameter(torch.randn(16)), "norm")
    emb = tag(nn.Parameter(torch.randn(10, 16)), "embedding")
    twins = [nn.Parameter(p.detach().clone()) for p in (norm, emb)]
    start = norm.detach().clone()
    hyper = {"betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": weight_decay}
    opt = MuonGrokfast([norm, emb], muon_lr=1.0, adamw_lr=3e-3, grokfast_lambda=0.0, **hyper)
    ref = torch.optim.AdamW(twins, lr=3e-3, **hyper)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        for p, q in zip((norm, emb), twins):
            p.grad = torch.randn(p.shape, generator=gen) * 0.1
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for p, q in zip((norm, emb), twins):
            assert torch.equal(p, q)
    # And the run moved: parity of two optimizers that do nothing would prove nothing.
    assert (norm.detach() - start).norm() > 1e-2
    assert opt.param_groups[0]["lr"] == 3e-3

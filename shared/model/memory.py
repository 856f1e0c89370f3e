"""Titans neural long-term memory (arXiv 2501.00663), as used by the MAG layers of TRMTitansMAG.

Legend: B batch, L length, C chunk length, S memory slots (hidden width), D memory key/value width.

The memory is a 2-layer MLP  M(k) = W2 · (silu(W1 · k) ⊙ mask)  whose weights are *fast weights*: they are
updated inside the forward pass by gradient descent on the associative loss ℓ_t = ‖M(k_t) − v_t‖², with
data-dependent momentum η_t, step θ_t and forgetting α_t:

    S_t = η_t · S_{t−1} − θ̂_t · ∇ℓ_t         (momentum: "surprise"; θ̂_t = θ_t / (1 + ‖a_t‖²), a
                                                 normalised-LMS step, see _normalised_step)
    D_t = (1 − α_t) · D_{t−1} + S_t            (forgetting pulls the memory back to its learned initial
    W_t = W_init + D_t                          weights W_init, so with θ = 0 the memory is static)

The read at position t uses W_t (updated with tokens ≤ t, so it is causal). As in the paper, a sequence is
processed in chunks of C tokens and every gradient inside a chunk is taken at the chunk-start weights; the
recurrence is then linear, and each chunk is computed in parallel with C×C coefficient matrices (no per-token
loop, nothing of size B·C·S·D). Invariants (tests): chunk 1 equals a per-token loop; chunk C equals
`naive_memory` with chunk-start gradients; streaming equals one-shot. `mask` fixes the active capacity:
masked units never change and never contribute, so models of different capacity share shapes.

Gradients of ℓ (e = M(k) − v, h = W1 k, a = silu(h) ⊙ mask):
    ∇W2 = 2 e aᵀ,   ∇W1 = u kᵀ with u = 2 (W2ᵀ e) ⊙ silu'(h) ⊙ mask.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


class MemoryState(NamedTuple):
    """Deviation from the initial weights and momentum, per sequence."""

    d1: Tensor  # (B, S, D)
    d2: Tensor  # (B, D, S)
    s1: Tensor  # (B, S, D)
    s2: Tensor  # (B, D, S)


def zero_state(batch: int, slots: int, dim: int, like: Tensor) -> MemoryState:
    z1 = like.new_zeros(batch, slots, dim)
    z2 = like.new_zeros(batch, dim, slots)
    return MemoryState(z1, z2, z1, z2)


def _silu_grad(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def _decay_matrix(g: Tensor) -> tuple[Tensor, Tensor]:
    """For factors g (B, C) in [0, 1]: A[t, i] = Π_{i<j≤t} g_j (i ≤ t, else 0) and P[t] = Π_{j≤t} g_j.

    Closed form through cumulative log-sums (no per-token loop): A[t, i] = exp(cs_t − cs_i). Computed in at
    least float32; a factor of exactly 0 is clamped to 1e-30, whose products underflow to 0 as they should.
    """
    work = g.to(torch.promote_types(g.dtype, torch.float32)).clamp_min(1e-30)
    cs = torch.cumsum(torch.log(work), dim=1)                         # (B, C)
    diff = cs.unsqueeze(2) - cs.unsqueeze(1)                          # (B, C, C): cs_t − cs_i
    c = g.shape[1]
    lower = torch.ones(c, c, dtype=torch.bool, device=g.device).tril()
    a = torch.where(lower, torch.exp(diff.masked_fill(~lower, 0.0)), torch.zeros((), dtype=work.dtype,
                                                                                   device=g.device))
    return a.to(g.dtype), torch.exp(cs).to(g.dtype)


def _normalised_step(theta: Tensor, a: Tensor) -> Tensor:
    """θ_t / (1 + ‖a_t‖²), with a_t the hidden activation at the chunk-start weights: the normalised-LMS step,
    so the write W2 ← W2 − 2θ e aᵀ can never overshoot (plain θ diverges once ‖a‖² is large)."""
    return theta / (1 + a.pow(2).sum(-1))


def memory_scan(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, theta: Tensor, alpha: Tensor,
                w1_init: Tensor, w2_init: Tensor, mask: Tensor, chunk: int,
                state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
    """Run the memory over a sequence. k, v, q: (B, L, D); eta, theta, alpha: (B, L) in [0, 1];
    w1_init (S, D), w2_init (D, S), mask (S,). Returns reads (B, L, D) and the final state."""
    b, length, dim = k.shape
    slots = w1_init.shape[0]
    if state is None:
        state = zero_state(b, slots, dim, k)
    d1, d2, s1, s2 = state
    reads = []
    for start in range(0, length, chunk):
        sl = slice(start, min(start + chunk, length))
        kc, vc, qc = k[:, sl], v[:, sl], q[:, sl]
        et, th, al = eta[:, sl], theta[:, sl], alpha[:, sl]
        w1 = w1_init + d1                                   # (B, S, D) chunk-start weights
        w2 = w2_init + d2                                   # (B, D, S)
        h = torch.einsum("bsd,bcd->bcs", w1, kc)            # (B, C, S)
        a = F.silu(h) * mask
        e = torch.einsum("bds,bcs->bcd", w2, a) - vc        # (B, C, D)
        u = 2 * torch.einsum("bds,bcd->bcs", w2, e) * _silu_grad(h) * mask   # (B, C, S)
        th = _normalised_step(th, a)                        # normalised LMS: stable for θ ≤ 1
        a_eta, p_eta = _decay_matrix(et)                    # (B, C, C), (B, C)
        a_keep, p_keep = _decay_matrix(1 - al)
        w = a_keep @ a_eta                                  # D_t's weight on update i
        r = (a_keep @ p_eta.unsqueeze(-1)).squeeze(-1)      # D_t's weight on S_0
        wt = w * (-th).unsqueeze(1)                         # (B, C, C): column i scaled by −θ_i
        # read with W1_t
        hq = (torch.einsum("sd,bcd->bcs", w1_init, qc)
              + p_keep.unsqueeze(-1) * torch.einsum("bsd,bcd->bcs", d1, qc)
              + r.unsqueeze(-1) * torch.einsum("bsd,bcd->bcs", s1, qc)
              + (wt * torch.einsum("bid,btd->bti", kc, qc)) @ u)
        aq = F.silu(hq) * mask
        out = (torch.einsum("ds,bcs->bcd", w2_init, aq)
               + p_keep.unsqueeze(-1) * torch.einsum("bds,bcs->bcd", d2, aq)
               + r.unsqueeze(-1) * torch.einsum("bds,bcs->bcd", s2, aq)
               + (2 * wt * torch.einsum("bis,bts->bti", a, aq)) @ e)
        reads.append(out)
        # state at the end of the chunk (last row of the coefficient matrices)
        last = wt[:, -1]                                    # (B, C)
        last_eta = a_eta[:, -1] * (-th)
        d1 = p_keep[:, -1, None, None] * d1 + r[:, -1, None, None] * s1 + torch.einsum("bi,bis,bid->bsd", last, u, kc)
        d2 = p_keep[:, -1, None, None] * d2 + r[:, -1, None, None] * s2 + torch.einsum("bi,bid,bis->bds", 2 * last, e, a)
        s1 = p_eta[:, -1, None, None] * s1 + torch.einsum("bi,bis,bid->bsd", last_eta, u, kc)
        s2 = p_eta[:, -1, None, None] * s2 + torch.einsum("bi,bid,bis->bds", 2 * last_eta, e, a)
    return torch.cat(reads, dim=1), MemoryState(d1, d2, s1, s2)


def naive_memory(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, theta: Tensor, alpha: Tensor,
                 w1_init: Tensor, w2_init: Tensor, mask: Tensor, chunk: int,
                 state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
    """The reference: a per-token loop, gradients at the chunk-start weights (chunk=1: online updates)."""
    b, length, dim = k.shape
    slots = w1_init.shape[0]
    d1, d2, s1, s2 = state if state is not None else zero_state(b, slots, dim, k)
    reads = []
    for t in range(length):
        if t % chunk == 0:
            w1_0, w2_0 = w1_init + d1, w2_init + d2
        h = torch.einsum("bsd,bd->bs", w1_0, k[:, t])
        a = F.silu(h) * mask
        e = torch.einsum("bds,bs->bd", w2_0, a) - v[:, t]
        u = 2 * torch.einsum("bds,bd->bs", w2_0, e) * _silu_grad(h) * mask
        g1 = torch.einsum("bs,bd->bsd", u, k[:, t])
        g2 = 2 * torch.einsum("bd,bs->bds", e, a)
        step = _normalised_step(theta[:, t], a)
        s1 = eta[:, t, None, None] * s1 - step[:, None, None] * g1
        s2 = eta[:, t, None, None] * s2 - step[:, None, None] * g2
        d1 = (1 - alpha[:, t, None, None]) * d1 + s1
        d2 = (1 - alpha[:, t, None, None]) * d2 + s2
        hq = torch.einsum("bsd,bd->bs", w1_init + d1, q[:, t])
        reads.append(torch.einsum("bds,bs->bd", w2_init + d2, F.silu(hq) * mask))
    return torch.stack(reads, dim=1), MemoryState(d1, d2, s1, s2)


class NeuralMemory(torch.nn.Module):
    """Projections, data-dependent η/θ/α and the learned initial weights around `memory_scan`."""

    def __init__(self, hidden: int, dim: int, slots: int, active_slots: int, chunk: int, theta_max: float,
                 checkpoint: bool = True):
        super().__init__()
        self.checkpoint = checkpoint
        self.dim, self.slots, self.chunk, self.theta_max = dim, slots, chunk, theta_max
        self.to_k = torch.nn.Linear(hidden, dim, bias=False)
        self.to_v = torch.nn.Linear(hidden, dim, bias=False)
        self.to_q = torch.nn.Linear(hidden, dim, bias=False)
        self.to_rates = torch.nn.Linear(hidden, 3)  # η, θ, α logits
        self.w1_init = torch.nn.Parameter(torch.randn(slots, dim) / dim ** 0.5)
        self.w2_init = torch.nn.Parameter(torch.randn(dim, slots) / max(1, active_slots) ** 0.5)
        mask = torch.zeros(slots)
        mask[:active_slots] = 1.0
        self.register_buffer("mask", mask, persistent=True)
        with torch.no_grad():
            self.to_rates.weight.mul_(0.1)
            self.to_rates.bias.copy_(torch.tensor([2.2, -2.0, -4.6]))  # η≈0.9, θ≈0.12·θmax, α≈0.01

    def rates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.to_rates(x)
        return (torch.sigmoid(logits[..., 0]), self.theta_max * torch.sigmoid(logits[..., 1]),
                torch.sigmoid(logits[..., 2]))

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        k = F.normalize(self.to_k(x), dim=-1)
        v = self.to_v(x)
        q = F.normalize(self.to_q(x), dim=-1)
        eta, theta, alpha = self.rates(x)
        args = (k, v, q, eta, theta, alpha, self.w1_init, self.w2_init, self.mask, self.chunk, state)
        if self.checkpoint and torch.is_grad_enabled() and state is None:
            # The scan's intermediates are B·C·S per chunk and layer call; recomputing them in backward keeps
            # only k, v, q and the rates alive, which is what lets the default model train on 6 GB.
            reads, final = checkpoint(memory_scan, *args, use_reentrant=False)
            return reads, final
        return memory_scan(*args)

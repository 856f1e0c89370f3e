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

Read-only queries (Quiet-STaR thought streams, shared/model/thoughts.py): `memory_scan(..., stream_q=…)`
also reads, for every position t, S extra queries with W_t — the very fast weights base token t read with
(chunk-start weights plus the chunk's updates from tokens ≤ t, gradients at the chunk start), i.e. the state
`memory_scan` returns after tokens 0..t. They never write: nothing about the base reads or the state depends
on them. `NeuralMemory.read(x, state)` is the same read done the direct way, from a state's weights.

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


class _SiluGradMul(torch.autograd.Function):
    """g ⊙ silu'(h) in one fused pass (aten's silu_backward), differentiable in both arguments (aten has
    no derivative for silu_backward): ∂/∂g = silu'(h), ∂/∂h = g ⊙ silu''(h) with
    silu''(h) = σ(h)(1 − σ(h))(2 + h(1 − 2σ(h)))."""

    @staticmethod
    def forward(ctx, g: Tensor, h: Tensor) -> Tensor:
        ctx.save_for_backward(g, h)
        return torch.ops.aten.silu_backward(g, h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        g, h = ctx.saved_tensors
        grad_g = torch.ops.aten.silu_backward(grad, h) if ctx.needs_input_grad[0] else None
        grad_h = None
        if ctx.needs_input_grad[1]:
            s = torch.sigmoid(h)
            grad_h = torch.mul(s, -2).add_(1).mul_(h).add_(2)   # 2 + h(1 − 2σ), in place: one buffer
            grad_h.mul_(s).mul_(s.neg_().add_(1)).mul_(g).mul_(grad)
        return grad_g, grad_h


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


def _chunk_read(qq: Tensor, wt: Tensor, p_keep: Tensor, r: Tensor, kc: Tensor, u: Tensor, a: Tensor, e: Tensor,
                w1t: Tensor, w2t: Tensor, mask: Tensor | None, start: MemoryState | None) -> Tensor:
    """Read queries qq (B, R, D) inside a chunk, each row with the fast weights of its own position: wt
    (B, R, C) its row of the update coefficients (column i scaled by −θ_i), p_keep and r (B, R) its weights on
    the chunk-start deviation D_0 and momentum S_0 (`start`; None while they are zero). (B, R, D)."""
    hq = torch.matmul(qq, w1t).baddbmm_(wt * (qq @ kc.transpose(1, 2)), u)        # (B, R, S)
    if start is not None:
        d1, d2, s1, s2 = start
        hq = (hq.baddbmm_(qq * p_keep.unsqueeze(-1), d1.transpose(1, 2))
              .baddbmm_(qq * r.unsqueeze(-1), s1.transpose(1, 2)))
    aq = F.silu(hq) if mask is None else F.silu(hq) * mask
    out = torch.matmul(aq, w2t).baddbmm_(2 * wt * (aq @ a.transpose(1, 2)), e)   # (B, R, D)
    if start is not None:
        out = (out + p_keep.unsqueeze(-1) * (aq @ d2.transpose(1, 2))
               + r.unsqueeze(-1) * (aq @ s2.transpose(1, 2)))
    return out


def _repeat_rows(m: Tensor, n_rep: int) -> Tensor:
    """(B, C, …) → (B, C·n_rep, …): each row repeated n_rep times, consecutively."""
    b, c = m.shape[:2]
    return m.unsqueeze(2).expand(b, c, n_rep, *m.shape[2:]).reshape(b, c * n_rep, *m.shape[2:])


def memory_scan(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, theta: Tensor, alpha: Tensor,
                w1_init: Tensor, w2_init: Tensor, mask: Tensor | None, chunk: int,
                state: MemoryState | None = None, *, stream_q: Tensor | None = None):
    """Run the memory over a sequence. k, v, q: (B, L, D); eta, theta, alpha: (B, L) in [0, 1];
    w1_init (S, D), w2_init (D, S), mask (S,) or None (every unit active). Returns reads (B, L, D) and the
    final state; with stream_q (B, L, R, D) also a third item, its reads (B, L, R, D): query (t, j) read with
    the weights W_t base token t read with, writing nothing (the module docstring).

    Written for throughput: every sum of products over S is one GEMM accumulating into its output in place
    (`baddbmm_`), per-position scale factors are applied to the small (B, C, D) operands rather than to the
    (B, C, S) products, silu' is fused into `silu_backward`, and the all-zero state of a fresh sequence is
    never multiplied. The elementwise passes over B·C·S or B·S·D tensors that remain are the silu of the two
    pre-activations and the state decays."""
    b, length, dim = k.shape
    slots = w1_init.shape[0]
    fresh = state is None                                   # d, s are zero until the end of the first chunk
    d1, d2, s1, s2 = state if state is not None else zero_state(b, slots, dim, k)
    w1t, w2t = w1_init.t(), w2_init.t()                     # (D, S), (S, D)
    reads, stream_reads = [], []
    for start in range(0, length, chunk):
        sl = slice(start, min(start + chunk, length))
        kc, vc, qc = k[:, sl], v[:, sl], q[:, sl]
        et, th, al = eta[:, sl], theta[:, sl], alpha[:, sl]
        # chunk-start pre-activations h = k (W1_init + D1)ᵀ, hidden a, error e, back-propagated u
        h = torch.matmul(kc, w1t)                           # (B, C, S)
        if not fresh:
            h = h.baddbmm_(kc, d1.transpose(1, 2))
        a = F.silu(h) if mask is None else F.silu(h) * mask
        e = torch.matmul(a, w2t)                            # (B, C, D)
        if not fresh:
            e = e.baddbmm_(a, d2.transpose(1, 2))
        e = e - vc
        e2 = 2 * e
        g = torch.matmul(e2, w2_init)                       # (B, C, S): 2 W2ᵀ e
        if not fresh:
            g = g.baddbmm_(e2, d2)
        u = _SiluGradMul.apply(g, h)                       # 2 (W2ᵀ e) ⊙ silu'(h)
        if mask is not None:
            u = u * mask
        th = _normalised_step(th, a)                        # normalised LMS: stable for θ ≤ 1
        a_eta, p_eta = _decay_matrix(et)                    # (B, C, C), (B, C)
        a_keep, p_keep = _decay_matrix(1 - al)
        w = a_keep @ a_eta                                  # D_t's weight on update i
        r = (a_keep @ p_eta.unsqueeze(-1)).squeeze(-1)      # D_t's weight on S_0
        wt = w * (-th).unsqueeze(1)                         # (B, C, C): column i scaled by −θ_i
        # read with W1_t, W2_t (row t of the coefficient matrices)
        start_state = None if fresh else MemoryState(d1, d2, s1, s2)
        reads.append(_chunk_read(qc, wt, p_keep, r, kc, u, a, e, w1t, w2t, mask, start_state))
        if stream_q is not None:
            # R read-only queries per position: position t's row of the coefficients, repeated R times
            qs = stream_q[:, sl]                                # (B, C, R, D)
            c_len, n_rep = qs.shape[1], qs.shape[2]
            sr = _chunk_read(qs.reshape(b, c_len * n_rep, dim), _repeat_rows(wt, n_rep), _repeat_rows(p_keep, n_rep),
                             _repeat_rows(r, n_rep), kc, u, a, e, w1t, w2t, mask, start_state)
            stream_reads.append(sr.view(b, c_len, n_rep, dim))
        # state at the end of the chunk (last row of the coefficient matrices); scale the (B, C, D) operands
        last = wt[:, -1].unsqueeze(-1)                      # (B, C, 1)
        last_eta = (a_eta[:, -1] * (-th)).unsqueeze(-1)
        pk, rr, pe = (x[:, -1, None, None] for x in (p_keep, r, p_eta))
        u_t, a_d = u.transpose(1, 2), (2 * e).transpose(1, 2)   # (B, S, C), (B, D, C)
        if fresh:
            d1 = torch.bmm(u_t, kc * last)
            d2 = torch.bmm(a_d * last.transpose(1, 2), a)
            s1 = torch.bmm(u_t, kc * last_eta)
            s2 = torch.bmm(a_d * last_eta.transpose(1, 2), a)
        else:
            d1, d2, s1, s2 = ((pk * d1).addcmul_(s1, rr).baddbmm_(u_t, kc * last),
                              (pk * d2).addcmul_(s2, rr).baddbmm_(a_d * last.transpose(1, 2), a),
                              (pe * s1).baddbmm_(u_t, kc * last_eta),
                              (pe * s2).baddbmm_(a_d * last_eta.transpose(1, 2), a))
        fresh = False
    if stream_q is not None:
        return torch.cat(reads, dim=1), MemoryState(d1, d2, s1, s2), torch.cat(stream_reads, dim=1)
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


CHECKPOINT_MIN_BYTES = 64 * 2**20


def scan_saved_bytes(batch: int, length: int, slots: int, dim: int, chunk: int, element_size: int) -> int:
    """About what autograd keeps from one `memory_scan` call: per chunk five (B, C, S) activations (h, a,
    u, hq, aq) and the four (B, S, D) state tensors; the (B, C, C) and (B, C, D) terms are small."""
    chunks = -(-length // chunk)
    return (5 * batch * length * slots + 4 * batch * slots * dim * chunks) * element_size


class NeuralMemory(torch.nn.Module):
    """Projections, data-dependent η/θ/α and the learned initial weights around `memory_scan`."""

    def __init__(self, hidden: int, dim: int, slots: int, active_slots: int, chunk: int, theta_max: float,
                 checkpoint: bool = True):
        """checkpoint: recompute the scan in backward when one call would keep ≥ CHECKPOINT_MIN_BYTES."""
        super().__init__()
        self.checkpoint = checkpoint
        self.dim, self.slots, self.chunk, self.theta_max = dim, slots, chunk, theta_max
        self.to_k = torch.nn.Linear(hidden, dim, bias=False)
        self.to_v = torch.nn.Linear(hidden, dim, bias=False)
        self.to_q = torch.nn.Linear(hidden, dim, bias=False)
        self.to_rates = torch.nn.Linear(hidden, 3)  # η, θ, α logits
        self.w1_init = torch.nn.Parameter(torch.randn(slots, dim) / dim ** 0.5)
        self.w2_init = torch.nn.Parameter(torch.randn(dim, slots) / max(1, active_slots) ** 0.5)
        self.register_buffer("mask", torch.zeros(slots), persistent=True)
        self.set_active_slots(active_slots)
        with torch.no_grad():
            self.to_rates.weight.mul_(0.1)
            self.to_rates.bias.copy_(torch.tensor([2.2, -2.0, -4.6]))  # η≈0.9, θ≈0.12·θmax, α≈0.01

    def rates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.to_rates(x)
        return (torch.sigmoid(logits[..., 0]), self.theta_max * torch.sigmoid(logits[..., 1]),
                torch.sigmoid(logits[..., 2]))

    def set_active_slots(self, n: int) -> None:
        """The capacity: the first n units active, the rest masked."""
        with torch.no_grad():
            self.mask.zero_()
            self.mask[:n] = 1.0
        self._prefix_key, self._prefix = None, n
        self.active_prefix()

    def active_prefix(self) -> int | None:
        """n when the mask is n ones followed by zeros (how capacities are set), else None. Cached on the
        mask tensor's identity and version, so in-place edits and loads are seen without a per-call scan. A
        mask on the meta device (the memory probe's copy) has no values: the last value read is used."""
        if self.mask.is_meta:
            return getattr(self, "_prefix", None)
        key = (id(self.mask), self.mask._version)
        if getattr(self, "_prefix_key", None) != key:
            m = self.mask
            n = int((m != 0).sum())
            prefix = bool((m[:n] == 1).all()) and bool((m[n:] == 0).all())
            self._prefix_key, self._prefix, self._mask_ref = key, (n if prefix else None), m
        return self._prefix

    def _weights(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(w1, w2, mask) the scan runs on: the active prefix of units when the mask is one, else all."""
        n = self.active_prefix()
        if n is not None:
            # Units beyond the active prefix are exactly zero in every read, write and gradient, so the scan
            # runs on the first n units only (same outputs, gradients zero on the rest); the state it returns
            # has n units.
            return self.w1_init[:n], self.w2_init[:, :n], None
        return self.w1_init, self.w2_init, self.mask

    def _scan(self, x: Tensor, state: MemoryState | None, stream_q: Tensor | None = None):
        k = F.normalize(self.to_k(x), dim=-1)
        v = self.to_v(x)
        q = F.normalize(self.to_q(x), dim=-1)
        eta, theta, alpha = self.rates(x)
        w1, w2, mask = self._weights()
        args = (k, v, q, eta, theta, alpha, w1, w2, mask, self.chunk, state)
        kwargs = {} if stream_q is None else {"stream_q": stream_q}
        rows = k.shape[1] * (1 if stream_q is None else 1 + stream_q.shape[2])   # stream reads keep (B, C·R, S)s too
        if self.checkpoint and torch.is_grad_enabled() and state is None and \
                scan_saved_bytes(k.shape[0], rows, w1.shape[0], self.dim, self.chunk,
                                 k.element_size()) >= CHECKPOINT_MIN_BYTES:
            # The scan's intermediates are B·C·S per chunk and layer call; recomputing them in backward keeps
            # only k, v, q and the rates alive, which is what lets the default model train on 6 GB. Below
            # CHECKPOINT_MIN_BYTES per call the recomputation costs more time than the memory is worth.
            return checkpoint(memory_scan, *args, use_reentrant=False, **kwargs)
        return memory_scan(*args, **kwargs)

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        return self._scan(x, state)

    def forward_streams(self, x: Tensor, n_base: int, stream_len: int) -> Tensor:
        """Reads (B, L + L·S, D) for L = n_base base tokens followed by L streams of S = stream_len tokens
        (stream t's at L + t·S + s), from a fresh memory. Base tokens: exactly `forward`'s reads; only they
        write. Stream token (t, s): its own query read with W_t, the weights base token t read with (module
        docstring) — it writes nothing and sees no base token after t."""
        b, total, hidden = x.shape
        if total != n_base + n_base * stream_len:
            raise ValueError(f"expected {n_base} + {n_base}·{stream_len} tokens, got {total}")
        qs = F.normalize(self.to_q(x[:, n_base:]), dim=-1).view(b, n_base, stream_len, self.dim)
        reads, _, stream_reads = self._scan(x[:, :n_base], None, qs)
        return torch.cat([reads, stream_reads.reshape(b, n_base * stream_len, self.dim)], dim=1)

    def read(self, x: Tensor, state: MemoryState) -> Tensor:
        """Read-only: tokens x (B, R, hidden) read with the fixed fast weights W_init + D of `state` (as
        returned by `forward`), writing nothing. (B, R, D). The direct form of `forward_streams`' stream read."""
        q = F.normalize(self.to_q(x), dim=-1)
        w1, w2, mask = self._weights()
        a = F.silu(q @ (w1 + state.d1).transpose(1, 2))      # (B, R, S)
        if mask is not None:
            a = a * mask
        return a @ (w2 + state.d2).transpose(1, 2)

"""Causal sliding-window attention over [persistent tokens ‖ x] with rotary positions, recording the
per-head maximum scaled logit for QK-clip (DESIGN.md §5).

Legend: B batch, H heads, L length, P persistent tokens, E per-head width.

Position t attends to the P persistent tokens (learned, position-free, visible from every position) and to
x_j for t − window < j ≤ t — strictly causal, unlike the earlier implementation's bidirectional window. The
persistent tokens go through the same W_k/W_v as x, so QK-clip's scaling of W_k also scales their keys; q/k
have no biases, so scaling W_q and W_k rows of head h by √(τ/S) scales its logits by exactly τ/S.

Thought streams (Quiet-STaR, shared/model/thoughts.py): `stream_forward` runs L base tokens followed by L
streams of S tokens each; stream token (t, s) sits at rotary position t + 1 + s and attends, under the same
window, to the persistent tokens, to base tokens x_{≤t} and to its own stream's tokens (t, ≤ s) — as if the
sequence were x_0..x_t, stream_t — while base tokens attend exactly as in `forward` and never see a stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotary(x: Tensor, base: float, positions: Tensor | None = None) -> Tensor:
    """Rotary position embedding on (B, H, L, E), positions 0..L-1 or `positions` (L,) when given."""
    _, _, length, width = x.shape
    half = width // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(length, device=x.device, dtype=torch.float32) if positions is None else \
        positions.to(device=x.device, dtype=torch.float32)
    angles = pos[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_mask(length: int, window: int, persistent: int, device=None) -> Tensor:
    """(L, P + L) boolean: True where position t may attend."""
    t = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    seq = (j <= t) & (j > t - window)
    return torch.cat([torch.ones(length, persistent, dtype=torch.bool, device=device), seq], dim=1)


class SlidingWindowAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, window: int, persistent: int, rope_base: float, dropout: float):
        super().__init__()
        self.heads, self.width, self.window, self.rope_base = heads, hidden // heads, window, rope_base
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.persistent = nn.Parameter(torch.randn(persistent, hidden) * 0.02) if persistent else None
        self.dropout = dropout
        self.register_buffer("_max_logit", torch.full((heads,), float("-inf")), persistent=False)

    def _split(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.width).transpose(1, 2)   # (B, H, L, E)

    def _persistent_kv(self, batch: int) -> tuple[Tensor, Tensor] | None:
        """Keys and values of the persistent tokens, (B, H, P, E) each; None without persistent tokens."""
        if self.persistent is None:
            return None
        mem = self.persistent.unsqueeze(0).expand(batch, -1, -1)
        return self._split(self.k(mem)), self._split(self.v(mem))

    def _record_max(self, scores: Tensor) -> None:
        """QK-clip's S_max: fold the per-head max of masked scaled logits (B, H, ..., keys) into the record."""
        torch.maximum(self._max_logit, scores.amax(dim=(0, *range(2, scores.dim()))).float(), out=self._max_logit)

    def _window_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal sliding-window attention of rotated q, k (B, H, L, E) and v over [persistent ‖ x]; (B, H, L, E)."""
        b, _, length, _ = q.shape
        p = 0
        pkv = self._persistent_kv(b)
        if pkv is not None:
            p = pkv[0].shape[2]
            k = torch.cat([pkv[0], k], dim=2)                                    # (B, H, P + L, E)
            v = torch.cat([pkv[1], v], dim=2)
        allowed = window_mask(length, self.window, p, q.device)                 # (L, P + L)
        if self.training:
            # QK-clip's S_max, over every training forward (all recursion passes) since the last reset; a
            # separate no-grad product, so the attention itself can use a fused kernel that keeps no scores.
            with torch.no_grad():
                scores = (q @ k.transpose(-1, -2) / math.sqrt(self.width)).masked_fill(~allowed, float("-inf"))
                self._record_max(scores)
                del scores
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                              dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, length, hidden = x.shape
        q = rotary(self._split(self.q(x)), self.rope_base)
        k = rotary(self._split(self.k(x)), self.rope_base)
        v = self._split(self.v(x))
        out = self._window_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, length, hidden))

    def forward_streams(self, x: Tensor, n_base: int, stream_len: int) -> Tensor:
        """Attention over L = n_base base tokens followed by L streams of S = stream_len tokens (B, L + L·S, d),
        stream t's tokens contiguous at L + t·S + s. Base rows: exactly `forward` on the base tokens (same
        positions, same mask, streams invisible). Stream row (t, s): rotary position t + 1 + s; keys = the
        persistent tokens, base x_j with t + 1 + s − window < j ≤ t, and stream tokens (t, s') with
        s − window < s' ≤ s — what `forward` gives at that row on the sequence x_0..x_t, stream_t.

        The stream rows are computed without an (L + L·S)² mask: one (L·S, P + L) score block against
        persistent and base keys and one block-diagonal (L, S, S) block within each stream, softmaxed together
        (in at least float32). In training, their logits count toward QK-clip's S_max like any others."""
        b, total, hidden = x.shape
        n, s_len = n_base, stream_len
        if total != n + n * s_len:
            raise ValueError(f"expected {n} + {n}·{s_len} tokens, got {total}")
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))   # (B, H, N, E)
        dev = x.device
        t_idx = torch.arange(n, device=dev)
        s_idx = torch.arange(s_len, device=dev)
        pos = t_idx[:, None] + 1 + s_idx[None, :]                                 # (L, S): t + 1 + s
        qb, kb = rotary(q[:, :, :n], self.rope_base), rotary(k[:, :, :n], self.rope_base)
        flat = pos.reshape(-1)
        qs, ks = rotary(q[:, :, n:], self.rope_base, flat), rotary(k[:, :, n:], self.rope_base, flat)
        vb, vs = v[:, :, :n], v[:, :, n:]
        base_out = self._window_attention(qb, kb, vb)                           # (B, H, L, E)

        scale = 1.0 / math.sqrt(self.width)
        ninf = float("-inf")
        # stream (t, s) at position t + 1 + s sees base j iff j ≤ t and j > t + 1 + s − window
        j = t_idx
        base_ok = (j <= t_idx[:, None, None]) & (j > (pos - self.window)[..., None])     # (L, S, L)
        base_ok = base_ok.reshape(n * s_len, n)
        own_ok = (s_idx[None, :] <= s_idx[:, None]) & (s_idx[None, :] > s_idx[:, None] - self.window)   # (S, S)
        sc_base = (qs @ kb.transpose(-1, -2) * scale).masked_fill(~base_ok, ninf)            # (B, H, L·S, L)
        q4 = qs.reshape(b, self.heads, n, s_len, self.width)
        k4 = ks.reshape(b, self.heads, n, s_len, self.width)
        sc_own = (q4 @ k4.transpose(-1, -2) * scale).masked_fill(~own_ok, ninf)              # (B, H, L, S, S)
        parts = [sc_base, sc_own.reshape(b, self.heads, n * s_len, s_len)]
        pkv = self._persistent_kv(b)
        if pkv is not None:
            parts.insert(0, qs @ pkv[0].transpose(-1, -2) * scale)                           # (B, H, L·S, P)
        scores = torch.cat(parts, dim=-1)
        if self.training:
            with torch.no_grad():
                self._record_max(scores)
        work = torch.promote_types(scores.dtype, torch.float32)
        probs = torch.softmax(scores.to(work), dim=-1).to(scores.dtype)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        p = 0 if pkv is None else pkv[0].shape[2]
        stream_out = probs[..., p:p + n] @ vb
        if pkv is not None:
            stream_out = stream_out + probs[..., :p] @ pkv[1]
        own = probs[..., p + n:].reshape(b, self.heads, n, s_len, s_len) @ vs.reshape(b, self.heads, n, s_len,
                                                                                       self.width)
        stream_out = stream_out + own.reshape(b, self.heads, n * s_len, self.width)
        out = torch.cat([base_out, stream_out], dim=2)                           # (B, H, N, E)
        return self.o(out.transpose(1, 2).reshape(b, total, hidden))

    # -- the QK-clip protocol (shared.optim) --
    def max_logits(self) -> Tensor:
        return self._max_logit.clone()

    def reset_max_logits(self) -> None:
        self._max_logit.fill_(float("-inf"))

    @torch.no_grad()
    def scale_qk_heads(self, scale: Tensor) -> None:
        rows = scale.to(self.q.weight.dtype).repeat_interleave(self.width).unsqueeze(1)   # (H·E, 1)
        self.q.weight.mul_(rows)
        self.k.weight.mul_(rows)

"""Causal sliding-window attention over [persistent tokens ‖ x] with rotary positions, recording the
per-head maximum scaled logit for QK-clip (DESIGN.md §5).

Legend: B batch, H heads, L length, P persistent tokens, E per-head width.

Position t attends to the P persistent tokens (learned, position-free, visible from every position) and to
x_j for t − window < j ≤ t — strictly causal, unlike the earlier implementation's bidirectional window. The
persistent tokens go through the same W_k/W_v as x, so QK-clip's scaling of W_k also scales their keys; q/k
have no biases, so scaling W_q and W_k rows of head h by √(τ/S) scales its logits by exactly τ/S.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotary(x: Tensor, base: float) -> Tensor:
    """Rotary position embedding on (B, H, L, E), positions 0..L-1."""
    _, _, length, width = x.shape
    half = width // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * freqs[None, :]
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

    def forward(self, x: Tensor) -> Tensor:
        b, length, hidden = x.shape
        q = rotary(self._split(self.q(x)), self.rope_base)
        k = rotary(self._split(self.k(x)), self.rope_base)
        v = self._split(self.v(x))
        p = 0
        if self.persistent is not None:
            p = self.persistent.shape[0]
            mem = self.persistent.unsqueeze(0).expand(b, -1, -1)
            k = torch.cat([self._split(self.k(mem)), k], dim=2)                # (B, H, P + L, E)
            v = torch.cat([self._split(self.v(mem)), v], dim=2)
        allowed = window_mask(length, self.window, p, x.device)                 # (L, P + L)
        if self.training:
            # QK-clip's S_max, over every training forward (all recursion passes) since the last reset; a
            # separate no-grad product, so the attention itself can use a fused kernel that keeps no scores.
            with torch.no_grad():
                scores = (q @ k.transpose(-1, -2) / math.sqrt(self.width)).masked_fill(~allowed, float("-inf"))
                torch.maximum(self._max_logit, scores.amax(dim=(0, 2, 3)).float(), out=self._max_logit)
                del scores
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, length, hidden))

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

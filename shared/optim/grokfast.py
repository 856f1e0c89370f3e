"""Grokfast-EMA: amplify the slow component of the gradient.

Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv:2405.20233),
Algorithm 2 (`gradfilter_ema`): a low-pass filter over the sequence of gradients,

    ema_t = α·ema_{t-1} + (1 − α)·g_t
    ĝ_t   = g_t + λ·ema_t

λ > 0 adds the slow (low-frequency) part of the gradient on top of the raw one, in the same direction, so
the optimizer moves faster along directions the gradient keeps pointing to.

The EMA starts at zero (the reference code starts it at the first gradient). With a zero start the
first steps are not amplified at full strength: a constant gradient g is filtered to exactly
g·(1 + λ(1 − α^k)) after k steps, a warm-up of about 1/(1 − α) steps, where the reference gives g·(1 + λ)
from step 1. The zero start follows DESIGN.md §5's recurrence literally (ema_0 = 0); its side effect is
that the gradients of the first steps after initialisation, the least typical of a run's slow direction,
are amplified only partly. Tests assert the zero-start formula.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def grokfast_ema_(grads: list[torch.Tensor], emas: list[torch.Tensor], *, alpha: float, lam: float) -> None:
    """Update `emas` and filter `grads` in place: ema ← α·ema + (1−α)·g, then g ← g + λ·ema."""
    if not grads:
        return
    # foreach kernels: one launch per op for the whole list instead of three per tensor.
    torch._foreach_mul_(emas, alpha)
    torch._foreach_add_(emas, grads, alpha=1.0 - alpha)
    torch._foreach_add_(grads, emas, alpha=lam)

"""QK-clip: cap attention logits by rescaling the query/key weights after each step.

Kimi K2 (Moonshot AI 2025, arXiv:2507.20534) "MuonClip": Muon lets attention logits grow until training
diverges; after each optimizer step, every head whose largest pre-softmax logit S_h (recorded during the
forward passes since the last step) exceeds τ gets

    W_q[h] ← W_q[h]·√(τ / S_h),   W_k[h] ← W_k[h]·√(τ / S_h)

so that head's logit q·k/√d on the same input becomes exactly τ (the product of two √ factors), while heads
with S_h ≤ τ are untouched. It requires logits bilinear in W_q and W_k: no q/k biases, no norm on q or k.

The attention module owns the bookkeeping (the optimizer cannot see activations), through this protocol;
for TRMTitansMAG S_h is the max over every recursion pass and includes the persistent-memory keys.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from shared.errors import InvalidSpecError


@runtime_checkable
class QKClipTarget(Protocol):
    def max_logits(self) -> torch.Tensor:
        """(num_heads,) max scaled logit per head since the last reset; −inf where nothing was recorded."""
        ...

    def reset_max_logits(self) -> None: ...

    def scale_qk_heads(self, scale: torch.Tensor) -> None:
        """Multiply head h's rows of W_q and W_k by scale[h] (in place, no grad)."""
        ...


def check_targets(modules: object) -> list[QKClipTarget]:
    try:
        targets = list(modules)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidSpecError(f"must be an iterable of attention modules, got {type(modules).__name__}",
                               field="qk_modules") from None
    for i, module in enumerate(targets):
        if not isinstance(module, QKClipTarget):
            raise InvalidSpecError(
                f"item {i} ({type(module).__name__}) lacks max_logits/reset_max_logits/scale_qk_heads",
                field="qk_modules")
    return targets


def qk_clip_scales(max_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-head factor for W_q and W_k: √(τ/S) where τ < S < ∞, else exactly 1.0.

    Heads at or below τ get 1.0, and x·1.0 == x bit for bit, so they are unchanged. S = −inf (no record) and
    NaN are left alone; S = +inf is also left alone rather than scaled to zero, which would kill the head for
    good — an infinite logit is a forward-pass bug to surface, not one to clip.
    """
    s = max_logits.detach().float()
    clip = torch.isfinite(s) & (s > threshold)
    return torch.where(clip, torch.sqrt(threshold / torch.where(clip, s, threshold)), torch.ones_like(s))


@torch.no_grad()
def apply_qk_clip(targets: list[QKClipTarget], threshold: float) -> list[torch.Tensor]:
    """Clip every target, reset its record, and return the recorded maxima (for logging)."""
    recorded = []
    for module in targets:
        # A copy: reset_max_logits may refill the very buffer max_logits returned.
        s = module.max_logits().detach().clone()
        # Always applied (ones for unclipped heads) rather than branching on `(s > τ).any()`, which would
        # force a device→host sync per module per step.
        module.scale_qk_heads(qk_clip_scales(s, threshold))
        module.reset_max_logits()
        recorded.append(s)
    return recorded

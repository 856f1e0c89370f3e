"""Training-memory estimate and the batch size that fits an accelerator (the checklist's VRAM calculator).

Estimate of the peak bytes of one training step at batch size B:

    total = weights + grads + optimizer_state + B · (activations_per_sample + extra_bytes_per_sample)

- weights: unique parameter + buffer storage at their dtypes (see `get_model_size`).
- grads: one gradient per trainable parameter, at the parameter's dtype.
- optimizer_state: k parameter-sized tensors per trainable parameter, k from the optimizer (AdamW 2:
  exp_avg, exp_avg_sq; SGD with momentum 1; Muon 1 momentum buffer; MuonGrokfast 3: AdamW's two plus
  Grokfast's gradient EMA), or `optimizer_state_per_param`.
- activations: measured, not guessed (see `shared.utils.activation_probe`).
- extra: what a phase knows the probe cannot see (e.g. the neural memory's fast-weight state, thoughts
  sampled in parallel), per sample.

The sum is exact when gradients stay allocated between steps (`zero_grad(set_to_none=False)`), and an
upper bound when they are freed, since activations are released while gradients are produced. It leaves
out what is not the model's: the CUDA context, library workspaces (cuBLAS/cuBLASLt held 64 MiB on an
H100) and allocator fragmentation, which is what `safety_fraction` is for. Measured against real steps
(tests/utils/test_memory_estimate*.py) it lands 4–8% above the peak, on CPU and on CUDA.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import nn

from shared.errors import InvalidSpecError, ResourceExhaustedError
from shared.utils.activation_probe import (
    ActivationProfile,
    ExampleInputFn,
    LossFn,
    profile_activations,
)
from shared.utils.model_size import storage_nbytes, unique_tensors

log = logging.getLogger(__name__)

GIB = 2**30

# Parameter-sized state tensors each optimizer keeps per trainable parameter.
OPTIMIZER_STATES: dict[str, float] = {
    "adamw": 2,
    "adam": 2,
    "sgd": 1,  # with momentum; plain SGD keeps none: pass optimizer_state_per_param=0
    "muon": 1,
    "muongrokfast": 3,
    "lion": 1,
}


class InsufficientMemoryError(ResourceExhaustedError):
    """Even a batch of one sample does not fit the accelerator's memory budget."""

    def __init__(self, message: str, *, required_bytes: int, budget_bytes: int):
        self.required_bytes = required_bytes
        self.budget_bytes = budget_bytes
        super().__init__(message)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step, by component (see the module docstring)."""

    batch_size: int
    weights: int
    grads: int
    optimizer_state: int
    activations: int
    extra: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer_state + self.activations + self.extra

    def describe(self) -> str:
        parts = ("weights", "grads", "optimizer_state", "activations", "extra")
        body = ", ".join(f"{p} {getattr(self, p) / GIB:.3f}" for p in parts)
        return f"batch {self.batch_size}: {self.total / GIB:.3f} GiB ({body} GiB)"


def _optimizer_states(optimizer: str, optimizer_state_per_param: float | None) -> float:
    if optimizer_state_per_param is not None:
        if not math.isfinite(optimizer_state_per_param) or optimizer_state_per_param < 0:
            raise InvalidSpecError(f"must be a finite number >= 0, got {optimizer_state_per_param!r}",
                                   field="optimizer_state_per_param")
        return float(optimizer_state_per_param)
    key = optimizer.lower().replace("_", "").replace("-", "")
    if key not in OPTIMIZER_STATES:
        raise InvalidSpecError(
            f"unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZER_STATES)} "
            "(or pass optimizer_state_per_param)", field="optimizer")
    return OPTIMIZER_STATES[key]


@dataclass(frozen=True)
class _StaticBytes:
    weights: int
    grads: int
    optimizer_state: int


def _static_bytes(model: nn.Module, states: float) -> _StaticBytes:
    params, buffers = unique_tensors(model)
    param_bytes = sum(storage_nbytes(p) for p in params)
    buffer_bytes = sum(storage_nbytes(b) for b in buffers)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return _StaticBytes(
        weights=param_bytes + buffer_bytes,
        grads=trainable,
        optimizer_state=int(round(states * trainable)),
    )


def _check_positive_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidSpecError(f"must be a positive integer, got {value!r}", field=field)
    return value


def _check_non_negative(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidSpecError(f"must be a finite number >= 0, got {value!r}", field=field)
    return float(value)


def _compose(static: _StaticBytes, profile: ActivationProfile, extra_per_sample: float,
             batch_size: int) -> MemoryEstimate:
    return MemoryEstimate(
        batch_size=batch_size,
        weights=static.weights,
        grads=static.grads,
        optimizer_state=static.optimizer_state,
        activations=profile.per_sample * batch_size,
        extra=int(round(extra_per_sample * batch_size)),
    )


def estimate_training_memory(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    optimizer: str = "adamw",
    optimizer_state_per_param: float | None = None,
    extra_bytes_per_sample: float = 0,
    vocab_size: int | None = None,
    example_input_fn: ExampleInputFn | None = None,
    loss_fn: LossFn | None = None,
) -> MemoryEstimate:
    """Estimated peak bytes of one training step (forward, loss, backward, optimizer step).

    `optimizer_state_per_param` overrides the optimizer table: the number of parameter-sized state
    tensors per trainable parameter (each at the parameter's dtype). See the module docstring for the
    terms and `profile_activations` for the input/loss arguments.
    """
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(seq_len, "seq_len")
    extra = _check_non_negative(extra_bytes_per_sample, "extra_bytes_per_sample")
    static = _static_bytes(model, _optimizer_states(optimizer, optimizer_state_per_param))
    profile = profile_activations(model, seq_len, vocab_size=vocab_size,
                                  example_input_fn=example_input_fn, loss_fn=loss_fn)
    return _compose(static, profile, extra, batch_size)


def calculate_safe_batch_size(
    model: nn.Module,
    device_vram_gb: float,
    *,
    seq_len: int = 512,
    target_batch_size: int = 32,
    optimizer: str = "adamw",
    optimizer_state_per_param: float | None = None,
    extra_bytes_per_sample: float = 0,
    safety_fraction: float = 0.85,
    vocab_size: int | None = None,
    example_input_fn: ExampleInputFn | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[int, int]:
    """(batch_size, accumulation_steps) for training `model` on an accelerator with `device_vram_gb` GiB.

    batch_size is the largest B ≤ target_batch_size whose `estimate_training_memory` fits
    safety_fraction × VRAM; accumulation_steps = ceil(target_batch_size / B), so that
    B × accumulation_steps ≥ target_batch_size. Raises InsufficientMemoryError when B = 1 does not fit,
    InvalidSpecError for a bad argument (naming it).
    """
    if isinstance(device_vram_gb, bool) or not isinstance(device_vram_gb, (int, float)) \
            or not math.isfinite(device_vram_gb) or device_vram_gb <= 0:
        raise InvalidSpecError(f"must be a positive number of GiB, got {device_vram_gb!r}",
                               field="device_vram_gb")
    _check_positive_int(seq_len, "seq_len")
    _check_positive_int(target_batch_size, "target_batch_size")
    if not isinstance(safety_fraction, (int, float)) or not 0 < safety_fraction <= 1:
        raise InvalidSpecError(f"must be in (0, 1], got {safety_fraction!r}", field="safety_fraction")
    extra = _check_non_negative(extra_bytes_per_sample, "extra_bytes_per_sample")

    static = _static_bytes(model, _optimizer_states(optimizer, optimizer_state_per_param))
    profile = profile_activations(model, seq_len, vocab_size=vocab_size,
                                  example_input_fn=example_input_fn, loss_fn=loss_fn)
    budget = safety_fraction * device_vram_gb * GIB
    one = _compose(static, profile, extra, 1)
    if one.total > budget:
        raise InsufficientMemoryError(
            f"a batch of 1 needs {one.total / GIB:.2f} GiB ({one.describe()}) but the budget is "
            f"{budget / GIB:.2f} GiB ({safety_fraction:.0%} of {device_vram_gb:g} GiB); use a shorter "
            f"seq_len (now {seq_len}), a smaller model, or an accelerator with more memory",
            required_bytes=one.total, budget_bytes=int(budget),
        )
    static_total = static.weights + static.grads + static.optimizer_state
    per_sample = profile.per_sample + extra
    fits = int((budget - static_total) // per_sample) if per_sample > 0 else target_batch_size
    batch = max(1, min(target_batch_size, fits))
    # Guard the closed form against rounding: step down until the composed estimate really fits.
    while batch > 1 and _compose(static, profile, extra, batch).total > budget:
        batch -= 1
    accumulation = math.ceil(target_batch_size / batch)
    log.info("safe batch size %d x %d accumulation for %g GiB (%s; activations probed on %s)",
             batch, accumulation, device_vram_gb,
             _compose(static, profile, extra, batch).describe(), profile.probe_device)
    return batch, accumulation

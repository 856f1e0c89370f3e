"""Model size: unique parameter count, storage bytes and the checklist's size category.

Counting rules (they matter for Phase 1's tied embedding and Phase 4's packed weights):

- A tensor is counted once however many modules hold it: tied weights (embedding == LM head) share one
  storage, so the count follows *storages*, not module attributes.
- Bytes are the storages' real bytes at their real dtypes, so a bf16 model is half an fp32 one and a
  packed ternary buffer (uint8) counts as what it is.
- Nothing is read or allocated: on the meta device the same numbers come out of shapes and dtypes alone,
  which is how the default profile's model is sized without building it for real.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn

from shared.errors import InvalidSpecError

log = logging.getLogger(__name__)

MIB = 2**20

# Upper bounds (exclusive) of each category, in parameters. The checklist names the categories; the
# thresholds are ours and Phase 4 keys its compression targets on them.
SIZE_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("tiny", 50_000_000),
    ("small", 500_000_000),
    ("medium", 2_000_000_000),
    ("large", float("inf")),
)


def size_category(params: int) -> str:
    """Category of a model with `params` parameters: tiny < 50M ≤ small < 500M ≤ medium < 2B ≤ large."""
    if params < 0:
        raise InvalidSpecError(f"must be >= 0, got {params}", field="params")
    for name, upper in SIZE_CATEGORIES:
        if params < upper:
            return name
    raise AssertionError("unreachable: the last category is unbounded")


def storage_key(t: torch.Tensor) -> tuple:
    """Identity of the memory behind `t` (shared by views and tied weights).

    `_cdata` is the address of the C++ StorageImpl, stable for as long as the tensor lives; callers keep
    the tensors alive while they compare keys, so two live storages never share one. Tensor subclasses
    without a plain storage (some wrapper subclasses) fall back to the tensor's own identity.
    """
    try:
        return ("storage", t.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, AttributeError):
        return ("tensor", id(t))


def storage_nbytes(t: torch.Tensor) -> int:
    """Bytes of the storage behind `t` (the whole storage: a view keeps all of it alive)."""
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError, AttributeError):
        return t.numel() * t.element_size()


def _unique_by_storage(tensors: Iterable[torch.Tensor], seen: set) -> list[torch.Tensor]:
    out = []
    for t in tensors:
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def get_model_size(model: nn.Module) -> dict:
    """Size of `model`, counting shared storage once.

    Returns a dict with:
      params           unique parameter elements (tied weights once)
      trainable_params those of them with requires_grad
      buffers_bytes    bytes of buffers whose storage is not already a parameter's
      size_mb          (unique parameter bytes + buffers_bytes) / 2**20, at the tensors' own dtypes
      size_category    "tiny" | "small" | "medium" | "large", see `size_category`

    Works unchanged on meta-device models (no memory is touched).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"get_model_size expects an nn.Module, got {type(model).__name__}")
    params, buffers = unique_tensors(model)

    n_params = sum(p.numel() for p in params)
    n_trainable = sum(p.numel() for p in params if p.requires_grad)
    param_bytes = sum(storage_nbytes(p) for p in params)
    buffer_bytes = sum(storage_nbytes(b) for b in buffers)
    return {
        "params": int(n_params),
        "trainable_params": int(n_trainable),
        "buffers_bytes": int(buffer_bytes),
        "size_mb": (param_bytes + buffer_bytes) / MIB,
        "size_category": size_category(n_params),
    }


def unique_tensors(model: nn.Module) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    """(parameters, buffers) with shared storage folded: what the model really holds in memory.

    Parameters that are one tensor object are already folded by `parameters()`; folding by storage also
    catches distinct Parameter objects built on one storage (ties made through `.data`). A buffer that
    shares a parameter's storage is left out of the buffers.
    """
    seen: set = set()
    params = _unique_by_storage(model.parameters(), seen)
    buffers = _unique_by_storage(model.buffers(), seen)
    return params, buffers

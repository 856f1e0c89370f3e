"""Parameter roles: which optimizer updates which tensor.

The model tags every parameter with a string attribute `af_role` (`setattr(param, "af_role", role)`).
Routing reads that tag and never the tensor's ndim: a tied embedding or the LM head is 2-D yet must not be
orthogonalised (Muon treats a matrix as a linear map between hidden spaces; an embedding is a lookup table
whose rows are updated sparsely), and a memory's initial weights are 2-D yet are state, not a map.

- "muon": a hidden 2-D matrix (attention q/k/v/o, MLP weights, memory projections) → Muon.
- every other role → AdamW.
- untagged → AdamW, with one warning listing the names: a generic nn.Module still trains, conservatively.
"""

from __future__ import annotations

from typing import Any

import torch

from shared.errors import InvalidSpecError

MUON_ROLE = "muon"
ADAMW_ROLES = ("embedding", "head", "norm", "bias", "gate", "persistent", "memory_init", "scalar")
ROLES = (MUON_ROLE, *ADAMW_ROLES)
UNTAGGED = "untagged"
# Groups are emitted in this order inside each user group, so the layout of param_groups (and therefore of
# a saved state_dict) depends on the model's parameters and tags only, not on their declaration order.
ROLE_ORDER = (*ROLES, UNTAGGED)
# Keys a caller may set in a param-group dict; everything else is the optimizer's own business.
GROUP_OVERRIDES = ("muon_lr", "adamw_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda")


def algorithm_of(role: str) -> str:
    return "muon" if role == MUON_ROLE else "adamw"


def _label(name: str | None, index: int, param: torch.Tensor) -> str:
    return name if name is not None else f"param #{index} {tuple(param.shape)}"


def _entries(params: Any, where: str) -> list[tuple[str | None, torch.Tensor]]:
    """The (name or None, tensor) pairs of one group: tensors, or (name, tensor) as named_parameters gives."""
    if isinstance(params, torch.Tensor):
        params = [params]
    elif isinstance(params, (set, frozenset)):
        raise InvalidSpecError("must be an ordered collection, not a set (set order changes between runs)",
                               field=where)
    out: list[tuple[str | None, torch.Tensor]] = []
    for i, item in enumerate(params):
        name, tensor = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        if not isinstance(tensor, torch.Tensor):
            raise InvalidSpecError(f"item {i} is a {type(tensor).__name__}, not a tensor", field=where)
        if not tensor.is_leaf:
            raise InvalidSpecError(f"{_label(name, i, tensor)} is not a leaf tensor and cannot be optimised",
                                   field=where)
        out.append((name, tensor))
    return out


def normalise_params(params: Any) -> list[dict[str, Any]]:
    """Turn the constructor's `params` into a list of user groups {"params": [(name, tensor)], overrides}."""
    if isinstance(params, torch.Tensor):
        raise InvalidSpecError("must be an iterable of parameters or param-group dicts, not one tensor",
                               field="params")
    try:
        items = list(params)
    except TypeError:
        raise InvalidSpecError(f"must be an iterable, got {type(params).__name__}", field="params") from None
    if not items:
        raise InvalidSpecError("is empty: the optimizer has nothing to update", field="params")
    if not all(isinstance(item, dict) for item in items):
        if any(isinstance(item, dict) for item in items):
            raise InvalidSpecError("mixes tensors and param-group dicts", field="params")
        items = [{"params": items}]
    groups = []
    for i, group in enumerate(items):
        where = f"params[{i}]"
        unknown = sorted(set(group) - {"params", *GROUP_OVERRIDES})
        if unknown:
            raise InvalidSpecError(f"unknown key(s) {unknown}; allowed: params, {', '.join(GROUP_OVERRIDES)}",
                                   field=where)
        if "params" not in group:
            raise InvalidSpecError("has no 'params'", field=where)
        groups.append({**group, "params": _entries(group["params"], where + ".params")})
    return groups


def split_by_role(
    entries: list[tuple[str | None, torch.Tensor]], *, first_index: int = 0
) -> tuple[dict[str, list[torch.Tensor]], list[str]]:
    """Partition one group's parameters by role; returns ({role: tensors}, labels of untagged params).

    A tag that is not a known role, or a "muon" tag on a tensor that is not 2-D, is a model bug that would
    otherwise be silently absorbed by AdamW (or crash inside Muon), so both raise naming the parameter.
    """
    by_role: dict[str, list[torch.Tensor]] = {}
    untagged: list[str] = []
    for offset, (name, param) in enumerate(entries):
        label = _label(name, first_index + offset, param)
        role = getattr(param, "af_role", None)
        if role is None:
            role = UNTAGGED
            untagged.append(label)
        elif role not in ROLES:
            raise InvalidSpecError(f"af_role {role!r} is not one of {list(ROLES)}", field=label)
        elif role == MUON_ROLE and param.ndim != 2:
            raise InvalidSpecError(
                f"is tagged af_role='muon' but has shape {tuple(param.shape)}; Muon orthogonalises 2-D "
                "matrices only: tag it with an AdamW role or reshape it", field=label)
        by_role.setdefault(role, []).append(param)
    ordered = {role: by_role[role] for role in ROLE_ORDER if role in by_role}
    return ordered, untagged


def param_groups_report(optimizer: Any) -> list[dict[str, Any]]:
    """One row per (role, optimizer): {"role", "optimizer", "count", "numel"}, in param_groups order.

    Works on any optimizer whose groups carry "role" and "algorithm" (MuonGrokfast's do).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for group in optimizer.param_groups:
        key = (group["role"], group["algorithm"])
        row = rows.setdefault(key, {"role": key[0], "optimizer": key[1], "count": 0, "numel": 0})
        row["count"] += len(group["params"])
        row["numel"] += sum(p.numel() for p in group["params"])
    return list(rows.values())

"""Merge operators on state dicts (DESIGN.md §5 Phase 2): pure functions, no model, no I/O.

Legend: a *state* is dict[str, Tensor] (parameter and persistent-buffer names → tensors, tied weights once);
θ_i a parent's state, θ_anc the ancestor's, δ_i = θ_i − θ_anc its task vector (task arithmetic, Ilharco et
al. 2023, arXiv 2212.04089); L the net's layer count, read from the `net.layers.{i}.` names.

Operators and the papers they follow:
- linear: Σ_i w_i θ_i (weights not normalised).
- SLERP: spherical interpolation of two flattened tensors (Shoemake 1985), lerp when nearly colinear;
  several models pairwise in a fixed order, t_i = w_i / Σ_{j≤i} w_j (= 1/i for equal weights).
- DARE: drop each entry of δ with probability p and rescale the rest by 1/(1 − p) (Yu et al. 2024,
  arXiv 2311.03099).
- TIES: trim δ to its top-density entries by |δ|, elect a sign per entry, disjoint mean of the agreeing
  entries (Yadav et al. 2023, arXiv 2306.01708).
- FrankenMerge: each layer taken whole from a chosen model (layer-stacking "passthrough" merges).
- DFS: a path of (source, layer, scale) steps through the net (data-flow-space merging, Akiba et al. 2024,
  arXiv 2403.13187), mapped onto our L fixed slots plus the config's `layer_plan`.

Numerics: arithmetic runs in float32 or the inputs' wider dtype. Task vectors stay in that working dtype;
every operator that returns weights casts back to the dtype of its first input (add_task_vector: the
ancestor's).

Memory masks (`net.layers.{i}.memory.mask`, the active capacity) are buffers, not weights, and are never
averaged: they are not part of a task vector; an operator that combines models gives a layer the elementwise
max of its sources' masks (the union of their capacities; sources = the models with a non-zero weight, or
all of them when every weight is 0; SLERP at t = 0 or 1 has one source); DARE and TIES trim leave a mask
untouched; FrankenMerge and DFS copy a layer whole, mask included, so a copied layer keeps its source's mask.

Every operator refuses mismatched inputs with InvalidSpecError naming what differs (the key sets, a tensor
and both shapes, the number of weights) and a bad hyperparameter naming it (`p`, `density`, `t`, …).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from shared.errors import InvalidSpecError

State = dict[str, Tensor]

LAYER_KEY = re.compile(r"^net\.layers\.(\d+)\.(.+)$")
MASK_LEAF = "memory.mask"
NORM_FLOOR = 1e-12         # a flattened tensor with a smaller norm has no direction: SLERP falls back to lerp
CHOICE_PATTERNS = ("abc", "abba", "random")


# -- names, checks, dtypes --

def layer_of(name: str) -> tuple[int, str] | None:
    """(i, rest) for `net.layers.{i}.rest`, else None."""
    m = LAYER_KEY.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def is_mask(name: str) -> bool:
    parts = layer_of(name)
    return parts is not None and parts[1] == MASK_LEAF


def num_layers(state: Mapping[str, Tensor]) -> int:
    """L: the number of `net.layers.{i}` blocks (indices must be 0..L−1)."""
    found = {parts[0] for parts in map(layer_of, state) if parts is not None}
    if found != set(range(len(found))):
        raise InvalidSpecError(f"layer indices must be 0..L-1, got {sorted(found)}", field="states")
    return len(found)


def check_compatible(states: Sequence[Mapping[str, Tensor]], labels: Sequence[str] | None = None) -> None:
    """Same tensor names and shapes in every state, every tensor floating point; the error names the state
    (by `labels`, default states[i]) and what differs."""
    labels = list(labels) if labels is not None else [f"states[{i}]" for i in range(len(states))]
    if not states:
        raise InvalidSpecError("need at least one state", field="states")
    ref, ref_label = states[0], labels[0]
    for name, t in ref.items():
        if not t.is_floating_point():
            raise InvalidSpecError(f"tensor '{name}' is {t.dtype}; merging needs floating-point tensors",
                                   field=ref_label)
    for state, label in zip(states[1:], labels[1:], strict=True):
        if state.keys() != ref.keys():
            extra, missing = sorted(state.keys() - ref.keys()), sorted(ref.keys() - state.keys())
            raise InvalidSpecError(f"different tensor names from {ref_label}: it has {extra[:5]} that "
                                   f"{ref_label} lacks and lacks {missing[:5]}", field=label)
        for name, t in state.items():
            if t.shape != ref[name].shape:
                raise InvalidSpecError(f"tensor '{name}' has shape {tuple(t.shape)}, but "
                                       f"{tuple(ref[name].shape)} in {ref_label}", field=label)


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _weights(weights: Sequence[float], n: int, *, field: str = "weights") -> list[float]:
    ws = [float(w) for w in weights]
    if len(ws) != n:
        raise InvalidSpecError(f"{len(ws)} weights for {n} models", field=field)
    if not all(math.isfinite(w) for w in ws):
        raise InvalidSpecError(f"every weight must be finite, got {ws}", field=field)
    return ws


def _sources(weights: Sequence[float]) -> list[int]:
    nonzero = [i for i, w in enumerate(weights) if w != 0]
    return nonzero or list(range(len(weights)))


def _union(tensors: Sequence[Tensor]) -> Tensor:
    out = tensors[0].clone()
    for t in tensors[1:]:
        out = torch.maximum(out, t.to(out))
    return out


def union_masks(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> State:
    """The mask of every layer: elementwise max over the sources (the models with a non-zero weight)."""
    sources = _sources(_weights(weights, len(states)) if weights is not None else [1.0] * len(states))
    return {k: _union([states[i][k] for i in sources]) for k in states[0] if is_mask(k)}


# -- task vectors --

def task_vectors(states: Sequence[Mapping[str, Tensor]], ancestor: Mapping[str, Tensor]) -> list[State]:
    """δ_i = θ_i − θ_anc for every tensor but the masks, in the working dtype (float32 or wider)."""
    check_compatible([ancestor, *states], ["ancestor", *(f"states[{i}]" for i in range(len(states)))])
    out = []
    for state in states:
        out.append({k: state[k].to(device=a.device, dtype=_work_dtype(state[k], a)) - a.to(_work_dtype(state[k], a))
                    for k, a in ancestor.items() if not is_mask(k)})
    return out


def add_task_vector(ancestor: Mapping[str, Tensor], delta: Mapping[str, Tensor],
                    masks: Mapping[str, Tensor] | None = None) -> State:
    """θ = θ_anc + δ, cast to the ancestor's dtypes. `delta` must cover every tensor but the masks; the masks
    come from `masks` (e.g. union_masks of the parents) or else from the ancestor."""
    weights = {k: t for k, t in ancestor.items() if not is_mask(k)}
    check_compatible([weights, delta], ["ancestor", "delta"])
    out = {k: (a.to(_work_dtype(a, delta[k])) + delta[k].to(device=a.device, dtype=_work_dtype(a, delta[k])))
           .to(a.dtype) for k, a in weights.items()}
    mask_src = masks if masks is not None else ancestor
    for k, a in ancestor.items():
        if is_mask(k):
            if k not in mask_src:
                raise InvalidSpecError(f"no mask for '{k}'", field="masks")
            out[k] = mask_src[k].to(a).clone()
    return out


# -- combining --

def linear(tensors: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> State:
    """Σ_i w_i · s_i per tensor. The weights are used as given, not normalised: on task vectors this is task
    arithmetic (weights summing to 1 give their weighted mean, larger sums extrapolate); on full states use
    weights summing to 1 for a weighted average. Masks: union of the sources."""
    check_compatible(tensors, [f"tensors[{i}]" for i in range(len(tensors))])
    ws = _weights(weights, len(tensors))
    out: State = {}
    for k, ref in tensors[0].items():
        if is_mask(k):
            continue
        work = _work_dtype(*(s[k] for s in tensors))
        acc = torch.zeros(ref.shape, dtype=work, device=ref.device)
        for w, s in zip(ws, tensors, strict=True):
            acc.add_(s[k].to(device=ref.device, dtype=work), alpha=w)
        out[k] = acc.to(ref.dtype)
    return {**out, **union_masks(tensors, ws)}


def slerp_tensor(a: Tensor, b: Tensor, t: float, eps: float = 1e-6) -> Tensor:
    """Spherical interpolation of the flattened tensors, in a's dtype:
    Ω = arccos(⟨a, b⟩ / (‖a‖‖b‖)),  slerp = sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b.
    Lerp (1 − t)·a + t·b when |cos Ω| > 1 − eps (nearly colinear, including antipodal) or either norm is
    below NORM_FLOOR. t = 0 returns a and t = 1 returns b exactly."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.to(a).clone()
    work = _work_dtype(a, b)
    af, bf = a.reshape(-1).to(work), b.reshape(-1).to(device=a.device, dtype=work)
    na, nb = torch.linalg.vector_norm(af), torch.linalg.vector_norm(bf)
    if na < NORM_FLOOR or nb < NORM_FLOOR:
        return torch.lerp(af, bf, t).reshape(a.shape).to(a.dtype)
    cos = torch.clamp(torch.dot(af, bf) / (na * nb), -1.0, 1.0)
    if abs(float(cos)) > 1 - eps:
        return torch.lerp(af, bf, t).reshape(a.shape).to(a.dtype)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / sin) * af + (torch.sin(t * omega) / sin) * bf
    return out.reshape(a.shape).to(a.dtype)


def _check_t(t: float) -> float:
    t = float(t)
    if not (math.isfinite(t) and 0 <= t <= 1):
        raise InvalidSpecError(f"must be in [0, 1], got {t!r}", field="t")
    return t


def slerp(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float, eps: float = 1e-6) -> State:
    """slerp_tensor on every tensor (each tensor is its own sphere). Masks: a's at t = 0, b's at t = 1,
    else their union."""
    check_compatible([a, b], ["a", "b"])
    t = _check_t(t)
    out = {k: slerp_tensor(a[k], b[k], t, eps) for k in a if not is_mask(k)}
    masks = union_masks([a, b], [1 - t, t])
    return {**out, **masks}


def slerp_many(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None,
               eps: float = 1e-6) -> State:
    """Pairwise SLERP in the given order: r_1 = m_1, r_i = slerp(r_{i−1}, m_i, t_i), t_i = w_i / Σ_{j≤i} w_j.
    Equal weights (the default) give DESIGN.md's t_i = 1/i; with lerp in place of slerp this is exactly the
    weighted mean. Weights must be >= 0 with a positive sum; a model of weight 0 does not contribute."""
    check_compatible(states)
    ws = _weights(weights if weights is not None else [1.0] * len(states), len(states))
    if any(w < 0 for w in ws) or sum(ws) <= 0:
        raise InvalidSpecError(f"SLERP needs weights >= 0 with a positive sum, got {ws}", field="weights")
    order = [i for i, w in enumerate(ws) if w > 0]
    result: State = dict(states[order[0]])
    total = ws[order[0]]
    for i in order[1:]:
        total += ws[i]
        result = slerp(result, states[i], ws[i] / total, eps)
    if len(order) == 1:
        result = {k: v.clone() for k, v in result.items()}
    return result


# -- sparsifying --

def dare(delta: Mapping[str, Tensor], p: float, generator: torch.Generator) -> State:
    """Drop And REscale: δ̂ = m ⊙ δ / (1 − p), m_e ~ Bernoulli(1 − p) independently per entry, drawn from
    `generator` in sorted name order (so the result depends only on the seed). E[δ̂] = δ and
    Var[δ̂_e] = δ_e² · p / (1 − p). p = 0 returns δ exactly (no draws). Masks are left untouched."""
    p = float(p)
    if not (math.isfinite(p) and 0 <= p < 1):
        raise InvalidSpecError(f"must be in [0, 1), got {p!r}", field="p")
    out: State = {}
    for k in sorted(delta):
        d = delta[k]
        if p == 0 or is_mask(k):
            out[k] = d.clone()
            continue
        keep = torch.rand(d.shape, generator=generator, device=generator.device) >= p   # P = 1 − p
        work = _work_dtype(d)
        out[k] = torch.where(keep.to(d.device), d.to(work) / (1 - p), torch.zeros((), dtype=work,
                                                                                 device=d.device)).to(d.dtype)
    return {k: out[k] for k in delta}


def _check_density(density: float) -> float:
    density = float(density)
    if not (math.isfinite(density) and 0 < density <= 1):
        raise InvalidSpecError(f"must be in (0, 1], got {density!r}", field="density")
    return density


def ties_trim(delta: Mapping[str, Tensor], density: float) -> State:
    """TIES trim: per tensor keep the k = ⌈density · n⌉ entries of largest |δ| (entries tied with the k-th
    largest are all kept, so the choice is deterministic), zero the rest. density = 1 returns δ exactly.
    Masks are left untouched."""
    density = _check_density(density)
    out: State = {}
    for k, d in delta.items():
        n = d.numel()
        if density == 1 or is_mask(k) or n == 0:
            out[k] = d.clone()
            continue
        keep_n = math.ceil(density * n)
        mag = d.detach().reshape(-1).abs().to(_work_dtype(d))
        threshold = torch.kthvalue(mag, n - keep_n + 1).values
        out[k] = torch.where(mag.reshape(d.shape) >= threshold, d, torch.zeros((), dtype=d.dtype, device=d.device))
    return out


def ties_elect(deltas: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> State:
    """TIES elect + disjoint mean, per entry e: the elected sign s_e = sign(Σ_i w_i δ_i,e); the models that
    agree are A_e = {i : sign(w_i δ_i,e) = s_e ≠ 0}; result_e = Σ_{i∈A_e} w_i δ_i,e / Σ_{i∈A_e} w_i, and 0
    where A_e is empty. Equal weights give the paper's plain mean over the agreeing models; weights summing
    to 1 with every sign agreeing give task arithmetic Σ_i w_i δ_i. The caller scales the result by λ.
    Weights must be >= 0 with a positive sum. Masks (if any): union of the sources."""
    check_compatible(deltas, [f"deltas[{i}]" for i in range(len(deltas))])
    ws = _weights(weights, len(deltas))
    if any(w < 0 for w in ws) or sum(ws) <= 0:
        raise InvalidSpecError(f"TIES needs weights >= 0 with a positive sum, got {ws}", field="weights")
    out: State = {}
    for k, ref in deltas[0].items():
        if is_mask(k):
            continue
        work = _work_dtype(*(d[k] for d in deltas))
        weighted = torch.stack([w * d[k].to(device=ref.device, dtype=work) for w, d in zip(ws, deltas)])  # (n, …)
        elected = torch.sign(weighted.sum(0))
        agree = (torch.sign(weighted) == elected) & (elected != 0)
        w_col = torch.tensor(ws, dtype=work, device=ref.device).reshape(-1, *([1] * ref.dim()))
        num = (weighted * agree).sum(0)
        den = (w_col * agree).sum(0)
        out[k] = torch.where(den > 0, num / den.clamp_min(torch.finfo(work).tiny), torch.zeros((), dtype=work,
                                                                                          device=ref.device))
        out[k] = out[k].to(ref.dtype)
    return {**out, **union_masks(deltas, ws)}


def scale(state: Mapping[str, Tensor], factor: float) -> State:
    """factor · δ for every tensor but the masks (TIES' λ)."""
    return {k: (t.clone() if is_mask(k) else (t.to(_work_dtype(t)) * float(factor)).to(t.dtype))
            for k, t in state.items()}


# -- composing layers --

def layer_choice(pattern: str | Sequence[int], layers: int, candidates: int, *, seed: int = 0) -> list[int]:
    """Which candidate each of `layers` layers comes from. "abc": cycle through the candidates (0, 1, …, n−1,
    0, …); "abba": forward then backward (0, 1, …, n−1, n−1, …, 0, 0, …); "random": uniform, from a
    torch.Generator seeded with `seed`; a sequence of ints: that choice (fitness-chosen by the caller, e.g.
    choose_by_fitness), checked."""
    if candidates < 1:
        raise InvalidSpecError("need at least one candidate", field="candidates")
    if isinstance(pattern, str):
        if pattern == "abc":
            return [i % candidates for i in range(layers)]
        if pattern == "abba":
            cycle = list(range(candidates)) + list(reversed(range(candidates)))
            return [cycle[i % len(cycle)] for i in range(layers)]
        if pattern == "random":
            g = torch.Generator().manual_seed(int(seed))
            return torch.randint(0, candidates, (layers,), generator=g).tolist()
        raise InvalidSpecError(f"must be one of {CHOICE_PATTERNS} or a list of candidate indices, got {pattern!r}",
                               field="pattern")
    choice = list(pattern)
    if len(choice) != layers or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < candidates
                                        for c in choice):
        raise InvalidSpecError(f"must give one candidate index in [0, {candidates}) per layer ({layers} layers), "
                               f"got {choice!r}", field="pattern")
    return choice


def choose_by_fitness(scores: Sequence[Sequence[float]]) -> list[int]:
    """Fitness-chosen layers: scores[layer][candidate] (higher is better) → the best candidate per layer
    (the first on ties)."""
    return [max(range(len(row)), key=lambda c: (row[c], -c)) for row in scores]


def _check_index(value: int, n: int, field: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n):
        raise InvalidSpecError(f"must be an index in [0, {n}), got {value!r}", field=field)
    return value


def frankenmerge(states: Sequence[Mapping[str, Tensor]], choice: Sequence[int], *, base: int = 0) -> State:
    """Layer i (every `net.layers.{i}.*` tensor, its mask included) is states[choice[i]]'s layer i, copied
    whole; every tensor outside the layers (embedding, y/z init, final norm, heads) is states[base]'s."""
    check_compatible(states)
    n_layers = num_layers(states[0])
    if len(choice) != n_layers:
        raise InvalidSpecError(f"needs one candidate per layer ({n_layers}), got {len(choice)}", field="choice")
    for i, c in enumerate(choice):
        _check_index(c, len(states), f"choice[{i}]")
    _check_index(base, len(states), "base")
    out: State = {}
    for k, t in states[base].items():
        parts = layer_of(k)
        out[k] = (t if parts is None else states[choice[parts[0]]][k]).clone()
    return out


def identity_plan(layers: int) -> list[list]:
    """The plan equal to no plan: every layer once, in order, scale 1."""
    return [[i, 1.0] for i in range(layers)]


def dfs(states: Sequence[Mapping[str, Tensor]], steps: Sequence[Sequence], *, base: int = 0
        ) -> tuple[State, list[list]]:
    """Data-flow-space merge. steps = [(source, layer, scale), …]: the path runs states[source]'s layer
    `layer` on scale · x, in order. Our net has L fixed slots (the population must keep its shapes), so the
    distinct (source, layer) pairs, in order of first use, are placed in slots 0, 1, … (slot j holds pair j's
    weights, mask included); they must fit in L. Unused slots keep states[base]'s layer; the tensors outside
    the layers are states[base]'s. Returns (state, layer_plan) with layer_plan = [[slot of the step's pair,
    scale], …] for the config: the merged model computes exactly the path. The same weights without the plan
    are a FrankenMerge; the two differ whenever the plan is not identity_plan(L)."""
    check_compatible(states)
    n_layers = num_layers(states[0])
    _check_index(base, len(states), "base")
    steps = [tuple(s) for s in steps]
    if not 1 <= len(steps) <= 4 * n_layers:
        raise InvalidSpecError(f"needs 1..{4 * n_layers} steps (4 × {n_layers} layers), got {len(steps)}",
                               field="steps")
    slots: dict[tuple[int, int], int] = {}
    plan = []
    for i, step in enumerate(steps):
        if len(step) != 3:
            raise InvalidSpecError(f"step {i} must be (source, layer, scale), got {step!r}", field="steps")
        source = _check_index(step[0], len(states), f"steps[{i}].source")
        layer = _check_index(step[1], n_layers, f"steps[{i}].layer")
        s = step[2]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise InvalidSpecError(f"must be a finite number > 0, got {s!r}", field=f"steps[{i}].scale")
        slot = slots.setdefault((source, layer), len(slots))
        plan.append([slot, float(s)])
    if len(slots) > n_layers:
        raise InvalidSpecError(f"the path uses {len(slots)} distinct (source, layer) pairs but the net has only "
                               f"{n_layers} layer slots: repeat pairs or shorten the path", field="steps")
    pair_of = {slot: pair for pair, slot in slots.items()}
    out: State = {}
    for k, t in states[base].items():
        parts = layer_of(k)
        if parts is None or parts[0] not in pair_of:
            out[k] = t.clone()
            continue
        source, layer = pair_of[parts[0]]
        out[k] = states[source][f"net.layers.{layer}.{parts[1]}"].clone()
    return out, plan

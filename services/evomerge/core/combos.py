"""The 3-stage merge combos and the checklist's model-level merge names, on TRMTitansMAG models
(DESIGN.md §5 Phase 2; operators and their formulas in services.evomerge.core.merge).

A combo works on task vectors δ_i = θ_i − θ_anc of the parents m_1..m_k relative to their common ancestor,
one binary choice per stage, chosen by the bits of combo_id (0..7):

    bit 0, stage 1 — sparsify each δ_i:  0 DARE(p)            1 TIES trim(density)
    bit 1, stage 2 — combine:            0 linear Σ w_i δ_i    1 SLERP, pairwise, t_i = w_i / Σ_{j≤i} w_j
                                           (TIES elect + disjoint mean, × λ, when stage 1 was TIES)
    then merged = θ_anc + combined, each layer's mask the union of the parents' masks;
    bit 2, stage 3 — compose layers over the candidates [merged, m_1, …, m_k]:
                                         0 FrankenMerge        1 DFS

Stage 3 uses the stage-2 result as candidate 0 and the parents as the others: FrankenMerge takes each layer
whole from the candidate the layer choice names (default "abc": merged, m_1, m_2, …, cycling) and everything
outside the layers from `merged`; DFS takes the same layer sourcing and adds a path — by default one seeded
layer run a second time, right after itself, on a seeded input scale in [0.5, 1) — recorded as the config's
layer_plan (derive_dfs_steps). So stage 3 never discards the stage-2 result, and the two stage-3 choices
differ exactly by the path.

The merged config: act_threshold = the weighted mean of the parents' (clamped to their range),
active_ltm_slots = their max (each layer's mask says what it really uses), layer_plan = DFS's plan (None when
it is the identity path or stage 3 was FrankenMerge; the parents' plans are not carried: weights merge slot
by slot), merge_recipe = {combo_id, stages, hyper} so a saved model says how it was made.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from services.evomerge.core.merge import (CHOICE_PATTERNS, State, add_task_vector, check_compatible, dare, dfs,
                                          frankenmerge, identity_plan, layer_choice, linear, slerp_many,
                                          task_vectors, ties_elect, ties_trim, union_masks)
from services.evomerge.core.merge import scale as scale_state
from shared.canonical import dumps_canonical
from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAG, TRMTitansMAGConfig

log = logging.getLogger(__name__)

# Config fields every parent must share (they fix shapes or what a forward computes). act_threshold,
# active_ltm_slots and layer_plan may differ: they are merged (see the module doc).
SHARED_FIELDS = ("vocab_size", "hidden_dim", "num_layers", "num_heads", "max_seq_len", "window", "persistent_tokens",
                 "ltm_slots", "memory_dim", "memory_chunk_size", "memory_theta_max", "n_latent_steps", "t_cycles",
                 "n_sup", "dropout", "mlp_ratio", "rope_base", "tie_word_embeddings")

STAGE_CHOICES = (("dare", "ties_trim"), ("linear", "slerp"), ("frankenmerge", "dfs"))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _renamed(exc: InvalidSpecError, prefix: str, name: str) -> InvalidSpecError:
    """The operator's error under the hyperparameter's name (e.g. steps[1].scale → dfs_steps[1].scale)."""
    message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
    suffix = exc.field.removeprefix(prefix) if exc.field and exc.field.startswith(prefix) else ""
    return InvalidSpecError(message, field=name + suffix)


def _check_weights_field(weights: Sequence[float], name: str = "weights") -> tuple[float, ...]:
    try:
        ws = tuple(float(w) for w in weights)
    except (TypeError, ValueError) as exc:
        raise InvalidSpecError(f"must be a list of numbers, got {weights!r}", field=name) from exc
    if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or sum(ws) <= 0:
        raise InvalidSpecError(f"must be finite numbers >= 0 with a positive sum, got {list(weights)!r}", field=name)
    return ws


@dataclass(frozen=True, kw_only=True)
class MergeHyper:
    """The hyperparameters of one combo (what evolution mutates)."""

    weights: tuple[float, ...] | None = None
    """Per-parent weights, >= 0 with a positive sum; None = equal (1/k each). Linear sums w_i δ_i as given
    (1/k each: the mean task vector), SLERP uses t_i = w_i / Σ_{j≤i} w_j, TIES the weighted disjoint mean."""
    dare_p: float = 0.3
    """DARE drop probability, in [0, 1)."""
    ties_density: float = 0.5
    """TIES trim: the fraction of entries kept per tensor, by |δ|; in (0, 1]."""
    ties_lambda: float = 1.0
    """TIES: the scale λ of the elected task vector; finite and > 0."""
    layer_choice: str | tuple[int, ...] = "abc"
    """Stage 3: which candidate ([merged, m_1, …]) each layer comes from: "abc", "abba", "random" (seeded) or
    one candidate index per layer (fitness-chosen)."""
    dfs_steps: tuple[tuple[int, int, float], ...] | None = None
    """Stage 3 DFS: the path [(candidate, layer, scale), …]; None = derive_dfs_steps(layer choice, seed)."""
    seed: int = 0
    """Seeds DARE's drops, the "random" layer choice and the derived DFS path."""

    def __post_init__(self) -> None:
        if self.weights is not None:
            object.__setattr__(self, "weights", _check_weights_field(self.weights))
        if not (_number(self.dare_p) and 0 <= self.dare_p < 1):
            raise InvalidSpecError(f"must be in [0, 1), got {self.dare_p!r}", field="dare_p")
        if not (_number(self.ties_density) and 0 < self.ties_density <= 1):
            raise InvalidSpecError(f"must be in (0, 1], got {self.ties_density!r}", field="ties_density")
        if not (_number(self.ties_lambda) and self.ties_lambda > 0):
            raise InvalidSpecError(f"must be finite and > 0, got {self.ties_lambda!r}", field="ties_lambda")
        if isinstance(self.layer_choice, str):
            if self.layer_choice not in CHOICE_PATTERNS:
                raise InvalidSpecError(f"must be one of {CHOICE_PATTERNS} or a list of candidate indices, got "
                                       f"{self.layer_choice!r}", field="layer_choice")
        else:
            object.__setattr__(self, "layer_choice", tuple(self.layer_choice))
        if self.dfs_steps is not None:
            steps = tuple(tuple(s) for s in self.dfs_steps)
            if not steps or any(len(s) != 3 for s in steps):
                raise InvalidSpecError(f"must be a non-empty list of (candidate, layer, scale), got "
                                       f"{self.dfs_steps!r}", field="dfs_steps")
            object.__setattr__(self, "dfs_steps", tuple((int(a), int(b), float(c)) for a, b, c in steps))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidSpecError(f"must be an integer, got {self.seed!r}", field="seed")

    def weights_for(self, k: int) -> tuple[float, ...]:
        if self.weights is None:
            return tuple([1.0 / k] * k)
        if len(self.weights) != k:
            raise InvalidSpecError(f"{len(self.weights)} weights for {k} parents", field="weights")
        return self.weights

    def to_dict(self) -> dict:
        """JSON-ready (lists, not tuples)."""
        d = asdict(self)
        for key in ("weights", "layer_choice", "dfs_steps"):
            if d[key] is not None and not isinstance(d[key], str):
                d[key] = [list(s) if isinstance(s, tuple) else s for s in d[key]]
        return d


def combo_stages(combo_id: int) -> tuple[str, str, str]:
    """The stage names of a combo, e.g. 5 → ("ties_trim", "ties_elect", "dfs")."""
    _check_combo_id(combo_id)
    s1 = STAGE_CHOICES[0][combo_id & 1]
    s2 = STAGE_CHOICES[1][(combo_id >> 1) & 1]
    if s1 == "ties_trim" and s2 == "linear":
        s2 = "ties_elect"
    return s1, s2, STAGE_CHOICES[2][(combo_id >> 2) & 1]


def _check_combo_id(combo_id: int) -> None:
    if isinstance(combo_id, bool) or not isinstance(combo_id, int) or not 0 <= combo_id <= 7:
        raise InvalidSpecError(f"must be an integer in 0..7 (3 stage bits), got {combo_id!r}", field="combo_id")


def derive_dfs_steps(choice: Sequence[int], *, seed: int) -> tuple[tuple[int, int, float], ...]:
    """The default DFS path: every layer once, from the candidate `choice` names, at scale 1, with one seeded
    layer r run again right after itself on a seeded input scale in [0.5, 1). It uses L distinct (candidate,
    layer) pairs (fits the L slots) and is never the identity path."""
    g = torch.Generator().manual_seed(int(seed) + 1)
    repeat = int(torch.randint(0, len(choice), (1,), generator=g))
    scale = round(0.5 + 0.5 * float(torch.rand((), generator=g, dtype=torch.float64)), 4)
    steps = []
    for i, c in enumerate(choice):
        steps.append((c, i, 1.0))
        if i == repeat:
            steps.append((c, i, scale))
    return tuple(steps)


# -- models <-> states --

def model_state(model: TRMTitansMAG) -> State:
    """Parameters (tied weights once) and persistent buffers, detached (no copies)."""
    keep = set(model.state_dict().keys())
    return {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n in keep}


def build_model(template: TRMTitansMAG, state: Mapping[str, torch.Tensor], config: TRMTitansMAGConfig) -> TRMTitansMAG:
    """A new model: `template`'s modules (deep-copied, so no RNG is drawn) with `state`'s tensors and `config`."""
    model = copy.deepcopy(template)
    model.config = config
    own = model_state(model)
    if own.keys() != state.keys():
        missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise InvalidSpecError(f"the merged state does not fit the model: missing {missing[:5]}, extra {extra[:5]}",
                               field="state")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(state[name])
    return model


def _check_parents(models: Sequence, ancestor=None, *, need_ancestor: bool) -> None:
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
        raise InvalidSpecError("need a non-empty list of parent models", field="models")
    named = [(f"models[{i}]", m) for i, m in enumerate(models)]
    if need_ancestor:
        if ancestor is None:
            raise InvalidSpecError("a combo merges task vectors relative to the parents' common ancestor: pass "
                                   "ancestor= (the Phase-1 ancestor model)", field="ancestor")
    if ancestor is not None:
        named.append(("ancestor", ancestor))
    for label, m in named:
        if m is None:
            raise InvalidSpecError("is missing (None)", field=label)
        if not isinstance(m, TRMTitansMAG):
            raise InvalidSpecError(f"is a {type(m).__name__}, not a TRMTitansMAG: merging needs one model family",
                                   field=label)
    ref = models[0].config
    for label, m in named[1:]:
        for name in SHARED_FIELDS:
            a, b = getattr(ref, name), getattr(m.config, name)
            if a != b:
                raise InvalidSpecError(f"config.{name} is {b!r}, but {a!r} in models[0]: parents must share "
                                       f"shapes and config (only act_threshold, capacity and layer_plan may "
                                       f"differ)", field=f"{label}.config.{name}")
    check_compatible([model_state(m) for _, m in named], [label for label, _ in named])


def merged_config(models: Sequence[TRMTitansMAG], weights: Sequence[float], layer_plan, recipe: dict
                  ) -> TRMTitansMAGConfig:
    """models[0]'s config with act_threshold = Σ w_i a_i / Σ w_i (clamped to the parents' range),
    active_ltm_slots = max, the given layer_plan and merge_recipe."""
    acts = [float(m.config.act_threshold) for m in models]
    act = sum(w * a for w, a in zip(weights, acts)) / sum(weights)
    act = min(max(act, min(acts)), max(acts))
    fields = {**models[0].config.to_dict(), "act_threshold": act,
              "active_ltm_slots": max(int(m.config.active_ltm_slots) for m in models),
              "layer_plan": layer_plan, "merge_recipe": recipe}
    dumps_canonical(recipe)   # must be JSON: refuses NaN and non-JSON types early
    return TRMTitansMAGConfig.from_dict(fields)


# -- the combos --

def apply_merge_combo(models: Sequence[TRMTitansMAG], combo_id: int, *, ancestor: TRMTitansMAG | None = None,
                      hyper: MergeHyper | None = None) -> TRMTitansMAG:
    """The combo `combo_id` (0..7, bits in the module doc) of the parents, relative to `ancestor` (required:
    the keyword has a default only so that leaving it out gets a clear InvalidSpecError). Returns a new model
    (the inputs are not modified) on models[0]'s device and dtype."""
    _check_combo_id(combo_id)
    _check_parents(models, ancestor, need_ancestor=True)
    hyper = hyper if hyper is not None else MergeHyper()
    weights = hyper.weights_for(len(models))
    stage1, stage2, stage3 = combo_stages(combo_id)
    anc = model_state(ancestor)
    states = [model_state(m) for m in models]
    deltas = task_vectors(states, anc)
    # stage 1: sparsify each task vector
    if stage1 == "dare":
        g = torch.Generator().manual_seed(hyper.seed)
        deltas = [dare(d, hyper.dare_p, g) for d in deltas]
    else:
        deltas = [ties_trim(d, hyper.ties_density) for d in deltas]
    # stage 2: combine them, back onto the ancestor; masks: the union of the parents'
    if stage2 == "linear":
        combined = linear(deltas, weights)
    elif stage2 == "ties_elect":
        combined = scale_state(ties_elect(deltas, weights), hyper.ties_lambda)
    else:
        combined = slerp_many(deltas, weights)
    merged = add_task_vector(anc, combined, masks=union_masks(states, weights))
    # stage 3: compose layers from [merged, parents…]
    candidates = [merged, *states]
    n_layers = models[0].config.num_layers
    try:
        choice = layer_choice(hyper.layer_choice, n_layers, len(candidates), seed=hyper.seed)
    except InvalidSpecError as exc:
        raise _renamed(exc, "pattern", "layer_choice") from exc
    plan = None
    steps = None
    if stage3 == "frankenmerge":
        state = frankenmerge(candidates, choice)
    else:
        steps = hyper.dfs_steps if hyper.dfs_steps is not None else derive_dfs_steps(choice, seed=hyper.seed)
        try:
            state, plan = dfs(candidates, steps)
        except InvalidSpecError as exc:
            raise _renamed(exc, "steps", "dfs_steps") from exc
        plan = None if plan == identity_plan(n_layers) else plan
    recipe = {"method": "combo", "combo_id": combo_id, "stages": [stage1, stage2, stage3],
              "candidates": ["merged", *(f"parent_{i + 1}" for i in range(len(models)))],
              "layer_choice": choice, "dfs_steps": [list(s) for s in steps] if steps is not None else None,
              "hyper": hyper.to_dict(), "weights": list(weights)}
    return build_model(models[0], state, merged_config(models, weights, plan, recipe))


def _linear_models(models: Sequence[TRMTitansMAG], ancestor, weights, method: str) -> TRMTitansMAG:
    _check_parents(models, ancestor, need_ancestor=False)
    ws = _check_weights_field(weights if weights is not None else [1.0 / len(models)] * len(models))
    if len(ws) != len(models):
        raise InvalidSpecError(f"{len(ws)} weights for {len(models)} models", field="weights")
    states = [model_state(m) for m in models]
    if ancestor is None:
        total = sum(ws)
        state = linear(states, [w / total for w in ws])
    else:
        anc = model_state(ancestor)
        state = add_task_vector(anc, linear(task_vectors(states, anc), ws), masks=union_masks(states, ws))
    recipe = {"method": method, "weights": list(ws), "ancestor": ancestor is not None}
    return build_model(models[0], state, merged_config(models, ws, models[0].config.layer_plan, recipe))


def linear_merge(*models: TRMTitansMAG, ancestor: TRMTitansMAG | None = None,
                 weights: Sequence[float] | None = None) -> TRMTitansMAG:
    """The checklist's fallback. Without an ancestor: the weighted average Σ w_i θ_i / Σ w_i of every
    parameter. With one: task arithmetic θ_anc + Σ w_i δ_i (weights as given). Weights >= 0 with a positive
    sum, default equal (1/k): then both forms are the same model. Masks: union; layer_plan: models[0]'s.
    Also accepts one list of models."""
    if len(models) == 1 and isinstance(models[0], (list, tuple)):
        models = tuple(models[0])
    return _linear_models(list(models), ancestor, weights, "linear_merge")


def merge(model_a: TRMTitansMAG, model_b: TRMTitansMAG, *, ancestor: TRMTitansMAG | None = None) -> TRMTitansMAG:
    """The checklist's loser merge: linear 50/50 of the two (task arithmetic when an ancestor is given, the
    same model up to rounding); masks: union; layer_plan: model_a's."""
    return _linear_models([model_a, model_b], ancestor, (0.5, 0.5), "merge")


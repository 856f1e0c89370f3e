"""How different the three Cognate models are, the checklist's diversity check, the W&B comparison table and
the loss barrier between parents (DESIGN.md §5, §7). Per-model figures and their definitions live in
`services.cognate.core.model_metrics`; everything here is deterministic (no wall-clock time).

Diversity figures over models m_1..m_k (k >= 1):
- halting_diversity = max_i H_i − min_i H_i, in supervision steps (the checklist's unit for its > 2.0
  criterion; at most n_sup − 1).
- memory_diversity  = (max_i U_i − min_i U_i) / max_i U_i of LTM usage; 0 when all are equal (or all 0).
- compute_diversity = (max_i C_i − min_i C_i) / max_i C_i of compute per token (FLOPs): the deterministic
  stand-in for the checklist's speed_diversity in ms, which would be a wall-clock figure.
Both relative figures lie in [0, 1], so they are comparable with the checklist's unitless 0.3.

validate_diversity's rule: the specialisations are memory (largest memory) and speed (halts earliest), so
the models are distinct enough to merge when they differ on at least one of those axes. It raises
InsufficientDiversityError only when BOTH memory_diversity and compute_diversity are below the threshold.
halting_diversity is reported, not compared with 0.3 (it is in steps; its own criterion is the gate's).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch

from services.cognate.core.model_metrics import (ModelProfile, compute_per_token, ltm_usage, mean_halting_steps,
                                                 profile_model, validation_nll)
from shared.errors import FailedPreconditionError, InvalidSpecError

DIVERSITY_THRESHOLD = 0.3   # the checklist's "will raise if diversity < 0.3"


class InsufficientDiversityError(FailedPreconditionError):
    """The three Phase-1 models are too alike to be worth merging (the checklist: retrain with more
    aggressive config differences). `figures` holds every diversity figure; `failed` the ones below
    `threshold`."""

    def __init__(self, figures: Mapping[str, float], failed: Sequence[str], threshold: float):
        self.figures = dict(figures)
        self.failed = list(failed)
        self.threshold = threshold
        below = ", ".join(f"{name} = {figures[name]:.4f}" for name in failed)
        super().__init__(f"insufficient diversity between the Phase-1 models: {below}, each below the threshold "
                         f"{threshold} (at least one must reach it); retrain with more different capacity "
                         f"(ltm_slots) or halting (act_threshold)")


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values)


def _relative_spread(values: Sequence[float]) -> float:
    top = max(values)
    return (top - min(values)) / top if top > 0 else 0.0


def _each(metric, models: Sequence, batches) -> list:
    if not models:
        raise InvalidSpecError("need at least one model", field="models")
    return [metric(m, batches) for m in models]


def diversity_figures(profiles: Sequence[ModelProfile]) -> dict[str, float]:
    """The three figures from already measured per-model profiles (no model is run again)."""
    return _figures(profiles)


def _figures(profiles: Sequence[ModelProfile]) -> dict[str, float]:
    return {"halting_diversity": _spread([p.halting_steps for p in profiles]),
            "memory_diversity": _relative_spread([p.ltm_usage for p in profiles]),
            "compute_diversity": _relative_spread([p.compute_per_token for p in profiles])}


def halting_diversity(models: Sequence, batches) -> float:
    """max_i H_i − min_i H_i: spread of mean executed supervision steps per token, in steps."""
    return _spread(_each(mean_halting_steps, models, batches))


def memory_diversity(models: Sequence, batches) -> float:
    """(max_i U_i − min_i U_i) / max_i U_i of LTM usage (0 when all equal); in [0, 1]."""
    return _relative_spread(_each(ltm_usage, models, batches))


def compute_diversity(models: Sequence, batches) -> float:
    """(max_i C_i − min_i C_i) / max_i C_i of compute per token (FLOPs); in [0, 1]."""
    return _relative_spread(_each(compute_per_token, models, batches))


def validate_diversity(model1, model2, model3, *, batches, threshold: float = DIVERSITY_THRESHOLD) -> dict:
    """The checklist's check. Returns {halting_diversity, memory_diversity, compute_diversity, threshold,
    models: [per-model figures]}; raises InsufficientDiversityError when memory_diversity < threshold AND
    compute_diversity < threshold (rule and reasons in the module doc)."""
    if not 0 < threshold <= 1:
        raise InvalidSpecError(f"must be in (0, 1], got {threshold!r}", field="threshold")
    profiles: list[ModelProfile] = _each(profile_model, [model1, model2, model3], batches)
    figures = _figures(profiles)
    failed = [name for name in ("memory_diversity", "compute_diversity") if figures[name] < threshold]
    if len(failed) == 2:
        raise InsufficientDiversityError(figures, failed, threshold)
    return {**figures, "threshold": threshold, "models": [p.as_dict() for p in profiles]}


def _active_slots(model) -> int:
    return int(model.net.layers[0].memory.mask.sum())


DIVERSITY_COLUMNS = ["name", "act_threshold", "active_ltm_slots", "mean_halting_steps", "compute_per_token_flops",
                     "ltm_usage", "val_nll"]


def diversity_table(models: Mapping[str, object], batches,
                    profiles: Mapping[str, ModelProfile] | None = None) -> tuple[list[str], list[list]]:
    """Columns and rows for `wandb.Table(columns=..., data=...)` ("diversity/model_comparison"): per model its
    halting threshold, active memory slots (from the mask), H, C, U and validation NLL. `profiles` (by
    model name), when given, are used instead of measuring the models again."""
    rows = []
    for name, model in models.items():
        p = profiles[name] if profiles is not None else profile_model(model, batches)
        rows.append([name, float(model.config.act_threshold), _active_slots(model), p.halting_steps,
                     p.compute_per_token, p.ltm_usage, p.nll])
    return list(DIVERSITY_COLUMNS), rows


def specialisation_problems(profiles: Mapping[str, ModelProfile], threshold: float = DIVERSITY_THRESHOLD) -> list[str]:
    """Why the three variants do not (yet) have their specialisations, measured; [] when they do.
    - validate_diversity's rule fails (memory_diversity and compute_diversity both below `threshold`);
    - reasoning does not think longer than speed (H_reasoning <= H_speed);
    - memory does not use the most memory (U_memory < max of the others).
    The Cognate job answers a non-empty list with the checklist's mitigation: retrain the variants with more
    aggressive config differences (runner.more_different), once."""
    problems = []
    figures = _figures([profiles[n] for n in ("reasoning", "memory", "speed")])
    if figures["memory_diversity"] < threshold and figures["compute_diversity"] < threshold:
        problems.append(f"memory_diversity {figures['memory_diversity']:.3f} and compute_diversity "
                        f"{figures['compute_diversity']:.3f} both below {threshold}")
    h_r, h_s = profiles["reasoning"].halting_steps, profiles["speed"].halting_steps
    if not h_r > h_s:
        problems.append(f"reasoning does not think longer than speed (halting steps {h_r:.3f} vs {h_s:.3f})")
    u = {n: profiles[n].ltm_usage for n in ("reasoning", "memory", "speed")}
    if u["memory"] < max(u["reasoning"], u["speed"]):
        problems.append(f"memory does not use the most memory (ltm_usage {u})")
    return problems


def _check_same_shapes(model_a, model_b) -> None:
    def shapes(m):
        return ({n: tuple(t.shape) for n, t in m.named_parameters()}, {n: tuple(t.shape) for n, t in m.named_buffers()})
    if shapes(model_a) != shapes(model_b):
        raise InvalidSpecError("the two models must have the same parameter and buffer names and shapes "
                               "(Phase-1 models share shapes; capacity differs only by the memory mask)",
                               field="model_b")


def loss_barrier(model_a, model_b, batches, points: int = 5,
                 endpoint_losses: tuple[float, float] | None = None) -> dict:
    """Loss along the straight line between two models (linear mode connectivity of the parents).

    θ(t) = (1 − t)·θ_a + t·θ_b for every parameter, t in linspace(0, 1, points) (torch.lerp: exact at the
    endpoints). Buffers (the memory mask: the active capacity) and the halting threshold / active-slot count
    in the config cannot be averaged meaningfully, so they come from model_a for t < 0.5, else model_b.
    L(t) = validation NLL of θ(t) with ACT halting (model_metrics.validation_nll).
    barrier = max_t [L(t) − ((1 − t)·L(0) + t·L(1))]: the largest excess over the straight line between the
    endpoint losses (≥ 0 since the endpoints are included; 0 for a model with itself).
    Works on a deep copy: the inputs are not modified. Returns {"barrier", "losses", "t"}. `endpoint_losses`
    = (L(0), L(1)) when already measured on the same batches (validation_nll of each model), else measured.
    """
    if not isinstance(points, int) or points < 2:
        raise InvalidSpecError(f"must be an integer >= 2, got {points!r}", field="points")
    _check_same_shapes(model_a, model_b)
    work = copy.deepcopy(model_a)
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    ts = torch.linspace(0.0, 1.0, points, dtype=torch.float64).tolist()
    losses = []
    for i, t in enumerate(ts):
        if endpoint_losses is not None and i in (0, len(ts) - 1):
            losses.append(float(endpoint_losses[0 if i == 0 else 1]))
            continue
        source = model_a if t < 0.5 else model_b
        source_buffers = dict(source.named_buffers())
        with torch.no_grad():
            for name, p in work.named_parameters():   # tied weights appear once and stay tied
                p.copy_(torch.lerp(params_a[name], params_b[name].to(params_a[name]), t))
            for name, buf in work.named_buffers():
                buf.copy_(source_buffers[name])
        work.config.act_threshold = source.config.act_threshold
        work.config.active_ltm_slots = source.config.active_ltm_slots
        losses.append(validation_nll(work, batches))
    if any(loss != loss for loss in losses):
        raise FailedPreconditionError(f"the loss along the line is not finite: {losses}")
    excess = [loss - ((1 - t) * losses[0] + t * losses[-1]) for t, loss in zip(ts, losses, strict=True)]
    return {"barrier": max(excess), "losses": losses, "t": ts}

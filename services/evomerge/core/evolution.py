"""EvoMerge's evolution: fitness, diversity, new candidates, population memory, and the generation loop
(DESIGN.md §5 Phase 2; the checklist's loop with its names).

Definitions (all deterministic for fixed inputs and seeds; no wall-clock time):

- fitness F(m) = w_nll · exp(−NLL(m)) + w_mc · A(m) + w_compute · min(1, C_ref / C(m)), where
  NLL = mean next-token NLL on the fitness batches with ACT halting (exp(−NLL) is the geometric-mean
  probability of the right token, in (0, 1]); A = max(0, acc − chance) / (1 − chance), the multiple-choice
  accuracy above chance on a fixed subset (0 when none is given); C = executed FLOPs per token
  (services.cognate.core.model_metrics.compute_per_token) and C_ref the cheapest parent's. Higher is better.
  Scores are cached by model_hash, so an elite is never evaluated twice.
- diversity of a population = mean pairwise L2 distance between the models' weights (masks excluded);
  the loop reports it relative to generation 0's (1.0 at the start) and re-injects a fresh combo of the
  parents when it falls under `diversity_reinject_below`.
- improvement = (best F so far − best F of generation 0) / best F of generation 0.

A candidate is a Genome: a combo_id (three stage bits) and its MergeHyper, plus an optional weight mutation
(seeded Gaussian noise on a fraction of the entries, σ = mutation_scale × the RMS of that tensor's task
vector). New candidates recombine two genomes of the fitter half (each stage bit and each hyperparameter from
either parent) and perturb the numbers; the loser merge is the checklist's `merge` of the two worst models.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from services.evomerge.core.combos import MergeHyper, apply_merge_combo, linear_merge, model_state
from services.evomerge.core.merge import is_mask
from services.evomerge.core.validity import is_valid_model
from shared.errors import InvalidSpecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitnessWeights:
    nll: float = 1.0
    multiple_choice: float = 0.5
    compute: float = 0.1

    def __post_init__(self) -> None:
        values = (self.nll, self.multiple_choice, self.compute)
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise InvalidSpecError(f"weights must be finite, >= 0 and not all 0, got {values}", field="fitness")


@dataclass(frozen=True)
class Fitness:
    score: float
    nll: float
    mc_above_chance: float
    compute_per_token: float

    def as_dict(self) -> dict[str, float]:
        return {"fitness": self.score, "nll": self.nll, "mc_above_chance": self.mc_above_chance,
                "compute_per_token": self.compute_per_token}


def evaluate_fitness(model, batches: Sequence[dict], *, weights: FitnessWeights = FitnessWeights(),
                     reference_compute: float | None = None,
                     multiple_choice: Callable[[object], float] | None = None) -> Fitness:
    """F (module doc). `batches`: fitness batches with already-shifted labels (Phase1Dataset's);
    `multiple_choice(model)` returns the above-chance accuracy A in [0, 1] on the fixed subset;
    `reference_compute` = C_ref (default: this model's own C, so the compute term is w_compute)."""
    from services.cognate.core.model_metrics import profile_model

    if not batches:
        raise InvalidSpecError("no fitness batches: an unmeasured fitness must not rank models", field="batches")
    profile = profile_model(model, batches)
    if not math.isfinite(profile.nll):
        return Fitness(score=0.0, nll=float("inf"), mc_above_chance=0.0, compute_per_token=profile.compute_per_token)
    mc = multiple_choice(model) if (multiple_choice is not None and weights.multiple_choice > 0) else 0.0
    ref = reference_compute if reference_compute is not None else profile.compute_per_token
    compute = min(1.0, ref / profile.compute_per_token) if profile.compute_per_token > 0 else 0.0
    score = weights.nll * math.exp(-profile.nll) + weights.multiple_choice * mc + weights.compute * compute
    return Fitness(score=score, nll=profile.nll, mc_above_chance=mc, compute_per_token=profile.compute_per_token)


def _weight_vector(model) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for name, t in sorted(model_state(model).items())
                      if not is_mask(name)])


def compute_diversity(population: Sequence) -> float:
    """Mean pairwise L2 distance between the models' weights (masks excluded); 0 for fewer than 2 models."""
    if len(population) < 2:
        return 0.0
    vectors = [_weight_vector(m) for m in population]
    return float(sum(torch.dist(a, b) for a, b in itertools.combinations(vectors, 2))
                 / math.comb(len(vectors), 2))


def population_bytes(population: Sequence) -> int:
    return sum(t.numel() * t.element_size() for m in population for t in model_state(m).values())


def manage_population_memory(population: Sequence, device_vram_gb: float | None = None, *,
                             headroom: float = 0.8) -> str:
    """"cuda" when a CUDA device is visible and the population's weights fit in `headroom` × its free
    memory (or × `device_vram_gb` when given, the checklist's form), else "cpu"."""
    if not torch.cuda.is_available():
        return "cpu"
    if device_vram_gb is not None:
        if device_vram_gb <= 0:
            raise InvalidSpecError(f"must be > 0, got {device_vram_gb}", field="device_vram_gb")
        budget = device_vram_gb * 2**30
    else:
        budget = torch.cuda.mem_get_info()[0]
    return "cuda" if population_bytes(population) <= headroom * budget else "cpu"


@dataclass(frozen=True)
class Genome:
    """How a candidate is made from the three parents: a combo and its hyperparameters, then an optional
    seeded weight mutation. `origin` says where it came from (for lineage)."""

    combo_id: int
    hyper: MergeHyper
    mutation_seed: int | None = None
    origin: str = "combo"

    def to_dict(self) -> dict:
        return {"combo_id": self.combo_id, "hyper": self.hyper.to_dict(), "mutation_seed": self.mutation_seed,
                "origin": self.origin}


def mutate_weights(model, ancestor, *, fraction: float, scale: float, seed: int):
    """In place: for a seeded `fraction` of each tensor's entries add N(0, σ²), σ = scale × RMS of that
    tensor's task vector (θ − θ_anc); masks untouched. Returns the model."""
    if not 0 < fraction <= 1:
        raise InvalidSpecError(f"must be in (0, 1], got {fraction}", field="fraction")
    g = torch.Generator().manual_seed(seed)
    anc = model_state(ancestor)
    with torch.no_grad():
        for name, t in sorted(model_state(model).items()):
            if is_mask(name) or not t.is_floating_point():
                continue
            delta = (t.float() - anc[name].float())
            sigma = scale * float(delta.pow(2).mean().sqrt())
            if sigma == 0:
                continue
            chosen = torch.rand(t.shape, generator=g) < fraction
            noise = torch.randn(t.shape, generator=g) * sigma
            t.add_((noise * chosen).to(t.dtype).to(t.device))
    return model


def build(genome: Genome, parents: Sequence, ancestor, *, mutation_scale: float, mutation_fraction: float = 0.1,
          validation_batches: Sequence[dict] | None = None):
    """The candidate a genome describes; an invalid merge (is_valid_model) falls back to linear_merge, as the
    checklist does, and says so."""
    model = apply_merge_combo(list(parents), genome.combo_id, ancestor=ancestor, hyper=genome.hyper)
    if genome.mutation_seed is not None and mutation_scale > 0:
        mutate_weights(model, ancestor, fraction=mutation_fraction, scale=mutation_scale, seed=genome.mutation_seed)
    validity = is_valid_model(model, validation_batches)
    if not validity:
        log.warning("combo %d invalid (%s): linear fallback", genome.combo_id, validity.reason)
        model = linear_merge(*parents, ancestor=ancestor)
    return model


def _perturb(value: float, rng: random.Random, low: float, high: float, spread: float = 0.15) -> float:
    return min(high, max(low, value + rng.gauss(0.0, spread)))


def recombine(a: Genome, b: Genome, rng: random.Random, *, k: int, seed: int) -> Genome:
    """A child genome: each stage bit and each hyperparameter from a or b (uniform crossover), the numbers
    perturbed (p, density, weights), a fresh seed for DARE/DFS and the weight mutation."""
    bits = [(a.combo_id >> i & 1) if rng.random() < 0.5 else (b.combo_id >> i & 1) for i in range(3)]
    pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
    ha, hb = a.hyper, b.hyper
    weights = [_perturb(w, rng, 0.05, 1.0) for w in pick(ha.weights_for(k), hb.weights_for(k))]
    hyper = MergeHyper(weights=tuple(w / sum(weights) for w in weights),
                       dare_p=_perturb(pick(ha.dare_p, hb.dare_p), rng, 0.0, 0.9),
                       ties_density=_perturb(pick(ha.ties_density, hb.ties_density), rng, 0.1, 1.0),
                       ties_lambda=_perturb(pick(ha.ties_lambda, hb.ties_lambda), rng, 0.5, 1.5),
                       layer_choice=pick(ha.layer_choice, hb.layer_choice), seed=seed)
    return Genome(combo_id=bits[0] | bits[1] << 1 | bits[2] << 2, hyper=hyper, mutation_seed=seed,
                  origin="recombined")


def generate_new_models(n: int, genomes: Sequence[Genome], fitness: Sequence[float], *, rng: random.Random,
                        k: int = 3) -> list[Genome]:
    """The checklist's generate_new_models: n child genomes from parents drawn from the fitter half of the
    population (ranked by `fitness`)."""
    if n < 0:
        raise InvalidSpecError(f"must be >= 0, got {n}", field="n")
    if len(genomes) != len(fitness) or not genomes:
        raise InvalidSpecError("need one fitness per genome and at least one genome", field="genomes")
    ranked = [g for _, g in sorted(zip(fitness, genomes, strict=True), key=lambda p: -p[0])]
    pool = ranked[:max(2, len(ranked) // 2)]
    return [recombine(rng.choice(pool), rng.choice(pool), rng, k=k, seed=rng.randrange(2**31)) for _ in range(n)]


def generation_zero(*, parents: int, population_size: int, seed: int, dare_p: float,
                    ties_density: float) -> list[Genome]:
    """The 8 combos (combo_id 0..7) with the profile's p and density; a population larger than 8 continues
    with recombinations of them, a smaller one takes the first `population_size`."""
    base = [Genome(combo_id=c, hyper=MergeHyper(dare_p=dare_p, ties_density=ties_density, seed=seed + c),
                   origin=f"combo {c}") for c in range(8)]
    rng = random.Random(seed)
    extra = [replace(g, origin="combo variant") for g in generate_new_models(
        max(0, population_size - 8), base, [1.0] * 8, rng=rng, k=parents)]
    return (base + extra)[:population_size]

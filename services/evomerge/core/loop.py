"""The generation loop (the checklist's Phase 2 loop): generation 0 = the combos, then per generation the
elites carried unchanged, the two worst merged (the checklist's loser merge), the rest new candidates from
the fitter genomes; diversity re-injection; early stop; the champion with its lineage. Checkpointable: the
state after each generation is plain tensors + JSON (`Evolution.state` / `Evolution.restore`)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.evomerge.core.combos import MergeHyper, merge, model_state
from services.evomerge.core.evolution import (Fitness, Genome, build, compute_diversity, generate_new_models,
                                              generation_zero)
from services.evomerge.core.validity import model_hash
from shared.errors import InvalidSpecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    population_size: int
    generations: int
    elites: int
    seed: int
    dare_p: float
    ties_density: float
    mutation_scale: float
    reinject_below: float
    early_stop: float

    @classmethod
    def from_spec(cls, spec) -> "LoopConfig":
        return cls(population_size=spec.population_size, generations=spec.generations, elites=spec.elites,
                   seed=spec.seed, dare_p=spec.dare_drop_prob, ties_density=spec.ties_density,
                   mutation_scale=spec.mutation_scale, reinject_below=spec.diversity_reinject_below,
                   early_stop=spec.early_stop_improvement)


@dataclass
class Individual:
    model: object
    genome: Genome | None          # None: a loser merge (of two earlier individuals)
    lineage: dict
    fitness: Fitness | None = None


@dataclass
class GenerationRecord:
    generation: int
    best_fitness: float
    diversity: float               # relative to generation 0's
    improvement: float
    reinjected: bool
    fitness: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(data) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


class Evolution:
    """parents: the three Phase-1 models; fitness_fn(model) -> Fitness (cached here by model_hash)."""

    def __init__(self, parents: Sequence, ancestor, cfg: LoopConfig, fitness_fn: Callable[[object], Fitness],
                 validation_batches: Sequence[dict] | None = None):
        if cfg.elites + 1 > cfg.population_size:
            raise InvalidSpecError(f"elites ({cfg.elites}) + the loser merge must fit in population_size "
                                   f"({cfg.population_size})", field="elites")
        self.parents, self.ancestor, self.cfg = list(parents), ancestor, cfg
        self.fitness_fn, self.validation_batches = fitness_fn, validation_batches
        self.cache: dict[str, Fitness] = {}
        self.rng = random.Random(cfg.seed)
        self.history: list[GenerationRecord] = []
        self.population: list[Individual] = []
        self.diversity0 = 0.0
        self.best0 = 0.0
        self.evaluations = 0

    # -- pieces --
    def _make(self, genome: Genome) -> Individual:
        model = build(genome, self.parents, self.ancestor, mutation_scale=self.cfg.mutation_scale,
                      validation_batches=self.validation_batches)
        return Individual(model, genome, {"genome": genome.to_dict()})

    def _score(self, ind: Individual) -> float:
        if ind.fitness is None:
            key = model_hash(ind.model)
            if key not in self.cache:
                self.cache[key] = self.fitness_fn(ind.model)
                self.evaluations += 1
            ind.fitness = self.cache[key]
        return ind.fitness.score

    def _record(self, generation: int, reinjected: bool) -> GenerationRecord:
        scores = [self._score(i) for i in self.population]
        diversity = compute_diversity([i.model for i in self.population])
        if generation == 0:
            self.diversity0, self.best0 = diversity, max(scores)
        rel = diversity / self.diversity0 if self.diversity0 > 0 else 0.0
        best = max(max(scores), max((r.best_fitness for r in self.history), default=-math.inf))
        record = GenerationRecord(generation, best, rel, (best - self.best0) / self.best0 if self.best0 > 0 else 0.0,
                                  reinjected, scores)
        self.history.append(record)
        log.info("generation %d: best %.5f, diversity %.3f, improvement %.4f", generation, best, rel,
                 record.improvement)
        return record

    # -- the loop --
    def start(self) -> GenerationRecord:
        genomes = generation_zero(parents=len(self.parents), population_size=self.cfg.population_size,
                                  seed=self.cfg.seed, dare_p=self.cfg.dare_p, ties_density=self.cfg.ties_density)
        self.population = [self._make(g) for g in genomes]
        return self._record(0, False)

    def step(self) -> GenerationRecord:
        generation = len(self.history)
        ranked = sorted(self.population, key=lambda i: -self._score(i))
        elites = ranked[:self.cfg.elites]
        losers = ranked[-2:]
        loser = Individual(merge(losers[0].model, losers[1].model, ancestor=self.ancestor), None,
                           {"merge_of": [l.lineage for l in losers]})
        pool = [(i.genome, self._score(i)) for i in ranked if i.genome is not None]
        n_new = self.cfg.population_size - len(elites) - 1
        children = generate_new_models(n_new, [g for g, _ in pool], [f for _, f in pool], rng=self.rng,
                                       k=len(self.parents))
        self.population = elites + [loser] + [self._make(g) for g in children]
        reinjected = False
        rel = compute_diversity([i.model for i in self.population]) / self.diversity0 if self.diversity0 else 0.0
        if rel < self.cfg.reinject_below and n_new > 0:
            seed = self.rng.randrange(2**31)
            fresh = Genome(combo_id=self.rng.randrange(8), hyper=MergeHyper(dare_p=self.cfg.dare_p,
                           ties_density=self.cfg.ties_density, seed=seed), origin="re-injected combo")
            self.population[-1] = self._make(fresh)
            reinjected = True
        return self._record(generation, reinjected)

    def run(self, on_generation: Callable[[GenerationRecord], None] | None = None) -> GenerationRecord:
        """From where the state is (start or a restored generation) to the end: the generation limit or the
        early stop (improvement ≥ early_stop)."""
        record = self.history[-1] if self.history else self.start()
        if len(self.history) == 1 and on_generation is not None:
            on_generation(record)
        while len(self.history) <= self.cfg.generations and record.improvement < self.cfg.early_stop:
            record = self.step()
            if on_generation is not None:
                on_generation(record)
        return record

    @property
    def stopped_early(self) -> bool:
        return bool(self.history) and self.history[-1].improvement >= self.cfg.early_stop

    def champion(self) -> Individual:
        return max(self.population, key=self._score)

    # -- checkpoint --
    def state(self) -> tuple[dict[str, object], dict]:
        """(tensors by name, JSON) of the population after the last generation."""
        tensors = {f"{i}/{name}": t.detach().contiguous() for i, ind in enumerate(self.population)
                   for name, t in model_state(ind.model).items()}
        meta = {"history": [r.as_dict() for r in self.history], "diversity0": self.diversity0, "best0": self.best0,
                "rng": _rng_to_json(self.rng.getstate()), "evaluations": self.evaluations,
                "individuals": [{"lineage": ind.lineage,
                                 "genome": ind.genome.to_dict() if ind.genome is not None else None,
                                 "fitness": ind.fitness.__dict__ if ind.fitness is not None else None,
                                 "config": ind.model.config.to_dict()} for ind in self.population]}
        return tensors, meta

    def restore(self, tensors: dict, meta: dict) -> None:
        """Continue from `state()` of a later generation (same parents, ancestor and config)."""
        from services.evomerge.core.combos import build_model
        from shared.model import TRMTitansMAGConfig

        self.population = []
        for i, entry in enumerate(meta["individuals"]):
            state = {name.split("/", 1)[1]: t for name, t in tensors.items() if name.split("/", 1)[0] == str(i)}
            model = build_model(self.parents[0], state, TRMTitansMAGConfig.from_dict(entry["config"]))
            genome = _genome_from_json(entry["genome"]) if entry["genome"] is not None else None
            fitness = Fitness(**entry["fitness"]) if entry["fitness"] is not None else None
            self.population.append(Individual(model, genome, entry["lineage"], fitness))
        self.history = [GenerationRecord(**r) for r in meta["history"]]
        self.diversity0, self.best0 = float(meta["diversity0"]), float(meta["best0"])
        self.rng.setstate(_rng_from_json(meta["rng"]))
        self.evaluations = int(meta["evaluations"])
        for ind in self.population:
            if ind.fitness is not None:
                self.cache[model_hash(ind.model)] = ind.fitness


def _genome_from_json(data: dict) -> Genome:
    hyper = dict(data["hyper"])
    for key in ("weights", "dfs_steps"):
        if hyper.get(key) is not None:
            hyper[key] = tuple(tuple(x) if isinstance(x, list) else x for x in hyper[key])
    if isinstance(hyper.get("layer_choice"), list):
        hyper["layer_choice"] = tuple(hyper["layer_choice"])
    return Genome(combo_id=int(data["combo_id"]), hyper=MergeHyper(**hyper), mutation_seed=data["mutation_seed"],
                  origin=data["origin"])

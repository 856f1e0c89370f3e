"""Evolution: fitness, diversity, weight mutation, new genomes, population memory, and the generation loop
(elites carried unchanged, best fitness never falls, early stop, resume from a checkpointed generation)."""

import random

import pytest
import torch

from services.evomerge.core import compute_diversity, evaluate_fitness, generate_new_models, manage_population_memory
from services.evomerge.core.combos import MergeHyper, model_state
from services.evomerge.core.validity import model_hash
from services.evomerge.core.evolution import FitnessWeights, Genome, mutate_weights, recombine
from services.evomerge.core.loop import Evolution, LoopConfig
from services.evomerge.core.merge import is_mask
from shared.errors import InvalidSpecError
from tests.evomerge.helpers import fitness_batches, make_family, moved


@pytest.fixture(scope="module")
def family():
    return make_family()


def test_diversity_is_the_mean_pairwise_weight_distance(family):
    ancestor, parents = family
    assert compute_diversity([ancestor, ancestor]) == 0.0 and compute_diversity([ancestor]) == 0.0
    a, b, c = parents

    def dist(x, y):
        sx, sy = model_state(x), model_state(y)
        return float(torch.sqrt(sum(((sx[n] - sy[n]).double() ** 2).sum() for n in sx if not is_mask(n))))

    expected = (dist(a, b) + dist(a, c) + dist(b, c)) / 3
    assert compute_diversity([a, b, c]) == pytest.approx(expected, rel=1e-5)


def test_fitness_is_deterministic_rewards_likelihood_and_cheapness(family):
    ancestor, (a, _, _) = family
    batches = fitness_batches()
    f = evaluate_fitness(a, batches)
    assert evaluate_fitness(a, batches) == f
    only_nll = evaluate_fitness(a, batches, weights=FitnessWeights(nll=1.0, multiple_choice=0.0, compute=0.0))
    assert only_nll.score == pytest.approx(torch.tensor(-only_nll.nll).exp().item())
    with_mc = evaluate_fitness(a, batches, multiple_choice=lambda m: 0.4)
    assert with_mc.score == pytest.approx(f.score + 0.5 * 0.4)
    pricier = evaluate_fitness(a, batches, reference_compute=f.compute_per_token / 2)   # twice the cheapest
    assert pricier.score == pytest.approx(f.score - 0.1 * 0.5)
    noisy = moved(a, 99, scale=0.5)
    assert evaluate_fitness(noisy, batches).nll > f.nll and evaluate_fitness(noisy, batches).score < f.score
    with pytest.raises(InvalidSpecError, match="fitness"):
        FitnessWeights(nll=0.0, multiple_choice=0.0, compute=0.0)
    with pytest.raises(InvalidSpecError, match="batches"):
        evaluate_fitness(a, [])


def test_weight_mutation_is_seeded_touches_about_the_fraction_and_never_a_mask(family):
    ancestor, (a, _, _) = family
    one = mutate_weights(moved(a, 0, 0.0), ancestor, fraction=0.25, scale=0.5, seed=3)
    two = mutate_weights(moved(a, 0, 0.0), ancestor, fraction=0.25, scale=0.5, seed=3)
    assert model_hash(one) == model_hash(two) != model_hash(a)
    before, after = model_state(a), model_state(one)
    changed = total = 0
    for name, t in before.items():
        if is_mask(name):
            assert torch.equal(t, after[name])
            continue
        changed += int((t != after[name]).sum())
        total += t.numel()
    assert 0.2 < changed / total < 0.3


def test_new_genomes_recombine_the_fitter_half_deterministically():
    genomes = [Genome(c, MergeHyper(seed=c)) for c in range(8)]
    fitness = [float(c) for c in range(8)]                   # combos 4..7 are the fitter half
    kids = generate_new_models(20, genomes, fitness, rng=random.Random(0))
    again = generate_new_models(20, genomes, fitness, rng=random.Random(0))
    assert [k.to_dict() for k in kids] == [k.to_dict() for k in again]
    assert all(k.combo_id & 0b100 for k in kids)             # bit 2 is set in every parent drawn
    assert len({k.combo_id for k in kids}) > 1 and all(abs(sum(k.hyper.weights) - 1) < 1e-9 for k in kids)
    same = recombine(genomes[5], genomes[5], random.Random(1), k=3, seed=11)
    assert same.combo_id == 5 and same.mutation_seed == 11
    with pytest.raises(InvalidSpecError):
        generate_new_models(2, genomes, fitness[:3], rng=random.Random(0))


def test_population_memory_falls_back_to_the_cpu_without_a_gpu(family):
    _, parents = family
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert manage_population_memory(parents, device_vram_gb=6) == "cpu"


def _evolution(family, generations=3, early_stop=10.0, seed=5):
    ancestor, parents = family
    cfg = LoopConfig(population_size=6, generations=generations, elites=2, seed=seed, dare_p=0.3,
                     ties_density=0.5, mutation_scale=0.05, reinject_below=0.25, early_stop=early_stop)
    batches = fitness_batches()
    return Evolution(parents, ancestor, cfg, lambda m: evaluate_fitness(m, batches))


def test_the_loop_carries_elites_keeps_the_best_and_reports_improvement(family):
    evo = _evolution(family)
    seen = []

    def on_generation(record):
        ranked = sorted(evo.population, key=lambda i: -i.fitness.score)
        seen.append((record, [model_hash(i.model) for i in ranked[:2]], {model_hash(i.model) for i in evo.population}))

    evo.run(on_generation)
    assert [r.generation for r, _, _ in seen] == [0, 1, 2, 3]
    for (_, elites, _), (_, _, next_pop) in zip(seen, seen[1:]):
        assert set(elites) <= next_pop                       # the two best are carried unchanged
    best = [r.best_fitness for r, _, _ in seen]
    assert best == sorted(best)
    assert seen[0][0].diversity == pytest.approx(1.0)
    assert seen[-1][0].improvement == pytest.approx((best[-1] - best[0]) / best[0])
    assert evo.champion().fitness.score == pytest.approx(best[-1])
    assert evo.evaluations < 6 * 4                           # elites come from the cache


def test_the_loop_stops_early_once_the_improvement_reaches_the_threshold(family):
    evo = _evolution(family, generations=5, early_stop=-1.0)   # any improvement (even 0) reaches it
    record = evo.run()
    assert record.generation == 0 and evo.stopped_early


def test_a_run_resumed_from_a_checkpointed_generation_equals_the_uninterrupted_one(family):
    whole = _evolution(family)
    whole.run()
    first = _evolution(family, generations=1)
    first.run()
    tensors, meta = first.state()
    resumed = _evolution(family)
    resumed.restore({k: v.clone() for k, v in tensors.items()}, meta)
    resumed.run()
    assert [r.as_dict() for r in resumed.history] == [r.as_dict() for r in whole.history]
    assert model_hash(resumed.champion().model) == model_hash(whole.champion().model)

"""The 3-stage combos and the checklist's model-level names on tiny TRMTitansMAG families (CPU, float64).

A family is an ancestor and three parents that each moved a little away from it (same basin, as after
Phase 1's shared warm-up), with different halting thresholds and memory capacities."""

import copy
import math

import pytest
import torch

from services.evomerge.core import (MergeHyper, apply_merge_combo, combo_stages, is_valid_model, linear_merge, merge,
                                    model_hash)
from services.evomerge.core.combos import model_state
from shared.canonical import dumps_canonical
from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAGConfig, load_model, save_model
from tests.evomerge.helpers import IDS, fitness_batches, make_family, moved, with_capacity
from tests.model.helpers import tiny_model

@pytest.fixture(scope="module")
def family():
    return make_family()


def _close_states(a, b, atol=1e-12) -> bool:
    sa, sb = model_state(a), model_state(b)
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], rtol=0, atol=atol) for k in sa)


def _mask_sum(model, layer: int) -> int:
    return int(model.net.layers[layer].memory.mask.sum())


# -- identity --

@pytest.mark.parametrize("combo_id", range(8))
def test_identical_parents_merge_to_the_parent(combo_id):
    """"Identical" = every parent is the same model m = ancestor + δ. Then, per stage: DARE is the identity
    only at p = 0 (for p > 0 it is δ only in expectation, tested below), TIES trim only at density 1; linear
    with weights summing to 1, TIES elect (all signs agree) and SLERP (colinear: lerp) each give δ back;
    FrankenMerge picks layers of candidates that are all m; DFS gives m when its path is the identity path (a
    non-identity path is a different function of the same weights, by design). So with p = 0, density 1 and
    the identity path, every combo returns m up to float rounding, without a layer plan."""
    ancestor = tiny_model(0).eval()
    m = with_capacity(moved(ancestor, 3), 12, 0.7)
    parents = [copy.deepcopy(m) for _ in range(3)]
    hyper = MergeHyper(dare_p=0.0, ties_density=1.0, dfs_steps=((0, 0, 1.0), (0, 1, 1.0)), layer_choice="abba")
    merged = apply_merge_combo(parents, combo_id, ancestor=ancestor, hyper=hyper)
    assert _close_states(merged, m)
    assert merged.config.layer_plan is None
    assert merged.config.act_threshold == pytest.approx(0.7) and merged.config.active_ltm_slots == 12
    assert torch.allclose(merged(IDS).logits, m(IDS).logits, rtol=0, atol=1e-9)


def test_dare_with_p_0_and_linear_is_task_arithmetic(family):
    ancestor, parents = family
    weights = (0.5, 0.3, 0.2)
    hyper = MergeHyper(dare_p=0.0, weights=weights, layer_choice=(0, 0))   # every layer from the merged model
    merged = apply_merge_combo(parents, 0, ancestor=ancestor, hyper=hyper)
    anc = model_state(ancestor)
    for k, v in model_state(merged).items():
        if k.endswith("memory.mask"):
            continue
        expected = anc[k] + sum(w * (model_state(p)[k] - anc[k]) for w, p in zip(weights, parents))
        assert torch.allclose(v, expected, rtol=0, atol=1e-14), k


def test_ties_with_density_1_and_agreeing_signs_is_task_arithmetic():
    ancestor = tiny_model(0).eval()
    g = torch.Generator().manual_seed(4)
    signs = {n: torch.sign(torch.randn(p.shape, generator=g, dtype=p.dtype)) for n, p in ancestor.named_parameters()}
    parents = []
    for _ in range(3):
        parent = copy.deepcopy(ancestor)
        with torch.no_grad():
            for n, p in parent.named_parameters():
                p.add_(signs[n] * (0.001 + 0.01 * torch.rand(p.shape, generator=g, dtype=p.dtype)))
        parents.append(parent)
    weights = (0.2, 0.3, 0.5)
    hyper = MergeHyper(ties_density=1.0, ties_lambda=1.0, weights=weights, layer_choice=(0, 0))
    merged = apply_merge_combo(parents, 1, ancestor=ancestor, hyper=hyper)   # ties_trim → ties_elect → franken
    assert combo_stages(1) == ("ties_trim", "ties_elect", "frankenmerge")
    arithmetic = linear_merge(*parents, ancestor=ancestor, weights=weights)
    assert _close_states(merged, arithmetic, atol=1e-14)


def test_linear_merge_without_an_ancestor_is_the_weighted_average(family):
    ancestor, parents = family
    avg = linear_merge(*parents, weights=(1.0, 1.0, 2.0))
    for k, v in model_state(avg).items():
        if not k.endswith("memory.mask"):
            expected = sum(w * model_state(p)[k] for w, p in zip((0.25, 0.25, 0.5), parents))
            assert torch.allclose(v, expected, rtol=0, atol=1e-14), k
    assert _mask_sum(avg, 0) == 16                                       # union of 16, 8, 12
    assert avg.config.act_threshold == pytest.approx(0.25 * 0.8 + 0.25 * 0.6 + 0.5 * 0.4)
    # equal weights: with or without the ancestor, the same model
    assert _close_states(linear_merge(parents), linear_merge(*parents, ancestor=ancestor), atol=1e-14)


def test_merge_is_linear_50_50_with_model_a_layer_plan(family):
    ancestor, parents = family
    a = apply_merge_combo(parents, 4, ancestor=ancestor)                  # a DFS model: it has a plan
    b = parents[1]
    out = merge(a, b)
    assert out.config.layer_plan == a.config.layer_plan is not None
    for k, v in model_state(out).items():
        if not k.endswith("memory.mask"):
            assert torch.allclose(v, 0.5 * model_state(a)[k] + 0.5 * model_state(b)[k], rtol=0, atol=1e-14)
    assert out.config.merge_recipe["method"] == "merge"


# -- generation 0 --

@pytest.mark.parametrize("num_layers", [1, 2])
def test_the_8_generation_0_models_differ_and_every_single_bit_flip_changes_the_hash(num_layers):
    ancestor, parents = make_family(num_layers)
    hashes = [model_hash(apply_merge_combo(parents, c, ancestor=ancestor)) for c in range(8)]
    assert len(set(hashes)) == 8
    for c in range(8):
        for bit in range(3):
            assert hashes[c] != hashes[c ^ (1 << bit)], (c, bit)
    # deterministic: the same inputs give the same model
    assert model_hash(apply_merge_combo(parents, 5, ancestor=ancestor)) == hashes[5]


def test_merging_does_not_touch_the_inputs_or_the_global_rng(family):
    ancestor, parents = family
    before = [model_hash(m) for m in (ancestor, *parents)]
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    apply_merge_combo(parents, 0, ancestor=ancestor)
    assert torch.equal(torch.rand(3), expected_next)
    assert [model_hash(m) for m in (ancestor, *parents)] == before


def test_every_merged_model_is_valid_and_loads_back_with_the_same_logits(family, tmp_path):
    ancestor, parents = family
    models = [apply_merge_combo(parents, c, ancestor=ancestor) for c in range(8)]
    models += [linear_merge(*parents), merge(parents[0], parents[2], ancestor=ancestor)]
    for i, m in enumerate(models):
        result = is_valid_model(m, fitness_batches())
        assert result and result.checks == ["finite", "forward", "save_load", "loss"], result
        assert math.log(48) - 1 < result.loss < math.log(48) + 1
        save_model(m, tmp_path / str(i))
        again = load_model(tmp_path / str(i)).eval()
        assert torch.equal(again(IDS).logits, m.eval()(IDS).logits)
        assert again.config.layer_plan == m.config.layer_plan
        assert again.config.merge_recipe == m.config.merge_recipe
        assert model_hash(again) == model_hash(m)


def test_the_merged_config_says_how_the_model_was_made(family):
    ancestor, parents = family
    hyper = MergeHyper(weights=(0.5, 0.25, 0.25), seed=3)
    m = apply_merge_combo(parents, 6, ancestor=ancestor, hyper=hyper)
    recipe = m.config.merge_recipe
    dumps_canonical(recipe)                                              # JSON, NaN-free
    assert recipe["combo_id"] == 6 and recipe["stages"] == ["dare", "slerp", "dfs"]
    assert recipe["hyper"]["seed"] == 3 and recipe["hyper"]["weights"] == [0.5, 0.25, 0.25]
    assert m.config.act_threshold == pytest.approx(0.5 * 0.8 + 0.25 * 0.6 + 0.25 * 0.4)
    assert m.config.active_ltm_slots == 16
    assert m.config.layer_plan is not None and len(m.config.layer_plan) == 3   # 2 layers + the repeat


# -- masks --

def test_masks_a_merged_layer_gets_the_union_a_copied_layer_its_source(family):
    ancestor, parents = family
    small = [with_capacity(copy.deepcopy(p), c, p.config.act_threshold) for p, c in zip(parents, (4, 8, 6))]
    # layer 0 from the merged model (union: 8), layer 1 copied whole from parent 3 (candidate 3: 6 slots)
    m = apply_merge_combo(small, 0, ancestor=ancestor, hyper=MergeHyper(layer_choice=(0, 3)))
    assert _mask_sum(m, 0) == 8 and _mask_sum(m, 1) == 6
    # DFS: slot 0 holds parent 1's layer 1 (4 slots), slot 1 the merged layer 0 (8 slots)
    m = apply_merge_combo(small, 4, ancestor=ancestor,
                          hyper=MergeHyper(dfs_steps=((1, 1, 1.0), (0, 0, 0.9), (1, 1, 0.8))))
    assert _mask_sum(m, 0) == 4 and _mask_sum(m, 1) == 8
    assert m.config.layer_plan == [[0, 1.0], [1, 0.9], [0, 0.8]]


# -- is_valid_model --

def test_is_valid_model_says_why_a_model_is_not_valid(family):
    ancestor, parents = family
    broken = copy.deepcopy(parents[0])
    with torch.no_grad():
        broken.net.layers[1].up.weight[0, 0] = float("nan")
    result = is_valid_model(broken)
    assert not result and "net.layers.1.up.weight" in result.reason
    loud = copy.deepcopy(parents[0])
    with torch.no_grad():
        loud.norm.weight.mul_(300.0)                                     # confident and wrong: huge loss
    result = is_valid_model(loud, fitness_batches())
    assert not result and "exceeds" in result.reason and result.loss > math.log(48) + 1
    assert not is_valid_model(parents[0], fitness_batches(), max_loss=0.1)
    assert is_valid_model(parents[0], fitness_batches())
    assert not is_valid_model(torch.nn.Linear(2, 2))


# -- model_hash --

def test_model_hash_is_the_identity_of_weights_and_function(family):
    ancestor, parents = family
    m = parents[0]
    assert model_hash(m) == model_hash(copy.deepcopy(m))
    changed = copy.deepcopy(m)
    with torch.no_grad():
        changed.net.layers[0].gate.bias[3] += 1e-12
    assert model_hash(changed) != model_hash(m)
    identity = copy.deepcopy(m)
    identity.config = TRMTitansMAGConfig.from_dict({**m.config.to_dict(), "layer_plan": [[0, 1.0], [1, 1.0]]})
    assert model_hash(identity) == model_hash(m)                         # the same function
    planned = copy.deepcopy(m)
    planned.config = TRMTitansMAGConfig.from_dict({**m.config.to_dict(), "layer_plan": [[0, 1.0], [1, 0.5]]})
    assert model_hash(planned) != model_hash(m)
    halting = copy.deepcopy(m)
    halting.config.act_threshold = 0.5
    assert model_hash(halting) != model_hash(m)
    recipe = copy.deepcopy(m)
    recipe.config.merge_recipe = {"note": "another way to the same weights"}
    assert model_hash(recipe) == model_hash(m)


# -- refusals --

@pytest.mark.parametrize("combo_id", [8, -1, True, 1.0, "3"])
def test_combo_id_outside_0_7_fails_naming_combo_id(family, combo_id):
    ancestor, parents = family
    with pytest.raises(InvalidSpecError) as info:
        apply_merge_combo(parents, combo_id, ancestor=ancestor)
    assert info.value.field == "combo_id"


def test_a_missing_ancestor_or_parent_fails_naming_it(family):
    ancestor, parents = family
    with pytest.raises(InvalidSpecError, match="ancestor") as info:
        apply_merge_combo(parents, 0)
    assert info.value.field == "ancestor"
    with pytest.raises(InvalidSpecError) as info:
        apply_merge_combo([parents[0], None, parents[2]], 0, ancestor=ancestor)
    assert info.value.field == "models[1]"
    with pytest.raises(InvalidSpecError) as info:
        apply_merge_combo([], 0, ancestor=ancestor)
    assert info.value.field == "models"


def test_parents_of_another_family_or_shape_fail_naming_what_differs(family):
    ancestor, parents = family
    with pytest.raises(InvalidSpecError, match="not a TRMTitansMAG") as info:
        apply_merge_combo([parents[0], torch.nn.Linear(2, 2)], 0, ancestor=ancestor)
    assert info.value.field == "models[1]"
    wide = tiny_model(5, hidden_dim=64)
    with pytest.raises(InvalidSpecError, match="hidden_dim") as info:
        apply_merge_combo([parents[0], wide], 0, ancestor=ancestor)
    assert info.value.field == "models[1].config.hidden_dim"
    with pytest.raises(InvalidSpecError) as info:
        linear_merge(parents[0], tiny_model(5, n_sup=4))
    assert info.value.field == "models[1].config.n_sup"
    with pytest.raises(InvalidSpecError) as info:
        apply_merge_combo(parents, 0, ancestor=tiny_model(5, num_layers=3))
    assert info.value.field == "ancestor.config.num_layers"


@pytest.mark.parametrize("kwargs,field", [
    ({"ties_density": 0.0}, "ties_density"), ({"ties_density": 1.5}, "ties_density"), ({"dare_p": 1.0}, "dare_p"),
    ({"dare_p": -0.5}, "dare_p"), ({"dare_p": True}, "dare_p"), ({"ties_lambda": 0.0}, "ties_lambda"),
    ({"weights": (1.0, -1.0, 1.0)}, "weights"), ({"weights": ("a",)}, "weights"),
    ({"layer_choice": "abcd"}, "layer_choice"),
    ({"dfs_steps": ()}, "dfs_steps"), ({"seed": 1.5}, "seed")])
def test_bad_hyperparameters_fail_naming_the_field(kwargs, field):
    with pytest.raises(InvalidSpecError) as info:
        MergeHyper(**kwargs)
    assert info.value.field == field


def test_hyperparameters_that_do_not_fit_the_parents_fail_naming_the_field(family):
    ancestor, parents = family
    for hyper, field in [(MergeHyper(weights=(1.0, 1.0)), "weights"),
                         (MergeHyper(layer_choice=(0, 4)), "layer_choice"),
                         (MergeHyper(layer_choice=(0, 1, 2)), "layer_choice"),
                         (MergeHyper(dfs_steps=((0, 0, 1.0), (1, 0, 1.0), (2, 0, 1.0))), "dfs_steps"),
                         (MergeHyper(dfs_steps=((0, 0, 1.0), (4, 0, 1.0))), "dfs_steps[1].source"),
                         (MergeHyper(dfs_steps=((0, 0, -1.0),)), "dfs_steps[0].scale")]:
        with pytest.raises(InvalidSpecError) as info:
            apply_merge_combo(parents, 4, ancestor=ancestor, hyper=hyper)
        assert info.value.field == field

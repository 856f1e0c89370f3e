"""The merge operators on state dicts: each one's defining property, its masks and its refusals."""

import copy
import math

import pytest
import torch

from services.evomerge.core.combos import build_model, model_state
from services.evomerge.core.merge import (add_task_vector, choose_by_fitness, dare, dfs, frankenmerge, identity_plan,
                                          layer_choice, linear, slerp, slerp_many, slerp_tensor, task_vectors,
                                          ties_elect, ties_trim)
from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAGConfig
from tests.model.helpers import tiny_model

MASK0, MASK1 = "net.layers.0.memory.mask", "net.layers.1.memory.mask"


def _state(seed: int, capacity: int | None = None, **overrides):
    model = tiny_model(seed, **overrides)
    if capacity is not None:
        for layer in model.net.layers:
            layer.memory.set_active_slots(capacity)
    return {k: v.clone() for k, v in model_state(model).items()}


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a, b, **tol) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **tol) for k in a)


def _synthetic(seed: int, n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"embed.weight": torch.randn(6, 5, generator=g, dtype=torch.float64),
             "net.layers.0.w": torch.randn(7, generator=g, dtype=torch.float64)} for _ in range(n)]


# -- task vectors --

def test_task_vectors_leave_out_masks_and_adding_one_back_gives_the_model():
    anc, a = _state(0), _state(1, capacity=8)
    (delta,) = task_vectors([a], anc)
    assert MASK0 not in delta and delta.keys() == {k for k in anc if not k.endswith("memory.mask")}
    assert torch.equal(delta["embed.weight"], a["embed.weight"] - anc["embed.weight"])
    back = add_task_vector(anc, delta, masks={k: a[k] for k in (MASK0, MASK1)})
    assert _close(back, a, rtol=0, atol=1e-15)
    assert torch.equal(add_task_vector(anc, delta)[MASK0], anc[MASK0])   # masks default to the ancestor's


def test_low_precision_inputs_are_combined_in_float32_and_cast_back():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([1.00390625, 3.0], dtype=torch.bfloat16)}   # bf16's step at 1.0 is 2^-7
    (delta,) = task_vectors([b], a)
    assert delta["w"].dtype == torch.float32
    out = linear([a, b], [0.5, 0.5])
    assert out["w"].dtype == torch.bfloat16
    assert slerp(a, b, 0.25)["w"].dtype == torch.bfloat16


# -- linear --

def test_linear_with_weights_1_0_gives_a_exactly_masks_included():
    a, b = _state(1, capacity=4), _state(2, capacity=12)
    assert _equal(linear([a, b], [1.0, 0.0]), a)
    assert _equal(linear([a, b], [0.0, 1.0]), b)


def test_linear_is_the_weighted_sum_and_does_not_normalise():
    a, b = _synthetic(0, 2)
    out = linear([a, b], [2.0, -0.5])
    for k in a:
        assert torch.allclose(out[k], 2 * a[k] - 0.5 * b[k], rtol=0, atol=1e-14)


# -- SLERP --

def test_slerp_at_t_0_and_1_gives_the_endpoints_exactly():
    a, b = _state(1, capacity=4), _state(2, capacity=12)
    assert _equal(slerp(a, b, 0.0), a)
    assert _equal(slerp(a, b, 1.0), b)


def test_slerp_moves_along_the_great_circle():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    b = b / b.norm() * a.norm()                               # equal norms: the path stays on the sphere
    omega = torch.arccos(torch.dot(a, b) / (a.norm() * b.norm()))
    for t in (0.1, 0.5, 0.9):
        r = slerp_tensor(a, b, t)
        assert torch.allclose(r.norm(), a.norm(), atol=1e-12)
        angle = torch.arccos(torch.clamp(torch.dot(r, a) / (r.norm() * a.norm()), -1, 1))
        assert torch.allclose(angle, t * omega, atol=1e-9)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp_tensor(e1, e2, 0.5), torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]))


@pytest.mark.parametrize("b_of_a", [lambda a: 2 * a, lambda a: -a, lambda a: a + 1e-9 * torch.ones_like(a)])
def test_slerp_falls_back_to_lerp_when_nearly_colinear(b_of_a):
    a = torch.linspace(-1, 1, 10, dtype=torch.float64)
    b = b_of_a(a)
    assert torch.equal(slerp_tensor(a, b, 0.3), torch.lerp(a, b, 0.3))


def test_slerp_falls_back_to_lerp_when_a_norm_is_zero():
    a, b = torch.zeros(5, dtype=torch.float64), torch.arange(5, dtype=torch.float64)
    assert torch.equal(slerp_tensor(a, b, 0.4), torch.lerp(a, b, 0.4))
    assert torch.equal(slerp_tensor(b, a, 0.4), torch.lerp(b, a, 0.4))


def test_slerp_of_many_is_pairwise_in_order_with_t_i_one_over_i():
    m1, m2, m3 = _synthetic(3)
    manual = slerp(slerp(m1, m2, 1 / 2), m3, 1 / 3)
    assert _equal(slerp_many([m1, m2, m3]), manual)
    # weighted: t_i = w_i / Σ_{j≤i} w_j; a zero weight drops the model
    assert _equal(slerp_many([m1, m2, m3], [1.0, 3.0, 0.0]), slerp(m1, m2, 0.75))
    # colinear inputs: slerp is lerp, and the chain is the (weighted) mean
    c = [{k: s * v for k, v in m1.items()} for s in (1.0, 2.0, 4.0)]
    mean = {k: (1.0 + 2.0 + 4.0) / 3 * v for k, v in m1.items()}
    assert _close(slerp_many(c), mean, rtol=1e-12, atol=0)


# -- DARE --

def test_dare_with_p_0_is_the_identity():
    (delta,) = task_vectors([_state(1)], _state(0))
    assert _equal(dare(delta, 0.0, torch.Generator().manual_seed(0)), delta)


def test_dare_is_seeded_and_keeps_entries_rescaled_by_one_over_one_minus_p():
    delta = _synthetic(1, 1)[0]
    p = 0.4
    out = dare(delta, p, torch.Generator().manual_seed(5))
    assert _equal(out, dare(delta, p, torch.Generator().manual_seed(5)))
    assert not _equal(out, dare(delta, p, torch.Generator().manual_seed(6)))
    for k in delta:
        kept = out[k] != 0
        assert torch.allclose(out[k][kept], delta[k][kept] / (1 - p), rtol=1e-15, atol=0)


def test_dare_drops_a_fraction_p_and_is_unbiased_with_the_predicted_variance():
    """E[δ̂_e] = δ_e and Var[δ̂_e] = δ_e² p / (1 − p): over N seeds the per-entry mean has standard error
    σ_e = |δ_e| √(p / ((1 − p) N)). Every z_e = (mean_e − δ_e) / σ_e must lie within 5 (≈ 6e-7 two-sided per
    entry, ~1e-4 over the 170 entries), and mean z² — a χ²_n/n with sd √(2/n) ≈ 0.11 — within 1 ± 0.5,
    which also checks the variance. The kept fraction is Binomial(n·N, 1 − p): within 5 of its sd."""
    g0 = torch.Generator().manual_seed(0)
    delta = {"a": torch.randn(10, 10, generator=g0, dtype=torch.float64) + 0.1,
             "b": torch.randn(70, generator=g0, dtype=torch.float64) + 0.1}
    p, n_seeds = 0.5, 4000
    total = {k: torch.zeros_like(v) for k, v in delta.items()}
    kept = 0
    g = torch.Generator().manual_seed(123)
    for _ in range(n_seeds):
        out = dare(delta, p, g)
        for k in delta:
            total[k] += out[k]
            kept += int((out[k] != 0).sum())
    n_entries = sum(v.numel() for v in delta.values())
    z = torch.cat([((total[k] / n_seeds - delta[k]) / (delta[k].abs() * math.sqrt(p / ((1 - p) * n_seeds))))
                   .reshape(-1) for k in delta])
    assert z.abs().max() < 5
    assert 0.5 < float((z ** 2).mean()) < 1.5
    trials = n_entries * n_seeds
    assert abs(kept - trials * (1 - p)) < 5 * math.sqrt(trials * p * (1 - p))


# -- TIES --

def test_ties_trim_keeps_the_top_density_by_magnitude():
    g = torch.Generator().manual_seed(0)
    delta = {"w": torch.randn(10, 10, generator=g, dtype=torch.float64), "v": torch.randn(7, generator=g)}
    out = ties_trim(delta, 0.25)
    for k, d in delta.items():
        keep = math.ceil(0.25 * d.numel())
        assert int((out[k] != 0).sum()) == keep
        smallest_kept = out[k][out[k] != 0].abs().min()
        assert (d.abs()[out[k] == 0] < smallest_kept).all()
        assert torch.equal(out[k][out[k] != 0], d[out[k] != 0])
    assert _equal(ties_trim(delta, 1.0), delta)


def test_ties_with_density_1_and_agreeing_signs_is_task_arithmetic():
    g = torch.Generator().manual_seed(1)
    sign = torch.sign(torch.randn(8, 9, generator=g, dtype=torch.float64))
    deltas = [{"w": sign * (torch.rand(8, 9, generator=g, dtype=torch.float64) + 0.1)} for _ in range(3)]
    weights = [0.5, 0.3, 0.2]                                  # sum 1: the disjoint mean is Σ w_i δ_i
    trimmed = [ties_trim(d, 1.0) for d in deltas]
    assert torch.allclose(ties_elect(trimmed, weights)["w"], sum(w * d["w"] for w, d in zip(weights, deltas)),
                          rtol=1e-13, atol=0)


def test_ties_elect_takes_the_disjoint_mean_of_the_agreeing_models():
    deltas = [{"w": torch.tensor([2.0, -3.0, 1.0, 0.0])},
              {"w": torch.tensor([-1.0, 1.0, -1.0, 0.0])},
              {"w": torch.tensor([1.0, 1.0, 0.0, 0.0])}]
    out = ties_elect(deltas, [1.0, 1.0, 1.0])["w"]
    # entry 0: sum +2 → mean of {2, 1}; entry 1: sum −1 → {−3}; entry 2: sum 0 → 0; entry 3: nothing → 0
    assert torch.equal(out, torch.tensor([1.5, -3.0, 0.0, 0.0]))
    # weights tilt both the election and the mean: entry 2 now elects −
    out = ties_elect(deltas, [1.0, 2.0, 1.0])["w"]
    assert out[2] == -1.0 and torch.isclose(out[0], torch.tensor((2.0 + 1.0) / 2))


# -- FrankenMerge --

def test_frankenmerge_all_from_a_gives_a():
    a, b, c = _state(1, capacity=4), _state(2), _state(3)
    assert _equal(frankenmerge([a, b, c], [0, 0]), a)


def test_frankenmerge_takes_each_layer_whole_and_the_rest_from_the_base():
    a, b = _state(1, capacity=4), _state(2, capacity=12)
    out = frankenmerge([a, b], [1, 0], base=0)
    for k, v in out.items():
        source = b if k.startswith("net.layers.0.") else a
        assert torch.equal(v, source[k]), k
    assert out[MASK0].sum() == 12 and out[MASK1].sum() == 4     # a copied layer keeps its source's mask


def test_layer_choice_patterns():
    assert layer_choice("abc", 7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert layer_choice("abba", 8, 2) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert layer_choice("abba", 7, 3) == [0, 1, 2, 2, 1, 0, 0]
    r = layer_choice("random", 50, 4, seed=3)
    assert r == layer_choice("random", 50, 4, seed=3) != layer_choice("random", 50, 4, seed=4)
    assert set(r) == {0, 1, 2, 3}
    assert layer_choice([2, 0, 1], 3, 3) == [2, 0, 1]
    assert choose_by_fitness([[0.1, 0.5, 0.2], [0.9, 0.1, 0.9]]) == [1, 0]
    for bad in ("abcd", [0, 1], [0, 5, 1]):
        with pytest.raises(InvalidSpecError, match="pattern"):
            layer_choice(bad, 3, 3)


# -- DFS --

def test_dfs_puts_each_distinct_pair_in_a_slot_and_returns_the_path_as_a_plan():
    a, b = _state(1, num_layers=3), _state(2, num_layers=3)
    steps = [(1, 2, 1.0), (0, 0, 0.5), (1, 2, 1.25), (0, 1, 1.0)]
    out, plan = dfs([a, b], steps)
    assert plan == [[0, 1.0], [1, 0.5], [0, 1.25], [2, 1.0]]
    for k, v in out.items():
        if k.startswith("net.layers.0."):
            assert torch.equal(v, b[k.replace("layers.0.", "layers.2.")]), k
        elif k.startswith("net.layers.1."):
            assert torch.equal(v, a[k.replace("layers.1.", "layers.0.")]), k
        elif k.startswith("net.layers.2."):
            assert torch.equal(v, a[k.replace("layers.2.", "layers.1.")]), k
        else:
            assert torch.equal(v, a[k]), k
    # an unused slot keeps the base's layer
    out, plan = dfs([a, b], [(1, 1, 1.0), (1, 1, 0.7)], base=0)
    assert plan == [[0, 1.0], [0, 0.7]]
    assert torch.equal(out["net.layers.2.up.weight"], a["net.layers.2.up.weight"])
    # the identity path from one model is that model
    out, plan = dfs([a, b], [(0, i, 1.0) for i in range(3)])
    assert _equal(out, a) and plan == identity_plan(3)


def test_dfs_refuses_a_path_that_needs_more_slots_than_the_net_has():
    a, b = _state(1), _state(2)
    with pytest.raises(InvalidSpecError, match="3 distinct .* only 2 layer slots") as info:
        dfs([a, b], [(0, 0, 1.0), (1, 0, 1.0), (0, 1, 1.0)])
    assert info.value.field == "steps"
    for bad, field in [([(2, 0, 1.0)], "steps[0].source"), ([(0, 2, 1.0)], "steps[0].layer"),
                       ([(0, 0, 0.0)], "steps[0].scale"), ([(0, 0, math.nan)], "steps[0].scale"),
                       ([], "steps"), ([(0, 0, 1.0)] * 9, "steps")]:
        with pytest.raises(InvalidSpecError) as info:
            dfs([a, b], bad)
        assert info.value.field == field


def test_dfs_output_is_the_composition_of_the_named_layers_and_differs_from_frankenmerge():
    ma, mb = tiny_model(1, num_layers=3).eval(), tiny_model(2, num_layers=3).eval()
    a, b = model_state(ma), model_state(mb)
    steps = [(1, 2, 1.0), (0, 0, 0.5), (1, 2, 1.25), (0, 1, 1.0)]
    state, plan = dfs([a, b], steps)
    cfg = TRMTitansMAGConfig.from_dict({**ma.config.to_dict(), "layer_plan": plan})
    merged = build_model(ma, state, cfg).eval()
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    manual = x
    for source, layer, scale in steps:
        manual = (ma, mb)[source].net.layers[layer](scale * manual)
    assert torch.equal(merged.net(x, merged.config.layer_plan), manual)
    # the same weights without the path: a FrankenMerge; the functions differ
    franken = build_model(ma, state, copy.deepcopy(ma.config)).eval()
    ids = torch.randint(0, 48, (1, 10), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(merged(ids).logits, franken(ids).logits)


# -- masks --

def test_a_combined_layer_gets_the_union_of_its_sources_masks():
    a, b = _state(1, capacity=4), _state(2, capacity=12)
    for out in (linear([a, b], [0.5, 0.5]), slerp(a, b, 0.5), slerp_many([a, b]), ties_elect([a, b], [1, 1])):
        assert torch.equal(out[MASK0], b[MASK0]) and out[MASK0].sum() == 12   # max(4 ones, 12 ones) = 12 ones
    (d,) = task_vectors([a], b)
    assert MASK0 not in d
    with_mask = {**d, MASK0: a[MASK0]}
    assert torch.equal(dare(with_mask, 0.5, torch.Generator().manual_seed(0))[MASK0], a[MASK0])
    assert torch.equal(ties_trim(with_mask, 0.2)[MASK0], a[MASK0])


# -- refusals --

def test_mismatched_states_fail_naming_what_differs():
    a, b = _state(1), _state(2)
    missing = {k: v for k, v in b.items() if k != "norm.weight"}
    with pytest.raises(InvalidSpecError, match="norm.weight") as info:
        linear([a, missing], [0.5, 0.5])
    assert info.value.field == "tensors[1]"
    wide = {**b, "norm.weight": torch.ones(64, dtype=torch.float64)}
    with pytest.raises(InvalidSpecError, match=r"'norm.weight' has shape \(64,\), but \(32,\) in a") as info:
        slerp(a, wide, 0.5)
    assert info.value.field == "b"
    with pytest.raises(InvalidSpecError, match="3 weights for 2 models") as info:
        linear([a, b], [1, 1, 1])
    assert info.value.field == "weights"
    with pytest.raises(InvalidSpecError) as info:
        task_vectors([a], wide)
    assert info.value.field == "states[0]"
    with pytest.raises(InvalidSpecError, match="choice"):
        frankenmerge([a, b], [0])
    with pytest.raises(InvalidSpecError) as info:
        frankenmerge([a, b], [0, 2])
    assert info.value.field == "choice[1]"


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1, math.nan])
def test_ties_density_outside_0_1_fails_naming_density(density):
    with pytest.raises(InvalidSpecError, match="density") as info:
        ties_trim({"w": torch.ones(3)}, density)
    assert info.value.field == "density"


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, math.nan])
def test_dare_p_outside_0_1_fails_naming_p(p):
    with pytest.raises(InvalidSpecError) as info:
        dare({"w": torch.ones(3)}, p, torch.Generator())
    assert info.value.field == "p"


@pytest.mark.parametrize("t", [-0.1, 1.1, math.inf])
def test_slerp_t_outside_0_1_fails_naming_t(t):
    with pytest.raises(InvalidSpecError) as info:
        slerp({"w": torch.ones(3)}, {"w": torch.zeros(3)}, t)
    assert info.value.field == "t"

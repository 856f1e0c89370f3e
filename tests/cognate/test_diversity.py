"""Cognate model metrics, diversity figures, the diversity check and the loss barrier, on tiny CPU models."""

import copy

import pytest
import torch
import torch.nn.functional as F

from services.cognate.core.diversity import (DIVERSITY_COLUMNS, InsufficientDiversityError, compute_diversity,
                                             diversity_table, halting_diversity, loss_barrier, memory_diversity,
                                             validate_diversity)
from services.cognate.core.model_metrics import (compute_per_token, flops_per_step, ltm_usage, mean_halting_steps,
                                                 measure_inference_time, profile_model, validation_nll)
from shared.errors import AgentForgeError
from tests.model.helpers import tiny_model

SEQ = 8


def make_batches(n=1, b=3, seq=SEQ, vocab=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, seq + 1), generator=g)
        labels = ids[:, 1:].clone()
        labels[:, :3] = -100                      # unscored prompt tokens, as packed Phase-1 batches have
        out.append({"input_ids": ids[:, :-1], "labels": labels})
    return out


def variant(model, active_slots=None, act_threshold=None):
    """A copy with another capacity (mask, as the runner sets it) and/or halting threshold, same weights."""
    m = copy.deepcopy(model)
    if active_slots is not None:
        for layer in m.net.layers:
            layer.memory.set_active_slots(active_slots)
        m.config.active_ltm_slots = max(active_slots, 1)
    if act_threshold is not None:
        m.config.act_threshold = act_threshold
    return m


def reference_nll(model, batches):
    """Independent of the module: eval forward, cross-entropy of already-shifted labels."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"]).logits
            total += F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="sum").item()
            count += int((b["labels"] != -100).sum())
    return total / count


@pytest.fixture(scope="module")
def batches():
    return make_batches()


@pytest.fixture(scope="module")
def base():
    return tiny_model(0, ltm_slots=32, active_ltm_slots=16)


def test_halting_steps_grow_with_threshold(base, batches):
    thresholds = [0.2, 0.5, 0.8, 0.99, 1.0]
    steps = [mean_halting_steps(variant(base, act_threshold=t), batches) for t in thresholds]
    assert all(a <= b for a, b in zip(steps, steps[1:])), steps
    assert 1.0 <= steps[0] < steps[-1] and steps[-1] == base.config.n_sup      # 1.0 never halts early
    fast, slow = variant(base, act_threshold=0.2), variant(base, act_threshold=0.99)
    assert halting_diversity([fast, slow], batches) == pytest.approx(steps[3] - steps[0]) and steps[3] > steps[0]
    assert halting_diversity([slow, copy.deepcopy(slow), slow], batches) == 0.0


def test_compute_is_steps_times_flops_per_step(base, batches):
    per_step = flops_per_step(base, SEQ)
    assert per_step > 0
    for t in (0.2, 0.6, 0.99):
        p = profile_model(variant(base, act_threshold=t), batches)
        assert p.compute_per_token / p.halting_steps == pytest.approx(per_step, rel=1e-6)
    # cost of one step scales with depth: 3 layers vs 2, and t_cycles·(n+1) net calls: 3·3 vs 2·3
    two = tiny_model(0, act_threshold=1.0)
    assert compute_per_token(tiny_model(0, act_threshold=1.0, num_layers=3), batches) / \
        compute_per_token(two, batches) == pytest.approx(1.5, rel=1e-9)
    deeper = copy.deepcopy(two)
    deeper.config.t_cycles = 3
    assert compute_per_token(deeper, batches) / compute_per_token(two, batches) == pytest.approx(1.5, rel=1e-9)
    # only the active memory units are computed: a smaller capacity costs fewer FLOPs per step
    assert flops_per_step(variant(base, active_slots=4), SEQ) < per_step
    fast, slow = variant(base, act_threshold=0.2), variant(base, act_threshold=1.0)
    c_fast, c_slow = compute_per_token(fast, batches), compute_per_token(slow, batches)
    assert compute_diversity([fast, slow], batches) == pytest.approx((c_slow - c_fast) / c_slow)
    assert compute_diversity([slow, slow], batches) == 0.0


def test_ltm_usage_counts_active_units_that_fire(base, batches):
    assert ltm_usage(variant(base, active_slots=0), batches) == 0.0
    usage = [ltm_usage(variant(base, active_slots=n), batches) for n in (4, 8, 16, 32)]
    assert all(a < b for a, b in zip(usage, usage[1:])), usage
    assert all(u <= n / 32 for u, n in zip(usage, (4, 8, 16, 32)))           # never more than the active share
    # a unit whose read weights are zero never fires (silu(0) = 0): usage counts activity, not the mask
    silent = variant(base, active_slots=16)
    with torch.no_grad():
        for layer in silent.net.layers:
            layer.memory.w1_init[:8] = 0.0
    assert ltm_usage(silent, batches) == pytest.approx(usage[2] - 8 / 32)
    small, large = variant(base, active_slots=8), variant(base, active_slots=32)
    assert memory_diversity([large, copy.deepcopy(large)], batches) == 0.0
    d = memory_diversity([small, large], batches)
    assert d == pytest.approx(1 - usage[1] / usage[3]) and 0.5 < d <= 1.0


def test_validate_diversity(base, batches):
    same = [variant(base, active_slots=16, act_threshold=0.6) for _ in range(3)]
    with pytest.raises(InsufficientDiversityError, match=r"memory_diversity = 0\.0000.*compute_diversity.*0\.3") as e:
        validate_diversity(*same, batches=batches)
    assert isinstance(e.value, AgentForgeError) and e.value.failed == ["memory_diversity", "compute_diversity"]
    out = validate_diversity(variant(base, active_slots=4, act_threshold=0.2),
                             variant(base, active_slots=32, act_threshold=1.0),
                             variant(base, active_slots=16, act_threshold=0.6), batches=batches)
    assert out["memory_diversity"] >= 0.3 and out["compute_diversity"] >= 0.3 and out["halting_diversity"] > 0
    assert [m["ltm_usage"] for m in out["models"]][0] < out["models"][1]["ltm_usage"]
    # one distinct axis is enough (the documented rule): capacity differs, halting does not
    one_axis = [variant(base, active_slots=n, act_threshold=1.0) for n in (4, 16, 32)]
    out = validate_diversity(*one_axis, batches=batches)
    assert out["memory_diversity"] >= 0.3 > out["compute_diversity"]


def test_loss_barrier(batches):
    a = variant(tiny_model(0, ltm_slots=32), active_slots=8, act_threshold=0.5)
    b = variant(tiny_model(1, ltm_slots=32), active_slots=32, act_threshold=0.9)
    before = [(copy.deepcopy(m.state_dict()), m.config.act_threshold) for m in (a, b)]
    out = loss_barrier(a, b, batches, points=3)
    assert out["t"] == [0.0, 0.5, 1.0]
    assert out["losses"][0] == pytest.approx(reference_nll(a, batches), abs=1e-9)
    assert out["losses"][-1] == pytest.approx(reference_nll(b, batches), abs=1e-9)
    # the midpoint is the averaged weights with model_b's buffers and threshold (t >= 0.5)
    mid = copy.deepcopy(b)
    with torch.no_grad():
        for (_, p), (_, pa) in zip(mid.named_parameters(), a.named_parameters(), strict=True):
            p.copy_((p + pa) / 2)
    assert out["losses"][1] == pytest.approx(reference_nll(mid, batches), abs=1e-9)
    line = (out["losses"][0] + out["losses"][2]) / 2
    assert out["barrier"] == pytest.approx(max(0.0, out["losses"][1] - line), abs=1e-12)
    for m, (state, threshold) in zip((a, b), before, strict=True):
        assert m.config.act_threshold == threshold
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    # endpoints measured elsewhere (the job's profiles) give the same line without re-running them
    reused = loss_barrier(a, b, batches, points=3, endpoint_losses=(profile_model(a, batches).nll,
                                                                     profile_model(b, batches).nll))
    assert reused["losses"] == pytest.approx(out["losses"], abs=1e-12)
    self_line = loss_barrier(a, a, batches, points=5)
    assert abs(self_line["barrier"]) < 1e-6 and max(self_line["losses"]) - min(self_line["losses"]) < 1e-9


def test_profile_is_deterministic_and_restores_modes(base, batches):
    m = variant(base)
    m.train()
    m.net.layers[0].eval()            # a mixed state must come back as it was
    first, second = profile_model(m, batches), profile_model(m, batches)
    assert first == second
    assert m.training and not m.net.layers[0].training and m.net.layers[1].training
    assert torch.is_grad_enabled()
    assert first.nll == pytest.approx(validation_nll(m, batches)) == pytest.approx(reference_nll(m, batches))
    m.train()                         # reference_nll left it in eval mode
    assert measure_inference_time(m, batches, repeats=1) > 0 and m.training


def test_diversity_table(base, batches):
    models = {"reasoning": variant(base, 16, 0.99), "memory": variant(base, 32, 0.8), "speed": variant(base, 8, 0.2)}
    columns, rows = diversity_table(models, batches)
    assert columns == DIVERSITY_COLUMNS and [r[0] for r in rows] == list(models)
    by_name = {r[0]: dict(zip(columns, r, strict=True)) for r in rows}
    assert by_name["memory"]["active_ltm_slots"] == 32 and by_name["speed"]["act_threshold"] == 0.2
    assert by_name["speed"]["mean_halting_steps"] < by_name["reasoning"]["mean_halting_steps"]
    assert by_name["speed"]["ltm_usage"] < by_name["memory"]["ltm_usage"]

"""The layer plan (config.layer_plan): the path one call of the shared net takes through its MAG blocks, as
DFS merging evolves it. None is today's net exactly; a plan is x = layers[slot](scale · x) per step."""

import copy
import math

import pytest
import torch

from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAG, TRMTitansMAGConfig, load_model, save_model
from tests.model.helpers import tiny_config, tiny_model

IDS = torch.randint(0, 48, (2, 11), generator=torch.Generator().manual_seed(3))


def _with_plan(model: TRMTitansMAG, plan) -> TRMTitansMAG:
    """The same weights under another plan (a config built by the constructor, so the plan is validated)."""
    clone = copy.deepcopy(model)
    clone.config = TRMTitansMAGConfig.from_dict({**model.config.to_dict(), "layer_plan": plan})
    return clone.eval()


def test_no_plan_equals_the_identity_plan_bit_for_bit():
    model = tiny_model(num_layers=3).eval()
    identity = _with_plan(model, [[i, 1.0] for i in range(3)])
    assert model.config.layer_plan is None
    assert torch.equal(model(IDS).logits, identity(IDS).logits)
    x = model.embed(IDS)
    assert torch.equal(model.net(x), model.net(x, [[0, 1.0], [1, 1.0], [2, 1.0]]))


def test_a_plan_is_the_composition_of_the_named_blocks_with_their_scales():
    model = tiny_model(num_layers=3).eval()
    plan = [[2, 1.0], [0, 0.7], [2, 1.3], [1, 1.0], [0, 0.5]]
    x = model.embed(IDS) + model.z_init
    manual = x
    for slot, scale in plan:
        manual = model.net.layers[slot](scale * manual)
    assert torch.equal(model.net(x, plan), manual)
    # and the whole model calls the net along the plan on every recursion pass
    planned = _with_plan(model, plan)
    calls = []
    original = planned.net.forward

    def spy(h, p=None):
        calls.append(p)
        return original(h, p)

    planned.net.forward = spy
    out = planned(IDS).logits
    assert calls and all(p == plan for p in calls)
    assert not torch.allclose(out, model(IDS).logits)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_causality_holds_with_a_plan(mode):
    model = _with_plan(tiny_model(), [[1, 0.8], [0, 1.0], [1, 1.2]])
    model.train(mode == "train")
    for t in (0, 4, 9):
        changed = IDS.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 5) % 48
        a, b = model(IDS).logits, model(changed).logits
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), f"future token leaked into position {t}"
        assert not torch.equal(a[:, t + 1:], b[:, t + 1:])


def test_the_plan_survives_save_load_and_deepcopy(tmp_path):
    plan = [[1, 0.75], [0, 1.0], [1, 1.0], [0, 0.3333333333333333]]
    model = _with_plan(tiny_model().float(), plan)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    assert again.config.layer_plan == plan
    assert torch.equal(again(IDS).logits, model(IDS).logits)
    clone = copy.deepcopy(model)
    assert clone.config.layer_plan == plan
    assert torch.equal(clone(IDS).logits, model(IDS).logits)


def test_tuples_are_stored_as_json_lists():
    cfg = tiny_config(layer_plan=((0, 1), (1, 2)))
    assert cfg.layer_plan == [[0, 1.0], [1, 2.0]]
    assert isinstance(cfg.layer_plan[0][1], float)


@pytest.mark.parametrize("plan", [
    [[2, 1.0]],                   # slot out of range (2 layers)
    [[-1, 1.0]],                  # negative slot
    [[0, 0.0]],                   # scale 0
    [[0, -1.0]],                  # negative scale
    [[0, math.nan]],              # NaN scale
    [[0, math.inf]],              # infinite scale
    [],                           # empty
    [[0, 1.0]] * 9,               # longer than 4 × num_layers
    [[0, 1.0, 2.0]],              # not a pair
    [[0.5, 1.0]],                 # slot not an integer
    [[True, 1.0]],                # a bool is not a slot
    "0,1",                        # not a list
])
def test_bad_plans_fail_naming_layer_plan(plan):
    with pytest.raises(InvalidSpecError, match="layer_plan") as info:
        tiny_config(layer_plan=plan)
    assert info.value.field == "layer_plan"

"""state_dict round trips through the project's safetensors+JSON format and resumes bit-for-bit."""

from __future__ import annotations

import json

import pytest
import torch

from shared.errors import InvalidSpecError
from shared.optim import MuonGrokfast
from shared.storage.formats import (
    optimizer_state_bytes,
    optimizer_state_from_bytes,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
)
from tests.optim.standins import StandInLM, lm_loss

SETTINGS = {"muon_lr": 2e-2, "adamw_lr": 5e-3, "weight_decay": 0.05, "grokfast_alpha": 0.9,
            "grokfast_lambda": 0.5, "qk_clip_threshold": 2.0, "max_grad_norm": 1.0}


def _train(model: StandInLM, opt: MuonGrokfast, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        lm_loss(model, seed=step).backward()
        opt.step()


def _through_tensors(state: dict) -> dict:
    tensors, meta = optimizer_state_to_tensors(state)
    stored = {k: v.clone() for k, v in tensors.items()}  # what a file would give back
    return optimizer_state_from_tensors(stored, json.loads(json.dumps(meta)))


def _through_bytes(state: dict) -> dict:
    return optimizer_state_from_bytes(optimizer_state_bytes(state))


@pytest.mark.parametrize("codec", [_through_tensors, _through_bytes])
def test_resume_from_stored_state_is_bit_identical(codec):
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.parameters(), qk_modules=[model.attn], **SETTINGS)
    _train(model, opt, range(3))

    state = codec(opt.state_dict())
    # A fresh model loaded in place, not copy.deepcopy: Parameter.__deepcopy__ drops the af_role tags.
    resumed_model = StandInLM()
    resumed_model.load_state_dict(model.state_dict())
    resumed = MuonGrokfast(resumed_model.parameters(), qk_modules=[resumed_model.attn], **SETTINGS)
    resumed.load_state_dict(state)

    _train(model, opt, range(3, 5))
    _train(resumed_model, resumed, range(3, 5))
    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name
    a, b = opt.state_dict()["state"], resumed.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        assert all(torch.equal(a[i][k], b[i][k]) for k in a[i]), i


def test_state_holds_the_ema_and_both_optimizers_state():
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.named_parameters(), **SETTINGS)
    _train(model, opt, range(2))
    state = opt.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    for group in opt.param_groups:
        want = {"grokfast_ema", "momentum_buffer"} if group["algorithm"] == "muon" else {
            "grokfast_ema", "step", "exp_avg", "exp_avg_sq"}
        for p in group["params"]:
            assert set(state["state"][index[id(p)]]) == want, group["role"]
    assert {g["role"] for g in state["param_groups"]} >= {"muon", "embedding", "head"}


def test_scheduler_lr_edits_reach_the_sub_optimizers_after_a_load():
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.parameters(), **SETTINGS)
    _train(model, opt, range(2))
    opt.load_state_dict(_through_tensors(opt.state_dict()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)
    assert all(g["lr"] == 0.0 for g in opt._muon.param_groups + opt._adamw.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, range(2, 3))
    scheduler.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_state_from_a_different_layout_is_refused():
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.parameters())
    _train(model, opt, range(1))
    state = opt.state_dict()
    state["param_groups"][0] = {**state["param_groups"][0], "role": "norm"}
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast(StandInLM().parameters()).load_state_dict(state)
    assert err.value.field == "state_dict.param_groups[0]"

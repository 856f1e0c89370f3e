"""Bad hyperparameters raise InvalidSpecError naming the argument; presets and config wiring."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shared.config.schema import OptimizerConfig
from shared.errors import InvalidSpecError
from shared.optim import MuonGrokfast
from tests.optim.standins import StandInLM, tag


def _params():
    return [tag(nn.Parameter(torch.randn(4, 4)), "muon"), tag(nn.Parameter(torch.randn(4)), "norm")]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"muon_lr": 0.0}, "muon_lr"),
    ({"muon_lr": -1e-3}, "muon_lr"),
    ({"muon_lr": math.nan}, "muon_lr"),
    ({"adamw_lr": 0.0}, "adamw_lr"),
    ({"grokfast_lambda": -0.1}, "grokfast_lambda"),
    ({"grokfast_alpha": 1.0}, "grokfast_alpha"),
    ({"grokfast_alpha": -0.01}, "grokfast_alpha"),
    ({"qk_clip_threshold": 0.0}, "qk_clip_threshold"),
    ({"qk_clip_threshold": -30.0}, "qk_clip_threshold"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"kl_coefficient": -0.1}, "kl_coefficient"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"eps": 0.0}, "eps"),
    ({"betas": (0.9, 1.0)}, "betas"),
    ({"momentum": 1.0}, "momentum"),
    ({"ns_steps": 0}, "ns_steps"),
    ({"qk_modules": [object()]}, "qk_modules"),
])
def test_bad_values_name_the_argument(kwargs, field):
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast(_params(), **kwargs)
    assert err.value.field == field
    assert str(err.value).startswith(field)


@pytest.mark.parametrize("params", [[], iter(()), torch.randn(3, requires_grad=True)])
def test_empty_or_bare_params_name_params(params):
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast(params)
    assert err.value.field == "params"


def test_group_override_errors_name_the_group():
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast([{"params": _params(), "grokfast_lambda": -1.0}])
    assert err.value.field == "params[0].grokfast_lambda"


def test_checklist_constructor_and_kl_is_carried_only():
    model = StandInLM()
    opt = MuonGrokfast(model.parameters(), muon_lr=1e-3, grokfast_lambda=0.3, qk_clip_threshold=30.0,
                       kl_coefficient=0.0)
    assert opt.kl_coefficient == 0.0 and opt.qk_clip_threshold == 30.0
    assert {g["lr"] for g in opt.param_groups} == {1e-3}  # adamw_lr defaults to muon_lr


@pytest.mark.parametrize(("preset", "lr", "lam", "tau", "kl"), [
    ("phase1", 1e-3, 0.3, 30.0, 0.0),
    ("baking", 1e-4, 0.2, 30.0, 0.0),
    ("rl", 5e-4, 0.1, 25.0, 0.1),
])
def test_presets(preset, lr, lam, tau, kl):
    opt = getattr(MuonGrokfast, preset)(_params())
    assert {g["lr"] for g in opt.param_groups} == {lr}
    assert {g["grokfast_lambda"] for g in opt.param_groups} == {lam}
    assert (opt.qk_clip_threshold, opt.kl_coefficient) == (tau, kl)
    overridden = getattr(MuonGrokfast, preset)(_params(), adamw_lr=7e-4, max_grad_norm=1.0)
    assert {(g["algorithm"], g["lr"]) for g in overridden.param_groups} == {("muon", lr), ("adamw", 7e-4)}
    assert overridden.max_grad_norm == 1.0


def test_from_config():
    cfg = OptimizerConfig(muon_lr=5e-4, adamw_lr=2e-4, weight_decay=0.01, grokfast_alpha=0.95,
                          grokfast_lambda=0.1, qk_clip_threshold=25.0, kl_coefficient=0.1)
    opt = MuonGrokfast.from_config(_params(), cfg, max_grad_norm=1.0)
    assert {(g["algorithm"], g["lr"]) for g in opt.param_groups} == {("muon", 5e-4), ("adamw", 2e-4)}
    assert {(g["weight_decay"], g["grokfast_alpha"], g["grokfast_lambda"]) for g in opt.param_groups} == {
        (0.01, 0.95, 0.1)}
    assert (opt.qk_clip_threshold, opt.kl_coefficient, opt.max_grad_norm) == (25.0, 0.1, 1.0)

"""Parameters reach Muon or AdamW by their af_role tag, never by their shape."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from shared.errors import InvalidSpecError
from shared.optim import MuonGrokfast, param_groups_report
from tests.optim.standins import StandInLM, tag


def _by_algorithm(opt: MuonGrokfast) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"muon": set(), "adamw": set()}
    for group in opt.param_groups:
        out[group["algorithm"]] |= {id(p) for p in group["params"]}
    return out


def test_groups_follow_roles_exactly():
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.parameters())
    report = param_groups_report(opt)
    rows = {r["role"]: (r["optimizer"], r["count"], r["numel"]) for r in report}
    numel = lambda *ps: sum(p.numel() for p in ps)  # noqa: E731
    a, m = model.attn, model
    assert rows == {
        "muon": ("muon", 6, numel(a.w_q.weight, a.w_k.weight, a.w_v.weight, a.w_o.weight, m.up.weight,
                                  m.down.weight)),
        "embedding": ("adamw", 1, m.embed.weight.numel()),
        "head": ("adamw", 1, m.head.weight.numel()),
        "norm": ("adamw", 1, m.norm.weight.numel()),
        "bias": ("adamw", 2, numel(m.up.bias, m.down.bias)),
        "gate": ("adamw", 1, m.gate.numel()),
        "persistent": ("adamw", 1, m.persistent.numel()),
        "memory_init": ("adamw", 1, m.memory_init.numel()),
        "scalar": ("adamw", 1, 1),
    }
    assert [r["role"] for r in report][0] == "muon"
    assert sum(r["numel"] for r in report) == sum(p.numel() for p in model.parameters())

    groups = _by_algorithm(opt)
    tagged_muon = {id(p) for p in model.parameters() if p.af_role == "muon"}
    assert groups["muon"] == tagged_muon
    # The 2-D tensors an ndim rule would have sent to Muon stay with AdamW, in the torch optimizer too.
    two_d_adamw = [m.embed.weight, m.head.weight, m.persistent, m.memory_init]
    assert all(p.ndim == 2 and id(p) in groups["adamw"] for p in two_d_adamw)
    muon_owned = {id(p) for g in opt._muon.param_groups for p in g["params"]}
    adamw_owned = {id(p) for g in opt._adamw.param_groups for p in g["params"]}
    assert muon_owned == tagged_muon and not muon_owned & adamw_owned
    assert muon_owned | adamw_owned == {id(p) for p in model.parameters()}


def test_two_d_embedding_gets_an_adam_update_not_an_orthogonalised_one():
    torch.manual_seed(0)
    model = StandInLM()
    opt = MuonGrokfast(model.parameters(), grokfast_lambda=0.0)
    emb = model.embed.weight
    before = emb.detach().clone()
    emb.grad = torch.zeros_like(emb)
    emb.grad[3] = torch.randn(emb.shape[1])  # one token row touched, as an embedding lookup does
    opt.step()
    delta = emb.detach() - before
    # AdamW's first step moves exactly the touched row, by lr·sign(g); Muon would smear it over every row.
    assert torch.count_nonzero(delta.abs().sum(1)) == 1
    torch.testing.assert_close(delta[3], -1e-3 * torch.sign(emb.grad[3]), rtol=1e-4, atol=0)


def test_untagged_parameters_go_to_adamw_with_one_warning(caplog):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    tag(model[0].weight, "muon")
    with caplog.at_level(logging.WARNING, logger="shared.optim.muon_grokfast"):
        opt = MuonGrokfast(model.named_parameters())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name in ("0.bias", "1.weight", "1.bias"):
        assert name in warnings[0].getMessage()
    assert "0.weight" not in warnings[0].getMessage()
    rows = {r["role"]: r for r in param_groups_report(opt)}
    assert rows["untagged"]["optimizer"] == "adamw" and rows["untagged"]["count"] == 3
    assert rows["muon"]["count"] == 1


def test_unnamed_untagged_parameters_are_listed_by_position_and_shape(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.optim.muon_grokfast"):
        MuonGrokfast(nn.Linear(4, 3).parameters())
    assert "param #0 (3, 4)" in caplog.text and "param #1 (3,)" in caplog.text


def test_muon_tag_on_a_non_matrix_is_refused_by_name():
    model = nn.Conv1d(2, 3, 5)
    tag(model.weight, "muon")
    tag(model.bias, "bias")
    with pytest.raises(InvalidSpecError, match="muon") as err:
        MuonGrokfast(model.named_parameters())
    assert err.value.field == "weight"


def test_unknown_role_is_refused_by_name():
    lin = nn.Linear(2, 2)
    tag(lin.weight, "mlp")
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast(lin.named_parameters())
    assert err.value.field == "weight"


def test_duplicate_parameters_are_refused():
    p = tag(nn.Parameter(torch.randn(3)), "norm")
    with pytest.raises(InvalidSpecError, match="more than one"):
        MuonGrokfast([{"params": [p]}, {"params": [p]}])


def test_group_dicts_keep_their_overrides_per_role():
    model = StandInLM()
    decay = [p for p in model.parameters() if p.af_role in ("muon", "embedding")]
    no_decay = [p for p in model.parameters() if p.af_role not in ("muon", "embedding")]
    opt = MuonGrokfast([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "adamw_lr": 3e-4}],
                       muon_lr=2e-3, weight_decay=0.1)
    for group in opt.param_groups:
        in_first = id(group["params"][0]) in {id(p) for p in decay}
        assert group["weight_decay"] == (0.1 if in_first else 0.0)
        want_lr = 2e-3 if group["algorithm"] == "muon" or in_first else 3e-4
        assert group["lr"] == want_lr, group["role"]
    with pytest.raises(InvalidSpecError) as err:
        MuonGrokfast([{"params": decay, "lr": 1.0}])
    assert err.value.field == "params[0]"


def test_add_param_group_routes_by_role_after_construction():
    first = tag(nn.Parameter(torch.randn(3)), "norm")
    opt = MuonGrokfast([first])
    assert opt._muon is None
    hidden, bias = tag(nn.Parameter(torch.randn(4, 5)), "muon"), tag(nn.Parameter(torch.randn(4)), "bias")
    opt.add_param_group({"params": [hidden, bias]})
    assert [(g["role"], g["algorithm"]) for g in opt.param_groups] == [
        ("norm", "adamw"), ("muon", "muon"), ("bias", "adamw")]
    assert opt._muon.param_groups[0] is opt.param_groups[1]
    hidden.grad, bias.grad, first.grad = torch.randn(4, 5), torch.randn(4), torch.randn(3)
    opt.step()
    assert "momentum_buffer" in opt._muon.state[hidden] and "exp_avg" in opt._adamw.state[bias]

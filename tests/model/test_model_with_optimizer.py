"""TRMTitansMAG trained by MuonGrokfast: role routing on the real model, QK-clip on its attention layers
with max logits recorded over all recursion passes, and a few steps that lower the loss."""

import torch

from shared.optim import MuonGrokfast, param_groups_report
from tests.model.helpers import tiny_model


def test_only_hidden_matrices_of_the_real_model_reach_muon():
    model = tiny_model().float()
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules())
    rows = {(r["role"], r["optimizer"]): r for r in param_groups_report(opt)}
    muon = [r for r in rows.values() if r["optimizer"].lower() == "muon"]
    assert [r["role"] for r in muon] == ["muon"]
    expected = sum(p.numel() for p in model.parameters() if getattr(p, "af_role") == "muon")
    assert muon[0]["numel"] == expected
    for role in ("embedding", "norm", "persistent", "memory_init", "gate", "bias", "head"):
        assert any(r["role"] == role and r["optimizer"].lower() == "adamw" for r in rows.values()), role


def test_qk_clip_caps_every_head_over_all_recursion_passes():
    model = tiny_model().float()
    with torch.no_grad():
        for attn in model.qk_clip_modules():
            attn.q.weight.mul_(20.0)
            attn.k.weight.mul_(20.0)
    tau = 2.0
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), qk_clip_threshold=tau,
                              muon_lr=1e-9, adamw_lr=1e-9)
    ids = torch.randint(0, 48, (2, 12))
    inputs = {}
    hooks = [a.register_forward_pre_hook(lambda m, args, i=i: inputs.setdefault(i, args[0].detach()))
             for i, a in enumerate(model.qk_clip_modules())]
    model.train()
    out = model(ids, labels=ids)
    before = [a.max_logits() for a in model.qk_clip_modules()]
    assert all((b > tau).all() for b in before)
    out.loss.backward()
    opt.step()
    for h in hooks:
        h.remove()
    for i, attn in enumerate(model.qk_clip_modules()):
        assert torch.isinf(attn.max_logits()).all()          # reset after clipping
        attn.train()
        attn(inputs[i])                                      # the same input as the first recorded pass
        assert attn.max_logits().max() <= tau + 1e-3


def test_a_few_muon_grokfast_steps_lower_the_loss():
    model = tiny_model(num_layers=1, n_latent_steps=1, t_cycles=1, n_sup=1).float()
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), muon_lr=5e-3,
                              adamw_lr=5e-3, max_grad_norm=1.0)
    ids = torch.randint(0, 48, (4, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    losses = []
    for _ in range(30):
        out = model(ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.lm_loss.item())
    assert losses[-1] < losses[0] - 1.0

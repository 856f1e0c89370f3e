"""TRMTitansMAG: causality through recursion and memory, the recursion's call count and gradient
structure, halting, generation, overfitting, Hugging Face plumbing and bad configs."""

import pytest
import torch

from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAG, TRMTitansMAGConfig, load_model, save_model
from tests.model.helpers import tiny_config, tiny_model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_changing_token_t_plus_1_never_changes_outputs_at_or_before_t(mode):
    model = tiny_model()
    model.train(mode == "train")
    ids = torch.randint(0, 48, (2, 15), generator=torch.Generator().manual_seed(0))
    for t in (0, 5, 9, 13):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % 48
        a = model(ids, labels=ids if mode == "train" else None)
        b = model(changed, labels=changed if mode == "train" else None)
        assert torch.equal(a.logits[:, : t + 1], b.logits[:, : t + 1]), f"future token leaked into position {t}"
        assert not torch.equal(a.logits[:, t + 1:], b.logits[:, t + 1:])
        if mode == "eval":
            assert torch.equal(a.halting_steps[:, : t + 1], b.halting_steps[:, : t + 1])


def test_a_supervision_step_makes_T_times_n_plus_1_net_calls_and_only_the_last_n_plus_1_have_grad():
    model = tiny_model(n_latent_steps=3, t_cycles=3)
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    x = model.embed(torch.randint(0, 48, (1, 8)))
    y, z = model.initial_state(x)
    y, z = model.supervision_step(x, y, z)
    assert len(calls) == 3 * (3 + 1)
    assert calls == [False] * 8 + [True] * 4
    assert y.requires_grad and z.requires_grad


def test_the_halting_head_learns_and_the_lm_loss_is_shifted():
    model = tiny_model()
    model.train()
    ids = torch.randint(0, 48, (2, 12))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.halt_head.weight.grad is not None and model.halt_head.weight.grad.abs().sum() > 0
    # the loss is next-token: position t is scored against ids[t + 1]
    logits = out.logits.detach()
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 48).float(), ids[:, 1:].reshape(-1))
    assert torch.allclose(TRMTitansMAG.lm_loss(logits, ids), manual)


def test_executed_halting_steps_vary_per_token_and_grow_with_act_threshold():
    model = tiny_model(n_sup=6)
    model.eval()
    with torch.no_grad():
        model.halt_head.weight.normal_(0, 0.5)
    ids = torch.randint(0, 48, (4, 16), generator=torch.Generator().manual_seed(2))
    means, spreads = [], []
    for threshold in (0.2, 0.4, 0.5, 0.6, 0.8, 1.0):
        steps = model(ids, act_threshold=threshold).halting_steps
        means.append(steps.mean().item())
        spreads.append(steps.std().item())
    assert means == sorted(means) and means[-1] > means[0]
    assert means[-1] == 6.0  # threshold 1 never halts early
    assert max(spreads) > 0, "every token halted after the same number of steps"


def test_generate_without_cache_equals_a_manual_greedy_loop():
    from shared.evaluation import greedy_generate

    model = tiny_model()
    model.eval()
    ids = torch.randint(0, 48, (1, 6))
    hf = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = greedy_generate(model, ids, 6, eos_token_id=None)
    assert torch.equal(hf[0, 6:], torch.as_tensor(ours).reshape(-1)[-6:])


def test_the_model_overfits_one_batch():
    torch.manual_seed(0)
    model = TRMTitansMAG(tiny_config(num_layers=1, n_latent_steps=1, t_cycles=1, n_sup=1))
    ids = torch.randint(0, 48, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(150):
        out = model(ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.lm_loss.item()
    assert first > 3.0 and out.lm_loss.item() < 0.3


def test_save_and_load_give_identical_logits_and_refuse_other_families(tmp_path):
    model = tiny_model().float()
    model.eval()
    ids = torch.randint(0, 48, (1, 10))
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = load_model(tmp_path / "m")
    again.eval()
    assert torch.equal(again(ids).logits, model(ids).logits)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(Exception, match="gpt2"):
        load_model(tmp_path / "other")


def test_resize_token_embeddings_keeps_the_tie_and_the_roles():
    model = tiny_model().float()
    model.resize_token_embeddings(60)
    assert model.lm_head.weight.shape[0] == 60 and model.embed.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert getattr(model.embed.weight, "af_role") == "embedding"
    assert model(torch.randint(0, 60, (1, 5))).logits.shape[-1] == 60


def test_every_parameter_has_a_role_and_no_embedding_or_norm_is_a_muon_matrix():
    model = tiny_model()
    roles = {n: getattr(p, "af_role", None) for n, p in model.named_parameters()}
    assert None not in roles.values()
    for name, role in roles.items():
        if role == "muon":
            assert dict(model.named_parameters())[name].dim() == 2
            assert not any(s in name for s in ("embed", "norm", "persistent", "init", "halt", "rates"))
    assert roles["net.layers.0.memory.w1_init"] == "memory_init"
    assert roles["net.layers.0.attn.persistent"] == "persistent"


def test_loglikelihood_scoring_works_on_the_model():
    from shared.evaluation import loglikelihood

    class Tok:
        eos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [1 + (ord(c) % 40) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    model = tiny_model().float()
    result = loglikelihood(model, Tok(), "abc", " de")
    assert result[0] < 0 and result[1] == 3


@pytest.mark.parametrize("field,value", [("hidden_dim", 30), ("window", 0), ("ltm_slots", 0), ("t_cycles", 0),
                                         ("n_latent_steps", 0), ("active_ltm_slots", 99), ("act_threshold", 0.0)])
def test_bad_configs_fail_naming_the_field_before_anything_is_built(field, value):
    with pytest.raises(InvalidSpecError, match=field):
        TRMTitansMAGConfig(**{**tiny_config().to_dict(), field: value})


def test_the_checklist_constructor_form_works():
    model = TRMTitansMAG(num_layers=1, hidden_dim=32, num_heads=2, act_threshold=0.95, ltm_slots=16,
                         vocab_size=48, memory_dim=8, window=4, persistent_tokens=1, max_seq_len=32)
    assert model.config.active_ltm_slots == 16 and model.config.act_threshold == 0.95


def test_roles_survive_loading_and_deepcopy(tmp_path):
    import copy

    model = tiny_model().float()
    save_model(model, tmp_path / "m")
    for other in (load_model(tmp_path / "m"), copy.deepcopy(model)):
        roles = {n: getattr(p, "af_role", None) for n, p in other.named_parameters()}
        assert roles == {n: getattr(p, "af_role") for n, p in model.named_parameters()}
    clone = copy.deepcopy(model)
    assert clone.lm_head.weight.data_ptr() == clone.embed.weight.data_ptr()
    ids = torch.randint(0, 48, (1, 6))
    model.eval(), clone.eval()
    assert torch.equal(model(ids).logits, clone(ids).logits)

"""The 12 thinking tokens: added once, rows initialised from existing embeddings (not noise), delta printed."""

import copy

import pytest
import torch

from services.quietstar.core.tokens import DESCRIPTIONS, add_thinking_tokens
from shared.config import load_profile
from shared.data.special_tokens import SPECIAL_TOKENS
from shared.data.tokenizer import train_bpe_tokenizer
from shared.model import TRMTitansMAG, TRMTitansMAGConfig

CI = load_profile("ci")
CORPUS = [f"What is {a} plus {b}? The sum is {a + b}. thinking step by step, doubt, check, expert, correct, "
          f"end thinking. Answer: {a + b}" for a in range(10) for b in range(10)]


def make_tokenizer(vocab_size: int = 300):
    """A small byte-level BPE trained offline; it has eos (id 0) and pad (id 1), none of the 12 tokens."""
    return train_bpe_tokenizer(CORPUS, vocab_size)


def make_model(vocab_size: int, seed: int = 0, **overrides) -> TRMTitansMAG:
    """The ci profile's Cognate model (1 layer, d 32) at the tokenizer's vocabulary size."""
    cfg = TRMTitansMAGConfig.from_profile(CI.phases.cognate.model, **{"vocab_size": vocab_size, **overrides})
    torch.manual_seed(seed)
    return TRMTitansMAG(cfg)


def _old_rows(model, n):
    return model.get_input_embeddings().weight[:n].detach().clone()


def test_words_init_rows_are_description_means_not_noise(capsys):
    tok = make_tokenizer()
    n_old = len(tok)
    model = make_model(n_old)
    before = _old_rows(model, n_old)
    descriptions = {t: tok.encode(DESCRIPTIONS[t], add_special_tokens=False) for t in SPECIAL_TOKENS}
    report = add_thinking_tokens(model, tok)
    w = model.get_input_embeddings().weight.detach()
    assert torch.equal(w[:n_old], before)                       # existing rows untouched
    row_norm = before.norm(dim=1).median()
    for t in SPECIAL_TOKENS:
        i = report["token_ids"][t]
        assert i >= n_old
        want = before[descriptions[t]].mean(0)
        assert torch.allclose(w[i], want, atol=1e-7), t
        assert torch.isfinite(w[i]).all()
        assert 0.2 * row_norm < w[i].norm() < 1.5 * row_norm, (t, float(w[i].norm()), float(row_norm))
    # distinct starting points for distinct meanings
    assert not torch.equal(w[report["token_ids"]["<step>"]], w[report["token_ids"]["<doubt>"]])
    # deterministic: a different global RNG state gives the same rows (noise would not)
    torch.manual_seed(12345)
    tok2, model2 = make_tokenizer(), make_model(n_old)
    add_thinking_tokens(model2, tok2, verbose=False)
    assert torch.equal(model2.get_input_embeddings().weight, model.get_input_embeddings().weight)
    capsys.readouterr()


def test_mean_init_rows_equal_mean_of_existing_rows():
    tok = make_tokenizer()
    n_old = len(tok)
    model = make_model(n_old)
    mean = _old_rows(model, n_old).mean(0)
    report = add_thinking_tokens(model, tok, init="mean", verbose=False)
    w = model.get_input_embeddings().weight.detach()
    for i in report["token_ids"].values():
        assert torch.allclose(w[i], mean, atol=1e-7)


def test_parameter_delta_printed_and_correct_tied(capsys):
    tok = make_tokenizer()
    model = make_model(len(tok))
    d = model.config.hidden_dim
    n_params = sum(p.numel() for p in model.parameters())           # tied: counted once
    report = add_thinking_tokens(model, tok)
    out = capsys.readouterr().out
    assert report["added"] == 12 and report["old_vocab"] + 12 == report["new_vocab"] == len(tok)
    assert report["parameter_delta"] == 12 * d                       # one tied matrix grew by 12 rows
    assert report["params_after"] == sum(p.numel() for p in model.parameters()) == n_params + 12 * d
    assert f"With tokens: {report['params_after']:,} params (+{12 * d})" in out
    assert model.config.vocab_size == len(tok)
    assert model.lm_head.weight is model.embed.weight                # still tied after the resize
    assert getattr(model.embed.weight, "af_role", None) == "embedding"   # the optimizer can route it


def test_untied_head_rows_initialised_too():
    tok = make_tokenizer()
    n_old = len(tok)
    model = make_model(n_old, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.embed.weight
    head_before = model.lm_head.weight[:n_old].detach().clone()
    report = add_thinking_tokens(model, tok, init="mean", verbose=False)
    assert report["parameter_delta"] == 2 * 12 * model.config.hidden_dim
    for i in report["token_ids"].values():
        assert torch.allclose(model.lm_head.weight[i], head_before.mean(0), atol=1e-7)


def test_idempotent():
    tok = make_tokenizer()
    model = make_model(len(tok))
    first = add_thinking_tokens(model, tok, verbose=False)
    snapshot = copy.deepcopy(model.state_dict())
    n_tok = len(tok)
    second = add_thinking_tokens(model, tok, verbose=False)
    assert second["added"] == 0 and second["initialised"] == 0 and second["parameter_delta"] == 0
    assert second["token_ids"] == first["token_ids"] and len(tok) == n_tok
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())


def test_each_token_is_one_id():
    tok = make_tokenizer()
    report = add_thinking_tokens(make_model(len(tok)), tok, verbose=False)
    for t in SPECIAL_TOKENS:
        assert tok.encode(t, add_special_tokens=False) == [report["token_ids"][t]]
    assert tok.encode(" <step> 3", add_special_tokens=False)[1] == report["token_ids"]["<step>"]


def test_model_vocab_padded_past_tokenizer():
    """A model with more rows than the tokenizer (a padded vocabulary): no resize, the rows the new ids
    land on are rewritten, and only the tokenizer's own rows are averaged."""
    tok = make_tokenizer()
    n_old = len(tok)
    model = make_model(n_old + 20)
    mean = _old_rows(model, n_old).mean(0)
    report = add_thinking_tokens(model, tok, init="mean", verbose=False)
    assert report["parameter_delta"] == 0 and report["new_vocab"] == n_old + 20
    for i in report["token_ids"].values():
        assert n_old <= i < n_old + 12
        assert torch.allclose(model.embed.weight[i], mean, atol=1e-7)


def test_tokenizer_with_tokens_but_model_without_rows():
    tok = make_tokenizer()
    n_old = len(tok)
    add_thinking_tokens(make_model(n_old), tok, verbose=False)          # the tokenizer now has them
    model = make_model(n_old, seed=1)
    report = add_thinking_tokens(model, tok, init="mean", verbose=False)
    assert report["added"] == 0 and report["initialised"] == 12 and report["new_vocab"] == n_old + 12
    mean = model.embed.weight[:n_old].detach().mean(0)
    assert all(torch.allclose(model.embed.weight[i], mean, atol=1e-7) for i in report["token_ids"].values())


def test_unknown_init_rejected():
    tok = make_tokenizer()
    with pytest.raises(Exception, match="init"):
        add_thinking_tokens(make_model(len(tok)), tok, init="random")

"""The 12 Phase-3 tokens: the names the checklist and the config use, stable ids, single tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models

from shared.config.schema import STRATEGIES as CONFIG_STRATEGIES
from shared.data import special_tokens as st
from shared.data.tokenizer import load_gpt2_tokenizer, load_tokenizer, save_tokenizer, train_bpe_tokenizer
from shared.errors import FailedPreconditionError, InvalidSpecError
from tests.data import GPT2_DIR, require, wikitext_articles


@pytest.fixture
def gpt2():
    return load_gpt2_tokenizer(require(GPT2_DIR))


def test_the_twelve_tokens_in_the_checklists_order():
    assert st.SPECIAL_TOKENS == (
        "[thinking]", "[/endthinking]", "<step>", "<mece>", "<falsify>", "<expert>", "<orthogonal>",
        "<doubt>", "<bayesian>", "<multidomain>", "<correct>", "<uncertain>")
    assert len(set(st.SPECIAL_TOKENS)) == 12
    assert st.SPECIAL_TOKENS[:2] == (st.THINKING_OPEN, st.THINKING_CLOSE)
    assert st.STRATEGY_TOKENS == tuple(st.strategy_token(n) for n in st.STRATEGIES)


def test_strategy_names_equal_the_configs():
    assert tuple(st.STRATEGIES) == tuple(CONFIG_STRATEGIES)


def test_strategy_token_rejects_unknown_names():
    assert st.strategy_token("doubt") == "<doubt>"
    with pytest.raises(InvalidSpecError, match="unknown strategy"):
        st.strategy_token("<doubt>")


def test_adding_is_idempotent_and_ids_follow_the_order(gpt2):
    base = len(gpt2)
    assert st.add_special_tokens(gpt2) == 12
    assert st.add_special_tokens(gpt2) == 0
    assert len(gpt2) == base + 12
    ids = st.special_token_ids(gpt2)
    assert [ids[t] for t in st.SPECIAL_TOKENS] == list(range(base, base + 12))


def test_each_token_is_one_id_in_running_text_and_special(gpt2):
    st.add_special_tokens(gpt2)
    ids = st.special_token_ids(gpt2)
    text = "Q [thinking]<step> add 2<doubt>check<uncertain> [/endthinking] 4"
    enc = gpt2.encode(text, add_special_tokens=False)
    for tok in ("[thinking]", "<step>", "<doubt>", "<uncertain>", "[/endthinking]"):
        assert enc.count(ids[tok]) == 1
    assert gpt2.decode(enc) == text
    assert not any(t in gpt2.decode(enc, skip_special_tokens=True) for t in st.SPECIAL_TOKENS)


def test_existing_extra_special_tokens_are_kept(gpt2):
    gpt2.add_special_tokens({"extra_special_tokens": ["<tool>"]})
    st.add_special_tokens(gpt2)
    assert "<tool>" in gpt2.extra_special_tokens
    assert set(st.SPECIAL_TOKENS) <= set(gpt2.extra_special_tokens)


def test_tokens_survive_save_and_load(gpt2, tmp_path):
    st.add_special_tokens(gpt2)
    loaded = load_tokenizer(save_tokenizer(gpt2, tmp_path))
    assert st.special_token_ids(loaded) == st.special_token_ids(gpt2)
    assert st.add_special_tokens(loaded) == 0


def test_bare_tokenizers_tokenizer_is_accepted():
    tk = Tokenizer(models.BPE())
    assert st.add_special_tokens(tk) == 12
    assert st.add_special_tokens(tk) == 0
    assert list(st.special_token_ids(tk).values()) == list(range(12))


def test_missing_tokens_are_a_precondition_error(gpt2):
    with pytest.raises(FailedPreconditionError, match=r"\[thinking\]"):
        st.special_token_ids(gpt2)


def test_phase1_tokenizers_reserve_nothing(gpt2):
    """Phase 0/1 vocabularies hold none of the 12: each is several ordinary tokens until Phase 3."""
    bpe = train_bpe_tokenizer(wikitext_articles("valid")[:50], 1024)
    for tok in (gpt2, bpe):
        vocab = tok.get_vocab()
        assert not set(st.SPECIAL_TOKENS) & set(vocab)
        assert all(len(tok.encode(t, add_special_tokens=False)) > 1 for t in st.SPECIAL_TOKENS)

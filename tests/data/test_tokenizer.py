"""Tokenizers: GPT-2 gives GPT-2's ids, trained BPE is deterministic and lossless, identity is checkable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from shared.config.schema import TokenizerConfig
from shared.data.special_tokens import add_special_tokens
from shared.data.tokenizer import (
    check_same_tokenizer,
    load_gpt2_tokenizer,
    load_tokenizer,
    roundtrip_rate,
    save_tokenizer,
    tokenizer_fingerprint,
    tokenizer_from_config,
    train_bpe_tokenizer,
)
from shared.errors import FailedPreconditionError, IntegrityError, InvalidSpecError, NotFoundError
from tests.data import DATASETS_DIR, GPT2_DIR, gsm8k_records, mbpp_records, require, wikitext_articles

REPO = Path(__file__).resolve().parents[2]
ODD_TEXTS = ["", " ", "  leading and trailing  ", "tabs\tand\r\nCRLF\n\n", "naïve café — ünïcödé",
             "日本語のテキスト", "emoji 🙂🧪 mixed", "<|pad|> literal", "a" * 5000,
             "x = f(y) ** 2  # comment"]


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2_tokenizer(require(GPT2_DIR))


@pytest.fixture(scope="module")
def wiki() -> list[str]:
    return wikitext_articles("valid")


@pytest.fixture(scope="module")
def bpe(wiki):
    return train_bpe_tokenizer(wiki, 4096)


def test_gpt2_gives_gpt2s_known_ids(gpt2):
    assert len(gpt2) == 50257
    assert gpt2.encode("Hello world", add_special_tokens=False) == [15496, 995]
    assert gpt2.eos_token == "<|endoftext|>" and gpt2.eos_token_id == 50256
    assert gpt2.encode("a<|endoftext|>b", add_special_tokens=False) == [64, 50256, 65]


@pytest.mark.parametrize(("vocab", "merges", "why"), [
    ({"H": 0, "e": 1, "He": 2, "<|endoftext|>": 3}, "H e", "not the GPT-2 tokenizer"),  # valid, foreign
    ({"H": 0, "e": 1}, "H e", "cannot read"),  # the merge's result is not in the vocabulary
])
def test_foreign_or_broken_gpt2_files_are_refused(tmp_path, vocab, merges, why):
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text(f"#version: 0.2\n{merges}\n")
    with pytest.raises(IntegrityError, match=why):
        load_gpt2_tokenizer(tmp_path)


def test_missing_file_is_named(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(NotFoundError, match="vocab.bpe"):
        load_gpt2_tokenizer(tmp_path)


def test_missing_dir_offline_names_the_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-gpt2"
    with pytest.raises(NotFoundError, match="no-such-gpt2.*offline"):
        load_gpt2_tokenizer(missing)


def test_roundtrip_is_lossless_on_real_and_odd_text(gpt2, bpe, wiki):
    texts = wiki + ODD_TEXTS
    if (DATASETS_DIR / "GSM8K").is_dir():
        texts += [r.prompt + "\n" + r.rationale for r in gsm8k_records(500)]
        texts += [r.answer for r in mbpp_records(200)]  # code with \r\n and tabs
    assert roundtrip_rate(gpt2, texts) == 1.0
    assert roundtrip_rate(bpe, texts) == 1.0


def test_roundtrip_rate_counts_lossy_texts():
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens(list(pre_tokenizers.ByteLevel.alphabet()))
    assert roundtrip_rate(tk, ["abc", "ABC", "x", "Y"]) == 0.5
    with pytest.raises(InvalidSpecError, match="over nothing"):
        roundtrip_rate(tk, [])


def test_trained_bpe_is_deterministic_across_runs_and_processes(wiki, bpe):
    again = train_bpe_tokenizer(iter(wiki), 4096)  # a generator, not a list: same result
    assert again.backend_tokenizer.to_str() == bpe.backend_tokenizer.to_str()
    script = ("import sys; from shared.data.tokenizer import train_bpe_tokenizer, tokenizer_fingerprint; "
              "from tests.data import wikitext_articles; "
              "print(tokenizer_fingerprint(train_bpe_tokenizer(wikitext_articles('valid'), 4096)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == tokenizer_fingerprint(bpe)
    other = train_bpe_tokenizer(wiki[: len(wiki) // 2], 4096)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(bpe)


def test_trained_bpe_vocab_counts_the_specials(bpe):
    assert len(bpe) == 4096
    assert bpe.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>"]) == [0, 1]
    assert (bpe.eos_token, bpe.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert max(bpe.get_vocab().values()) == 4095


def test_small_corpus_gives_at_most_vocab_size():
    tok = train_bpe_tokenizer(["tiny corpus, tiny corpus"], 1024)
    assert 258 <= len(tok) <= 1024
    assert roundtrip_rate(tok, ["unseen words are still bytes ✓"]) == 1.0


@pytest.mark.parametrize("specials", [(), ("<a>", "<a>")])
def test_bad_specials_are_refused(specials):
    with pytest.raises(InvalidSpecError, match="seed_specials"):
        train_bpe_tokenizer(["x"], 1000, seed_specials=specials)


def test_vocab_too_small_for_the_bytes_is_refused():
    with pytest.raises(InvalidSpecError, match="vocab_size"):
        train_bpe_tokenizer(["x"], 257)


def test_save_load_keeps_identity_and_writes_only_json(bpe, gpt2, tmp_path):
    for name, tok in (("bpe", bpe), ("gpt2", gpt2)):
        d = save_tokenizer(tok, tmp_path / name)
        for f in d.iterdir():
            json.loads(f.read_text())  # every file is JSON
        loaded = load_tokenizer(d)
        assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
        text = "Load me back, please: 3.14 ✓"
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(" a , b .")) == " a , b ."  # no space cleanup after loading
        assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_load_missing_dir_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nothing")


def test_fingerprint_tracks_what_ids_mean(gpt2, tmp_path):
    fp = tokenizer_fingerprint(gpt2)
    assert fp == tokenizer_fingerprint(load_gpt2_tokenizer(GPT2_DIR))
    copy = load_gpt2_tokenizer(GPT2_DIR)
    copy.pad_token = copy.eos_token  # padding is a per-call setting; a padded call must not change it…
    copy(["short", "a longer text"], padding=True)
    copy.pad_token = None
    assert tokenizer_fingerprint(copy) == fp
    add_special_tokens(copy)  # …while new tokens must
    assert tokenizer_fingerprint(copy) != fp


def test_check_same_tokenizer_names_both(gpt2, bpe):
    a, b = tokenizer_fingerprint(gpt2), tokenizer_fingerprint(bpe)
    check_same_tokenizer(a, a, what="model vs data")
    with pytest.raises(FailedPreconditionError) as err:
        check_same_tokenizer(a, b, what="model vs data")
    assert a in str(err.value) and b in str(err.value) and "model vs data" in str(err.value)


def test_tokenizer_from_config(wiki):
    require(GPT2_DIR)
    # The shipped profiles name ../shared/tokenizers/gpt2, resolved from the repo root.
    gpt2 = tokenizer_from_config(TokenizerConfig(kind="gpt2", vocab_size=50257,
                                                 gpt2_dir="../shared/tokenizers/gpt2"))
    assert gpt2.encode("Hello world", add_special_tokens=False) == [15496, 995]
    bpe = tokenizer_from_config(TokenizerConfig(kind="bpe", vocab_size=1024, gpt2_dir="unused"), wiki)
    assert len(bpe) == 1024
    with pytest.raises(InvalidSpecError, match="texts"):
        tokenizer_from_config(TokenizerConfig(kind="bpe", vocab_size=1024, gpt2_dir="unused"))
    with pytest.raises(InvalidSpecError, match="vocab_size"):
        tokenizer_from_config(TokenizerConfig(kind="gpt2", vocab_size=50000,
                                              gpt2_dir="../shared/tokenizers/gpt2"))

"""Tokenizers for every phase: GPT-2's BPE from local files, a small ByteLevel BPE trained offline, and the
identity checks that keep a model's tokenizer and its data's tokenizer the same.

Both kinds are byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners"): text → UTF-8 bytes mapped to 256 printable symbols → GPT-2's pre-tokenisation regex → merges.
Every byte has a symbol, so nothing is ever unknown and decode(encode(t)) == t for any text.

Both are built with the `tokenizers` library and wrapped in `PreTrainedTokenizerFast`, never through
`GPT2TokenizerFast(vocab_file=..., merges_file=...)`: under transformers 5 that call silently builds an
EMPTY tokenizer (ENVIRONMENT.md). Loading GPT-2 checks its known ids, so that trap cannot come back.

Persistence is `save_pretrained` (tokenizer.json + tokenizer_config.json: JSON only). A tokenizer's
fingerprint is the sha256 of its canonical tokenizer.json plus its special-token roles.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from shared.canonical import dumps_canonical, sha256_bytes
from shared.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidSpecError,
    NotFoundError,
)

if TYPE_CHECKING:
    from shared.config.schema import TokenizerConfig

log = logging.getLogger(__name__)

GPT2_VOCAB_FILE = "encoder.json"  # OpenAI's names; the hub calls the same files vocab.json / merges.txt
GPT2_MERGES_FILE = "vocab.bpe"
GPT2_HUB_ID = "openai-community/gpt2"  # what the short id "gpt2" redirects to
GPT2_VOCAB_SIZE = 50_257
GPT2_EOS = "<|endoftext|>"
# Known GPT-2 ids: an empty or foreign tokenizer cannot produce them.
GPT2_PROBE = ("Hello world", [15496, 995])
DEFAULT_SPECIALS = ("<|endoftext|>", "<|pad|>")
# Keys of tokenizer.json that are per-call settings HF mutates (padding=/truncation= on __call__), not
# part of what a token id means; they are left out of the fingerprint.
_RUNTIME_KEYS = ("padding", "truncation")
_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _byte_level(model: models.Model) -> Tokenizer:
    tk = Tokenizer(model)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2: no space prepended
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return tk


def _wrap(tk: Tokenizer, *, eos: str, pad: str | None) -> PreTrainedTokenizerFast:
    # bos = unk = eos as in GPT-2; byte-level BPE has no unknowns and our models use no bos. Cleanup of
    # tokenization spaces is off: it rewrites " ." → "." and breaks decode(encode(t)) == t.
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, bos_token=eos, unk_token=eos,
                                   pad_token=pad, clean_up_tokenization_spaces=False)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _build_gpt2(vocab_path: Path, merges_path: Path) -> PreTrainedTokenizerFast:
    try:
        bpe = models.BPE.from_file(str(vocab_path), str(merges_path))
    except BaseException as exc:  # a bare Exception, or a Rust panic (a BaseException), on broken files
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise IntegrityError(f"{vocab_path.parent}: cannot read {vocab_path.name} + {merges_path.name} as a "
                             f"BPE: {exc}") from exc
    tk = _byte_level(bpe)
    # encoder.json already holds <|endoftext|> at 50256; registering it makes it one special token.
    tk.add_special_tokens([AddedToken(GPT2_EOS, special=True, normalized=False)])
    tok = _wrap(tk, eos=GPT2_EOS, pad=None)
    text, want = GPT2_PROBE
    got = tok.encode(text, add_special_tokens=False)
    if len(tok) != GPT2_VOCAB_SIZE or got != want or tok.eos_token_id != GPT2_VOCAB_SIZE - 1:
        raise IntegrityError(f"{vocab_path.parent}: not the GPT-2 tokenizer: {len(tok)} tokens (want "
                             f"{GPT2_VOCAB_SIZE}), {text!r} → {got} (want {want}), eos id "
                             f"{tok.eos_token_id} (want {GPT2_VOCAB_SIZE - 1})")
    return tok


def load_gpt2_tokenizer(gpt2_dir: str | Path) -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer (50,257 tokens, eos `<|endoftext|>` = 50256) from encoder.json + vocab.bpe.

    When the folder is missing, the same two files are fetched from the hub — unless the hub is offline
    (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), which is an error naming the folder. Either way the tokenizer
    is built by the same code, so its fingerprint does not depend on where the files came from.
    """
    d = Path(gpt2_dir)
    vocab, merges = d / GPT2_VOCAB_FILE, d / GPT2_MERGES_FILE
    if d.is_dir():
        absent = [p.name for p in (vocab, merges) if not p.is_file()]
        if absent:
            raise NotFoundError(f"{d}: the GPT-2 tokenizer folder lacks {', '.join(absent)} "
                                f"(needs {GPT2_VOCAB_FILE} and {GPT2_MERGES_FILE})")
        return _build_gpt2(vocab, merges)
    if _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        raise NotFoundError(f"GPT-2 tokenizer folder {d} does not exist and the hub is offline "
                            f"(HF_HUB_OFFLINE=1); put {GPT2_VOCAB_FILE} and {GPT2_MERGES_FILE} there or "
                            f"set tokenizer.gpt2_dir")
    log.info("GPT-2 tokenizer folder %s is missing; fetching %s from the hub", d, GPT2_HUB_ID)
    try:
        from huggingface_hub import hf_hub_download

        hub_vocab = Path(hf_hub_download(GPT2_HUB_ID, "vocab.json"))
        hub_merges = Path(hf_hub_download(GPT2_HUB_ID, "merges.txt"))
    except Exception as exc:  # any hub/network failure becomes one actionable error
        raise NotFoundError(f"GPT-2 tokenizer folder {d} does not exist and fetching {GPT2_HUB_ID} from "
                            f"the hub failed: {exc}") from exc
    return _build_gpt2(hub_vocab, hub_merges)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *,
                        seed_specials: Sequence[str] = DEFAULT_SPECIALS) -> PreTrainedTokenizerFast:
    """Train a ByteLevel BPE on `texts` offline; the same texts always give the same tokenizer.

    `vocab_size` counts everything: the special tokens (ids 0.., in `seed_specials` order), the 256 byte
    symbols and the merges. It is an upper bound: a corpus too small to yield that many merges (pairs seen
    at least twice) gives fewer tokens. The first seed special is eos (also bos/unk, as in GPT-2), the
    second, if any, pad. The 12 Phase-3 tokens are not added and no ids are reserved for them: Phase 3
    appends them (shared.data.special_tokens) and resizes the model's embedding.
    """
    specials = list(seed_specials)
    if not specials:
        raise InvalidSpecError("at least one special token (the eos) is needed", field="seed_specials")
    if len(set(specials)) != len(specials):
        raise InvalidSpecError(f"duplicate special tokens {specials}", field="seed_specials")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise InvalidSpecError(f"{vocab_size} cannot hold the {len(alphabet)} byte symbols and "
                               f"{len(specials)} special tokens", field="vocab_size")
    tk = _byte_level(models.BPE())
    # min_frequency 2: a merge seen once only memorises one word. The trainer breaks count ties by the
    # pair itself, so the result does not depend on hashing or thread order (tested).
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer)
    tok = _wrap(tk, eos=specials[0], pad=specials[1] if len(specials) > 1 else None)
    if len(tok) < vocab_size:
        log.warning("trained BPE has %d tokens, fewer than vocab_size %d: the corpus has too few repeated "
                    "pairs", len(tok), vocab_size)
    return tok


def tokenizer_from_config(cfg: TokenizerConfig, texts: Iterable[str] | None = None
                          ) -> PreTrainedTokenizerFast:
    """The tokenizer a profile asks for: GPT-2 from `gpt2_dir` (relative = from the repo root) or a BPE
    of `vocab_size` trained on `texts`."""
    from shared.config.load import resolve_path

    if cfg.kind == "gpt2":
        tok = load_gpt2_tokenizer(resolve_path(cfg.gpt2_dir))
        if len(tok) != cfg.vocab_size:
            raise InvalidSpecError(f"GPT-2 has {len(tok)} tokens, the config says {cfg.vocab_size}",
                                   field="tokenizer.vocab_size")
        return tok
    if texts is None:
        raise InvalidSpecError("kind bpe trains on the curriculum text: pass texts", field="texts")
    return train_bpe_tokenizer(texts, cfg.vocab_size)


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json (JSON only) into `directory`; returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(d))
    return d


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load what save_tokenizer wrote; never reaches the hub (a missing folder is NotFoundError)."""
    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        raise NotFoundError(f"{d}: no tokenizer.json (expected a folder written by save_tokenizer)")
    tok = PreTrainedTokenizerFast.from_pretrained(str(d), local_files_only=True)
    tok.clean_up_tokenization_spaces = False
    return tok


def _backend(tok: Any) -> Tokenizer:
    if isinstance(tok, Tokenizer):
        return tok
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise InvalidSpecError(f"{type(tok).__name__} is not a fast (tokenizers-backed) tokenizer",
                               field="tokenizer")
    return backend


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of the canonical tokenizer.json (model, merges, pre-tokeniser, added tokens…) and the
    special-token roles, so two tokenizers that map any text to the same ids with the same eos/pad compare
    equal. Per-call padding/truncation settings are excluded (HF changes them on __call__)."""
    content = json.loads(_backend(tok).to_str())
    for key in _RUNTIME_KEYS:
        content.pop(key, None)
    roles = {r: getattr(tok, r, None) for r in _ROLES}
    roles = {k: (str(v) if v is not None else None) for k, v in roles.items()}
    return sha256_bytes(dumps_canonical({"tokenizer": content, "roles": roles}).encode())


def check_same_tokenizer(a_fingerprint: str, b_fingerprint: str, *, what: str) -> None:
    """FailedPreconditionError unless the two fingerprints are equal (e.g. a model's and its data's)."""
    if a_fingerprint != b_fingerprint:
        raise FailedPreconditionError(f"{what}: tokenizer mismatch: {a_fingerprint} != {b_fingerprint}; "
                                      f"tokens of one mean different text under the other")


def roundtrip_rate(tok: Any, texts: Sequence[str]) -> float:
    """Share of texts with decode(encode(t)) == t (gate metric datasets/tokenizer_roundtrip_rate).

    Special tokens are kept when decoding and no space cleanup is applied: the metric is about the
    tokenizer losing nothing, not about display.
    """
    texts = list(texts)
    if not texts:
        raise InvalidSpecError("no texts: a round-trip rate over nothing is not a measurement", field="texts")
    backend = _backend(tok)
    ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    back = backend.decode_batch(ids, skip_special_tokens=False)
    return sum(a == b for a, b in zip(texts, back, strict=True)) / len(texts)

"""The local Hugging Face backend on a tiny random GPT-2 saved to disk, offline.

Its output is garbage: every reply must be counted by reason and nothing malformed may come out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from services.reasoning_data.core import format as F
from services.reasoning_data.core.local_backend import PROMPT_TOO_LONG, LocalHFBackend, format_prompt
from services.reasoning_data.core.prompts import EMPTY_REPLY, NO_ANSWER, build_messages, parse_reply
from shared.data.records import Record
from shared.data.special_tokens import add_special_tokens
from shared.data.tokenizer import train_bpe_tokenizer
from shared.errors import AcceleratorUnavailableError, InvalidSpecError, NotFoundError

RECORDS = [Record(id=f"GSM8K/t-{i}", dataset="GSM8K", category="math", split="train",
                  prompt=f"Sam has {i + 2} pens and finds {i + 5} more. How many pens now?", answer=str(2 * i + 7))
           for i in range(5)]
LM = Record(id="WikiText/1", dataset="WikiText", category="language", split="train", text="Some text.")
# Every way parse_reply can turn down a reply (format's reasons and the parser's own), plus the backend's.
KNOWN_REASONS = {F.NO_WRAPPER, F.NO_STRATEGY_TOKEN, F.WRONG_STRATEGY_TOKEN, F.EMPTY_ANSWER, F.EMPTY_PROMPT,
                 F.WRONG_ANSWER, F.NESTED_WRAPPER, EMPTY_REPLY, NO_ANSWER, PROMPT_TOO_LONG}
MAX_NEW = 12


def save_tiny_gpt2(directory: Path, *, n_positions: int = 1024, specials: bool = True,
                   chat_template: str | None = None) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = [m["content"] for r in RECORDS for s in F.STRATEGIES for m in build_messages(r, s)]
    tok = train_bpe_tokenizer(corpus, vocab_size=400)
    if specials:
        add_special_tokens(tok)
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    # A large init spread makes greedy output vary from prompt to prompt (the default one repeats a token).
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=1, n_head=2,
                     initializer_range=0.5,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"      # nothing here may reach the hub
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def teacher(model_dir):
    return LocalHFBackend(model_dir, max_new_tokens=MAX_NEW, batch_size=2)


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(NotFoundError, match=str(missing)):
        LocalHFBackend(missing)


def test_directory_without_a_model_is_named(tmp_path):
    with pytest.raises(NotFoundError, match="config.json"):
        LocalHFBackend(tmp_path)


@pytest.mark.parametrize("kwargs,field", [({"max_new_tokens": 0}, "max_new_tokens"),
                                          ({"batch_size": 0}, "batch_size"),
                                          ({"temperature": -1}, "temperature"),
                                          ({"device": "abacus"}, "device")])
def test_bad_arguments_name_the_field(model_dir, kwargs, field):
    with pytest.raises(InvalidSpecError) as err:
        LocalHFBackend(model_dir, **kwargs)
    assert err.value.field == field


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_clear_error(model_dir):
    with pytest.raises(AcceleratorUnavailableError, match="cpu"):
        LocalHFBackend(model_dir, device="cuda")


def test_unknown_strategy_is_refused_before_generating(teacher):
    with pytest.raises(InvalidSpecError):
        teacher.generate(RECORDS, "vibes")


def test_random_model_output_is_counted_never_emitted_malformed(teacher):
    result = teacher.generate([*RECORDS, LM], "step")
    assert result.calls == len(RECORDS)                  # the language record is not sent
    assert len(result.examples) + sum(result.rejections.values()) == len(RECORDS) + 1
    assert result.rejections[F.EMPTY_PROMPT] == 1
    assert set(result.rejections) <= KNOWN_REASONS
    assert all(F.check_example(e) is None for e in result.examples)
    assert result.billed_usd == 0 and result.retries == 0 and result.refused_by_budget == 0
    assert 0 < result.completion_tokens <= MAX_NEW * len(RECORDS)
    assert result.prompt_tokens == sum(len(teacher.prompt_ids(r, "step")) for r in RECORDS)


def test_batched_generation_equals_one_at_a_time(model_dir, teacher):
    """Left padding must not change what greedy decoding writes for a prompt."""
    prompts = [teacher.prompt_ids(r, s) for r, s in zip(RECORDS, F.STRATEGIES)]
    assert len({len(p) for p in prompts}) > 1            # different lengths, so rows really are padded
    single = LocalHFBackend(model_dir, max_new_tokens=MAX_NEW, batch_size=1).complete(prompts)
    batched = LocalHFBackend(model_dir, max_new_tokens=MAX_NEW, batch_size=len(prompts)).complete(prompts)
    assert batched == single


def test_prompt_longer_than_the_context_is_a_counted_rejection(tmp_path):
    short = save_tiny_gpt2(tmp_path / "short", n_positions=64)
    result = LocalHFBackend(short, max_new_tokens=MAX_NEW).generate(RECORDS, "mece")
    assert result.rejections == {PROMPT_TOO_LONG: len(RECORDS)} and result.calls == 0


def test_plain_prompt_without_a_chat_template(teacher):
    text, templated = format_prompt(teacher.tokenizer, build_messages(RECORDS[0], "doubt"))
    assert not templated
    assert text.startswith("System: ") and "\n\nUser: Question:\n" + RECORDS[0].prompt in text
    assert text.endswith("Assistant: ")


def test_chat_template_is_used_when_the_tokenizer_has_one(tmp_path):
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    d = save_tiny_gpt2(tmp_path / "chat", chat_template=template)
    teacher = LocalHFBackend(d, max_new_tokens=4)
    messages = build_messages(RECORDS[0], "doubt")
    text, templated = format_prompt(teacher.tokenizer, messages)
    assert templated
    assert text == f"<|system|>{messages[0]['content']}\n<|user|>{messages[1]['content']}\n<|assistant|>"
    assert teacher.generate(RECORDS[:1], "doubt").calls == 1


@pytest.mark.parametrize("strategy", F.STRATEGIES)
def test_special_tokens_survive_decoding_so_good_replies_parse(teacher, strategy):
    """The teacher's tokenizer holds the 12 tokens as special tokens: decoding must keep them."""
    tok = teacher.tokenizer
    assert tok.convert_tokens_to_ids(F.THINKING_OPEN) != tok.unk_token_id
    st = F.strategy_token(strategy)
    reply = f"[thinking] {st} 2 pens plus 5 pens. {st} 2 + 5 = 7. [/endthinking]\nAnswer: 7"
    ids = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + [tok.pad_token_id] * 3
    text, used = teacher.decode_reply(ids)
    assert used == len(ids) - 3                           # counted up to and including the eos
    example, reason = parse_reply(text, RECORDS[0], strategy, teacher.origin)
    assert reason is None
    assert example.verified and example.answer == "7" and F.check_example(example) is None
    assert example.origin == f"local:{teacher.model_dir}"

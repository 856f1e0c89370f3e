"""GSM8K exact match: greedy generation from a fixed prompt, the final number of the output against the gold.

Prompt (lm-evaluation-harness `gsm8k`): an optional few-shot prefix, then "Question: {q}\\nAnswer:". The
output is cut at the first eos and at the first stop string ("Question:" by default, where a model that
learnt the few-shot format starts the next item), then `extract_final_number` reads the answer: the number
after "####" when the output has one (lm-eval's strict match), else the last number in it (its flexible
match). Both sides are compared in a canonical form, so "1,234.00", "$1234" and "1234" all match "1234".
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation
from typing import Iterable, Sequence

import torch

from shared.data.records import Record
from shared.errors import InvalidSpecError
from shared.evaluation.lm import (LanguageModel, Tokenizer, context_limit, encode, generate_tokens,
                                  greedy_generate_many, has_cache)
from shared.evaluation.subset import first_n

log = logging.getLogger(__name__)

# A minus sign counts only when it touches the number and does not follow a word or a number ("16-3" and
# "20 - 5" end in 5, not -5); the integer part is digits with optional thousands commas; a "." is decimal
# only when digits follow it, so the full stop in "is 1,234." is not part of the number.
_NUMBER = re.compile(r"(?<![\w.])(-)?(?:\$\s?)?(\d[\d,]*(?:\.\d+)?)")
_MARKER = "####"


def canonical_number(sign: str, digits: str) -> str | None:
    """"-", "1,234.50" -> "-1234.5": commas dropped, integral values without decimals, no trailing zeros."""
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    if sign:
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(text: str) -> str | None:
    """The answer in `text` as a canonical number string (see `canonical_number`), or None if it has none.

    The first number after the first "####" when there is one, else the last number in the text; "$", commas
    and a trailing ".0" or "." do not matter.
    """
    marker = text.find(_MARKER)
    if marker >= 0:
        match = _NUMBER.search(text, marker + len(_MARKER))
        if match:
            return canonical_number(match.group(1) or "", match.group(2))
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    sign, digits = matches[-1]
    return canonical_number(sign, digits)


def gsm8k_prompt(question: str, fewshot: str = "") -> str:
    return f"{fewshot}Question: {question.strip()}\nAnswer:"


def fewshot_prefix(examples: Sequence[Record]) -> str:
    """A few-shot prefix from solved records: "Question: {q}\\nAnswer: {rationale}\\n#### {answer}\\n\\n"
    each (the rationale's own "####" line is kept when it has one)."""
    parts = []
    for record in examples:
        solution = record.rationale.strip()
        if _MARKER not in solution:
            solution = f"{solution}\n{_MARKER} {record.answer}".strip()
        parts.append(f"{gsm8k_prompt(record.prompt)} {solution}\n\n")
    return "".join(parts)


def evaluate_gsm8k(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record], *,
                   max_new_tokens: int = 256, limit: int | None = None, fewshot: str = "",
                   stop: Sequence[str] = ("Question:",), max_length: int | None = None,
                   eos_token_id: int | None = None, batch_size: int = 8) -> dict[str, float]:
    """exact_match (share of records whose extracted number equals the gold), answered (share whose output
    had any number) and n. `limit` takes the first N records in natural id order. Greedy decoding: the
    model's `generate` when it has a KV cache, else `greedy_generate_many` over `batch_size` prompts."""
    chosen = first_n(records, limit)
    if not chosen:
        raise InvalidSpecError("no records to evaluate: an unmeasured metric must not pass a gate",
                               field="records")
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    limit_tokens = context_limit(model, max_length)
    if limit_tokens is not None and limit_tokens <= max_new_tokens:
        raise InvalidSpecError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a "
                               f"context of {limit_tokens} tokens", field="max_new_tokens")

    def should_stop(new_ids: list[int]) -> bool:
        text = tokenizer.decode(new_ids)
        return any(s in text for s in stop)

    golds, prompts = [], []
    for record in chosen:
        gold = extract_final_number(record.answer)
        if gold is None:
            raise InvalidSpecError(f"{record.id}: the gold answer {record.answer!r} is not a number",
                                   field="answer")
        prompt_ids = encode(tokenizer, gsm8k_prompt(record.prompt, fewshot))
        if limit_tokens is not None:
            prompt_ids = prompt_ids[-(limit_tokens - max_new_tokens):]  # drop few-shot text first
        golds.append(gold)
        prompts.append(prompt_ids)
    if has_cache(model):     # the model's own generate, one prompt at a time, its KV cache doing the work
        outputs = [generate_tokens(model, torch.tensor([p], dtype=torch.long), max_new_tokens, eos,
                                   max_length=limit_tokens, should_stop=should_stop)[0] for p in prompts]
    else:                    # no cache: batched right-padded greedy decoding (exact for a causal model)
        outputs = greedy_generate_many(model, prompts, max_new_tokens, eos, max_length=limit_tokens,
                                       should_stop=should_stop, batch_size=batch_size)
    correct = answered = 0
    for gold, new_ids in zip(golds, outputs, strict=True):
        text = tokenizer.decode(new_ids)
        for s in stop:
            text = text.split(s, 1)[0]
        predicted = extract_final_number(text)
        answered += predicted is not None
        correct += predicted == gold
    n = len(chosen)
    log.info("gsm8k: exact match %.4f, answered %.4f (n=%d)", correct / n, answered / n, n)
    return {"exact_match": correct / n, "answered": answered / n, "n": n}

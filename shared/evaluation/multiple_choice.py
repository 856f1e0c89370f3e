"""Multiple-choice scoring by log-likelihood (the lm-evaluation-harness `multiple_choice` task type).

Each record becomes a context and one continuation per choice; the prediction is the choice whose
continuation the model finds most likely:

    accuracy       argmax_i  log p(continuation_i | context)
    accuracy_norm  argmax_i  log p(continuation_i | context) / len_i

with len_i, by `normalize`: "chars" (default, lm-eval's acc_norm) the number of characters of the choice
text, i.e. the continuation without its leading delimiter space; "length" its number of tokens; "none"
len_i = 1, so accuracy_norm == accuracy.

Ties: a k-way tie for the top score that includes the gold choice earns 1/k (the expected accuracy of a
random tie-break), one that excludes it earns 0. A constant model therefore scores exactly `chance`,
never the share of gold labels at position 0 that "pick the first" would give it. Only continuation
tokens are scored (never "the answer ends here"), so a choice that is a prefix of the gold ties with it
under a model sure of the gold.

`gold_nll` (nats per token of the gold continuations) is reported too: it moves smoothly while accuracy is
still at chance, which is what the gates' "drop" tests need (DESIGN §7).

A record with a choice longer than the context (`max_length`, else the model's) cannot be scored fairly —
cutting that choice would compare it with the others on fewer tokens — so it is left out and counted in
`skipped`; `n` counts the records scored. When none fits, the benchmark is not measured (an error).

Templates follow lm-eval's prompts and assume the adapters keep `Record.prompt` bare (the question, goal
or context, without choices listed in it).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Literal, Sequence

from shared.data.records import Record
from shared.errors import InvalidSpecError
from shared.evaluation.lm import LanguageModel, Tokenizer, context_limit, loglikelihoods
from shared.evaluation.subset import first_n

log = logging.getLogger(__name__)

Normalize = Literal["chars", "length", "none"]
NORMALIZE: tuple[str, ...] = ("chars", "length", "none")
# Scores this close (nats, or nats per char/token) are a tie: batching order must not break one.
TIE_TOLERANCE = 1e-6

# record -> (context, continuations, index of the gold continuation)
Template = Callable[[Record], tuple[str, list[str], int]]


def _choices(record: Record) -> tuple[list[str], int]:
    if not record.choices or record.label is None:
        raise InvalidSpecError(f"{record.id}: a multiple-choice record needs choices and a label",
                               field="choices")
    return [" " + c.strip() for c in record.choices], record.label


def question_answer_template(record: Record) -> tuple[str, list[str], int]:
    """ARC, CommonsenseQA: "Question: {q}\\nAnswer:" + " {choice}"."""
    continuations, label = _choices(record)
    return f"Question: {record.prompt.strip()}\nAnswer:", continuations, label


def piqa_template(record: Record) -> tuple[str, list[str], int]:
    """PIQA: "Question: {goal}\\nAnswer:" + " {solution}"."""
    return question_answer_template(record)


def hellaswag_template(record: Record) -> tuple[str, list[str], int]:
    """HellaSwag: "{ctx}" + " {ending}" (the adapter does lm-eval's ctx_a + ctx_b clean-up)."""
    continuations, label = _choices(record)
    return record.prompt.strip(), continuations, label


_YES, _NO = {"yes", "true"}, {"no", "false"}


def _yes_no(word: str, record: Record) -> bool:
    word = word.strip().lower()
    if word not in _YES | _NO:
        raise InvalidSpecError(f"{record.id}: BoolQ expects yes/no or true/false, got {word!r}",
                               field="answer")
    return word in _YES


def boolq_template(record: Record) -> tuple[str, list[str], int]:
    """BoolQ: "{passage}\\nQuestion: {q}?\\nAnswer:" + " no" / " yes".

    The passage is `meta["passage"]` with the question in `prompt`; without one, `prompt` is taken to
    hold both. The gold comes from label + choices when the record has choices, else from `answer`.
    """
    passage = str(record.meta.get("passage", "")).strip()
    question = record.prompt.strip()
    text = f"{passage}\nQuestion: {question}" if passage else question
    gold = (_yes_no(record.choices[record.label], record) if record.choices and record.label is not None
            else _yes_no(record.answer, record))
    return f"{text.rstrip('?')}?\nAnswer:", [" no", " yes"], int(gold)


TEMPLATES: dict[str, Template] = {
    "ARC-Easy": question_answer_template,
    "ARC-Challenge": question_answer_template,
    "CommonsenseQA": question_answer_template,
    "PIQA": piqa_template,
    "HellaSwag": hellaswag_template,
    "BoolQ": boolq_template,
}


def above_chance(accuracy: float, chance: float) -> float:
    """How much of the gap from chance to perfect the model closes, floored at 0:
    max(0, (accuracy - chance) / (1 - chance)). 0 at or below chance, 1 at 100%."""
    if not 0.0 <= chance < 1.0:
        raise InvalidSpecError(f"must be in [0, 1), got {chance}", field="chance")
    if not 0.0 <= accuracy <= 1.0:
        raise InvalidSpecError(f"must be in [0, 1], got {accuracy}", field="accuracy")
    return max(0.0, (accuracy - chance) / (1.0 - chance))


def _credit(scores: Sequence[float], gold: int) -> float:
    """1/k when the gold is among the k top scores, else 0 (see the module docstring)."""
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s >= best - TIE_TOLERANCE]
    return 1.0 / len(top) if gold in top else 0.0


def _norm_length(continuation: str, tokens: int, normalize: str) -> float:
    if normalize == "chars":
        return float(max(1, len(continuation.lstrip())))
    if normalize == "length":
        return float(tokens)
    return 1.0


def evaluate_multiple_choice(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record], *,
                             template: Template | None = None, normalize: Normalize = "chars",
                             limit: int | None = None, batch_size: int = 8,
                             max_length: int | None = None) -> dict[str, float]:
    """accuracy, accuracy_norm, gold_nll, chance (mean 1/#choices) and n over `records`, and `skipped`:
    the records left out because a choice is longer than the context (module docstring).

    `template` None uses each record's dataset template from TEMPLATES; `limit` takes the first N records
    in natural id order.
    """
    if normalize not in NORMALIZE:
        raise InvalidSpecError(f"must be one of {', '.join(NORMALIZE)}, got {normalize!r}",
                               field="normalize")
    chosen = first_n(records, limit)
    if not chosen:
        raise InvalidSpecError("no records to evaluate: an unmeasured metric must not pass a gate",
                               field="records")
    items = []  # (record id, continuations, gold, index of the first request)
    requests: list[tuple[str, str]] = []
    for record in chosen:
        fmt = template or TEMPLATES.get(record.dataset)
        if fmt is None:
            raise InvalidSpecError(f"{record.id}: no multiple-choice template for dataset "
                                   f"{record.dataset!r}; known: {', '.join(TEMPLATES)}", field="dataset")
        context, continuations, gold = fmt(record)
        if len(continuations) < 2:
            raise InvalidSpecError(f"{record.id}: needs at least two choices", field="choices")
        items.append((record.id, continuations, gold, len(requests)))
        requests.extend((context, c) for c in continuations)

    scored = loglikelihoods(model, tokenizer, requests, max_length=max_length, batch_size=batch_size,
                            skip_too_long=True)
    fits = [all(r is not None for r in scored[first:first + len(continuations)])
            for _, continuations, _, first in items]
    skipped = [item[0] for item, ok in zip(items, fits) if not ok]
    items = [item for item, ok in zip(items, fits) if ok]
    if skipped:
        room = context_limit(model, max_length)
        if not items:
            raise InvalidSpecError(f"every one of the {len(chosen)} records has a choice longer than the context "
                                   f"of {room} tokens: nothing to score (give a longer max_length)",
                                   field="max_length")
        log.warning("%d of %d records left out: a choice is longer than the context of %d tokens (first: %s)",
                    len(skipped), len(chosen), room, ", ".join(skipped[:3]))
    acc = acc_norm = chance = gold_logprob = 0.0
    gold_tokens = 0
    for _, continuations, gold, first in items:
        results = scored[first:first + len(continuations)]
        acc += _credit([r.logprob for r in results], gold)
        acc_norm += _credit([r.logprob / _norm_length(c, r.tokens, normalize)
                             for c, r in zip(continuations, results)], gold)
        chance += 1.0 / len(continuations)
        gold_logprob += results[gold].logprob
        gold_tokens += results[gold].tokens
    n = len(items)
    return {"accuracy": acc / n, "accuracy_norm": acc_norm / n, "gold_nll": -gold_logprob / gold_tokens,
            "chance": chance / n, "n": n, "skipped": len(skipped)}


def _evaluate_dataset(name: str, datasets: tuple[str, ...], template: Template, model: LanguageModel,
                      tokenizer: Tokenizer, records: Iterable[Record], **kwargs) -> dict[str, float]:
    records = list(records)
    foreign = sorted({r.dataset for r in records} - set(datasets))
    if foreign:
        raise InvalidSpecError(f"{name} scores {', '.join(datasets)} records, got {', '.join(foreign)}",
                               field="records")
    result = evaluate_multiple_choice(model, tokenizer, records, template=template, **kwargs)
    log.info("%s: accuracy %.4f, accuracy_norm %.4f, chance %.4f (n=%d, %d left out as too long)", name,
             result["accuracy"], result["accuracy_norm"], result["chance"], result["n"], result["skipped"])
    return result


def evaluate_arc(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record],
                 **kwargs) -> dict[str, float]:
    """ARC-Easy / ARC-Challenge; keyword arguments as evaluate_multiple_choice."""
    return _evaluate_dataset("arc", ("ARC-Easy", "ARC-Challenge"), question_answer_template, model,
                             tokenizer, records, **kwargs)


def evaluate_piqa(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record],
                  **kwargs) -> dict[str, float]:
    """PIQA; keyword arguments as evaluate_multiple_choice."""
    return _evaluate_dataset("piqa", ("PIQA",), piqa_template, model, tokenizer, records, **kwargs)


def evaluate_hellaswag(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record],
                       **kwargs) -> dict[str, float]:
    """HellaSwag; keyword arguments as evaluate_multiple_choice."""
    return _evaluate_dataset("hellaswag", ("HellaSwag",), hellaswag_template, model, tokenizer, records,
                             **kwargs)


def evaluate_boolq(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record],
                   **kwargs) -> dict[str, float]:
    """BoolQ; keyword arguments as evaluate_multiple_choice."""
    return _evaluate_dataset("boolq", ("BoolQ",), boolq_template, model, tokenizer, records, **kwargs)


def evaluate_commonsense_qa(model: LanguageModel, tokenizer: Tokenizer, records: Iterable[Record],
                            **kwargs) -> dict[str, float]:
    """CommonsenseQA; keyword arguments as evaluate_multiple_choice."""
    return _evaluate_dataset("commonsense_qa", ("CommonsenseQA",), question_answer_template, model,
                             tokenizer, records, **kwargs)

"""Per-epoch validation of Prompt Baking: what "the model has learned the reasoning format" means, measured.

On held-out examples (the reasoning data's `val` split: its source items never appear in training; each
example is one (source item, strategy) pair):

- **format_adherence** — the model is given `{prompt}\\n` (exactly the training prefix, see
  `services.quietstar.core.baking.encode_prompt`) and *writes on its own*: no forced prefix (not even
  `[thinking]`), no logits processor, no bad-words / forced-token / min-length settings, no truncation.
  Greedy decoding when `temperature == 0` (the default: a deterministic number) — the argmax of the
  model's eval-mode logits at every step, batched by right-padding (`greedy_generate_many`) — otherwise
  plain temperature sampling through the model's own `generate` with a fresh `GenerationConfig` holding
  only the length, eos/pad and the temperature (top_k 0, top_p 1). An output adheres when (`parse_output`):
  after leading whitespace it starts with `[thinking]`; `[thinking]` and `[/endthinking]` occur exactly
  once each, in that order; between them is at least one of the 10 strategy tokens; and after
  `[/endthinking]` the next non-blank text is `Answer:` followed by a non-empty answer on that line. The
  output is the new tokens up to (not including) the first eos, decoded with special tokens kept.
- **answer_accuracy** — on the same outputs: the text after `Answer:` on that line (the one after
  `[/endthinking]` when there is one, else the first `Answer:` line anywhere) matches the gold
  (`answers_match`: numbers as numbers, yes/no normalised); the gold is the example's `gold` field when
  non-empty, else its `answer`. An output without an `Answer:` line is wrong.
- **token_accuracy** — teacher-forced next-token accuracy (argmax, eval mode so per-token halting as at
  inference) on the reasoning span: the targets are the tokens of `[thinking] … [/endthinking]` given the
  prompt and the reasoning before them; the answer line is not part of it.

Each is reported overall and per strategy (the examples of that strategy). The prompt does not tell the
model which strategy to use, so under greedy decoding two examples of one source item get the same output
(it is generated once and reused); their per-strategy generation metrics differ by which items carry that
strategy. `strategy_usage_<s>` adds which strategies the model itself chose: the fraction of evaluated
outputs that adhere and contain `<s>`.

Metric names (`shared.telemetry.metric_names`): `baking/format_adherence`, `baking/answer_accuracy`,
`baking/token_accuracy`, `baking/val_accuracy` (the checklist's name; = answer_accuracy),
`baking/accuracy_<strategy>` (the checklist's per-strategy name: answer accuracy),
`baking/format_adherence_<strategy>`, `baking/token_accuracy_<strategy>`, `baking/strategy_usage_<strategy>`
and `baking/eval_items`.

Cost: `limit` examples at most (chosen round-robin over strategies so every strategy present gets items,
then by id; deterministic), `max_new_tokens` each. Greedy decoding batches all prompts (right-padded, each
row read at its own last position: the model is causal, so the padding after a row cannot change it);
sampling batches prompts of equal token length (no padding).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from services.reasoning_data.core.format import answers_match
from shared.data.special_tokens import STRATEGIES, STRATEGY_TOKENS, THINKING_CLOSE, THINKING_OPEN
from shared.errors import InvalidSpecError
from shared.evaluation.lm import device_of, evaluating, greedy_generate_many
from shared.telemetry.metric_names import BAKING_VAL_ACCURACY, baking_accuracy

__all__ = [
    "ANSWER_ACCURACY", "FORMAT_ADHERENCE", "ParsedOutput", "TOKEN_ACCURACY", "evaluate", "evaluate_baking",
    "SHORT_QUESTIONS", "checklist_passed", "measure_token_usage", "parse_output", "sample_outputs", "select_items",
    "short_question_outputs",
]

FORMAT_ADHERENCE = "baking/format_adherence"
ANSWER_ACCURACY = "baking/answer_accuracy"
TOKEN_ACCURACY = "baking/token_accuracy"
EVAL_ITEMS = "baking/eval_items"

# The checklist's post-Phase-4 test prompt first, then more short sums of the same kind (every operator the
# reasoning data's short questions use), so "the model answers short questions in the format" is a rate over
# several prompts and not one greedy output.
SHORT_QUESTIONS = ("What is 2+2?", "What is 3+5?", "What is 7*6?", "What is 10-4?", "What is 9/3?",
                   "What is 12+7?", "What is 8*2?", "What is 15-6?", "What is 4+4?", "What is 6*3?",
                   "What is 20/5?", "What is 1+1?")

_ANSWER_LINE = re.compile(r"(?m)^[ \t]*Answer:[ \t]*([^\n]*)")
_AFTER_CLOSE = re.compile(r"\s*Answer:[ \t]*([^\n]*)")


def format_adherence_name(strategy: str) -> str:
    return f"{FORMAT_ADHERENCE}_{strategy}"


def token_accuracy_name(strategy: str) -> str:
    return f"{TOKEN_ACCURACY}_{strategy}"


def strategy_usage_name(strategy: str) -> str:
    return f"baking/strategy_usage_{strategy}"


@dataclass(frozen=True)
class ParsedOutput:
    adherent: bool
    answer: str | None           # the text of the Answer: line, None when there is none
    strategies: tuple[str, ...]  # strategy names (bare) inside the wrapper, in order of first use
    has_wrapper: bool            # one [thinking] … [/endthinking], in order (the thinking_token_usage test)


def parse_output(text: str) -> ParsedOutput:
    """Judge one generated continuation (see the module docstring for the rules)."""
    s = text.lstrip()
    opens, closes = s.count(THINKING_OPEN), s.count(THINKING_CLOSE)
    has_wrapper = opens == 1 and closes == 1 and s.index(THINKING_OPEN) < s.index(THINKING_CLOSE)
    strategies: tuple[str, ...] = ()
    answer = None
    adherent = False
    if has_wrapper:
        start, end = s.index(THINKING_OPEN) + len(THINKING_OPEN), s.index(THINKING_CLOSE)
        inner = s[start:end]
        found = sorted((inner.index(tok), name) for tok, name in zip(STRATEGY_TOKENS, STRATEGIES) if tok in inner)
        strategies = tuple(name for _, name in found)
        m = _AFTER_CLOSE.match(s, end + len(THINKING_CLOSE))
        if m is not None:
            answer = m.group(1).strip()
        adherent = (s.startswith(THINKING_OPEN) and bool(strategies) and m is not None and bool(answer))
    if answer is None:
        m = _ANSWER_LINE.search(s)
        if m is not None:
            answer = m.group(1).strip()
    return ParsedOutput(adherent=adherent, answer=answer, strategies=strategies, has_wrapper=has_wrapper)


def _gold(example: Mapping[str, Any]) -> str:
    gold = str(example.get("gold") or "").strip()
    return gold if gold else str(example["answer"])


def select_items(examples: Sequence[Mapping[str, Any]], limit: int | None) -> list[Mapping[str, Any]]:
    """At most `limit` examples (None or 0: all), round-robin over strategies (in STRATEGIES order), each
    strategy's examples by id: every strategy present gets ⌊limit / strategies⌋ or more items."""
    if limit is not None and limit < 0:
        raise InvalidSpecError(f"must be >= 0, got {limit}", field="limit")
    by_strategy: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ex in examples:
        by_strategy[ex["strategy"]].append(ex)
    queues = [sorted(by_strategy[s], key=lambda e: str(e["id"])) for s in
              sorted(by_strategy, key=lambda s: (STRATEGIES.index(s) if s in STRATEGIES else len(STRATEGIES), s))]
    out: list[Mapping[str, Any]] = []
    cap = len(examples) if not limit else min(limit, len(examples))
    depth = 0
    while len(out) < cap:
        for q in queues:
            if depth < len(q) and len(out) < cap:
                out.append(q[depth])
        depth += 1
    return out


def _generation_config(tokenizer: Any, max_new_tokens: int, temperature: float) -> GenerationConfig:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if temperature > 0:
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=float(temperature),
                                top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad, use_cache=False)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                            use_cache=False)


def sample_outputs(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 0, batch_size: int = 16) -> list[list[int]]:
    """Unconstrained continuations of each prompt: the new token ids up to (not including) the first eos.
    Greedy (temperature 0): argmax decoding of the model's logits (`greedy_generate_many`, prompts of any
    length batched by right-padding, a repeated prompt decoded once). Sampling: the model's own `generate`,
    prompts of equal length sharing a batch (no padding). No processor, forced token or truncation either
    way. The caller's RNG state is left as it was (sampling uses `seed`)."""
    if max_new_tokens < 1:
        raise InvalidSpecError(f"must be >= 1, got {max_new_tokens}", field="max_new_tokens")
    if temperature < 0:
        raise InvalidSpecError(f"must be >= 0, got {temperature}", field="temperature")
    eos = tokenizer.eos_token_id
    config = _generation_config(tokenizer, max_new_tokens, temperature)
    device = device_of(model)
    keys = [tuple(int(t) for t in p) for p in prompts]
    if any(len(k) == 0 for k in keys):
        raise InvalidSpecError("every prompt needs at least one token", field="prompts")
    # Greedy: one decode per distinct prompt. Sampling: one draw per prompt occurrence.
    if temperature == 0:
        # Greedy: rows of any length in one batch, right-padded, each read at its own last position (exact
        # for this causal model: padding after a row cannot change it) — one forward per new token for the
        # whole batch instead of one per group of equal-length prompts.
        distinct = sorted(set(keys))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        with evaluating(model):
            outs = greedy_generate_many(model, distinct, max_new_tokens, eos, batch_size=max(batch_size, 1),
                                        pad_id=pad)
        found = dict(zip(distinct, outs))
        return [list(found[k]) for k in keys]
    jobs = list(range(len(keys)))
    by_length: dict[int, list] = defaultdict(list)
    for job in jobs:
        by_length[len(job if temperature == 0 else keys[job])].append(job)
    results: dict[Any, list[int]] = {}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), evaluating(model):
        torch.manual_seed(seed)
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                rows = [list(job if temperature == 0 else keys[job]) for job in chunk]
                ids = torch.tensor(rows, dtype=torch.long, device=device)
                out = model.generate(ids, generation_config=config)
                out = getattr(out, "sequences", out)
                for job, row in zip(chunk, out[:, length:].tolist()):
                    if eos is not None and eos in row:
                        row = row[:row.index(eos)]
                    results[job] = row
    return [results[k] if temperature == 0 else results[i] for i, k in enumerate(keys)]


def _token_accuracy(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]], max_seq_len: int,
                    batch_size: int) -> list[tuple[int, int]]:
    """Per item (correct, total) argmax hits on the reasoning span, teacher-forced, eval mode."""
    from services.quietstar.core.baking import encode_example, pad_batch

    encoded = [encode_example(tokenizer, ex, max_seq_len) for ex in items]
    out: list[tuple[int, int]] = [(0, 0)] * len(items)
    kept = [(i, e) for i, e in enumerate(encoded) if e is not None]
    device = device_of(model)
    with evaluating(model):
        for start in range(0, len(kept), batch_size):
            chunk = kept[start:start + batch_size]
            batch = pad_batch([e for _, e in chunk], tokenizer, span="reasoning")
            ids, targets = batch["input_ids"].to(device), batch["labels"].to(device)
            logits = model(ids).logits
            pred = logits[:, :-1].argmax(-1)
            tgt = targets[:, 1:]
            valid = tgt != -100
            hits = ((pred == tgt) & valid).sum(1).tolist()
            totals = valid.sum(1).tolist()
            for (i, _), h, n in zip(chunk, hits, totals):
                out[i] = (int(h), int(n))
    return out


def evaluate_baking(model: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]], *, limit: int | None = 32,
                    max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                    max_seq_len: int | None = None, batch_size: int = 16) -> dict[str, float]:
    """The baking metrics of `model` on held-out `examples` (dicts of the reasoning-data artifact); see the
    module docstring. Returns {metric name: value}; nothing is trained and the model's modes are restored."""
    from services.quietstar.core.baking import encode_prompt

    if not examples:
        raise InvalidSpecError("no validation examples to evaluate on", field="examples")
    seq_len = int(max_seq_len or getattr(model.config, "max_seq_len", 0) or 1024)
    items = select_items(examples, limit)
    room = max(1, seq_len - max_new_tokens)   # the prompt is cropped from the left to leave room to answer
    prompts = [encode_prompt(tokenizer, ex)[-room:] for ex in items]
    outputs = sample_outputs(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                             seed=seed, batch_size=batch_size)
    parsed = [parse_output(tokenizer.decode(o, skip_special_tokens=False)) for o in outputs]
    tok_acc = _token_accuracy(model, tokenizer, items, seq_len, batch_size)

    def summarise(idx: list[int], suffix: str = "") -> dict[str, float]:
        n = len(idx)
        adh = sum(parsed[i].adherent for i in idx) / n
        acc = sum(parsed[i].answer is not None and answers_match(parsed[i].answer, _gold(items[i]))
                  for i in idx) / n
        hits, total = sum(tok_acc[i][0] for i in idx), sum(tok_acc[i][1] for i in idx)
        tacc = hits / total if total else 0.0
        if not suffix:
            return {FORMAT_ADHERENCE: adh, ANSWER_ACCURACY: acc, BAKING_VAL_ACCURACY: acc, TOKEN_ACCURACY: tacc}
        return {format_adherence_name(suffix): adh, baking_accuracy(suffix): acc, token_accuracy_name(suffix): tacc}

    all_idx = list(range(len(items)))
    metrics = summarise(all_idx)
    metrics[EVAL_ITEMS] = float(len(items))
    present = sorted({ex["strategy"] for ex in items}, key=lambda s: STRATEGIES.index(s) if s in STRATEGIES else 99)
    for s in present:
        metrics.update(summarise([i for i in all_idx if items[i]["strategy"] == s], s))
        metrics[strategy_usage_name(s)] = sum(p.adherent and s in p.strategies for p in parsed) / len(items)
    return metrics


# The checklist's name: `evaluate(model, val_data)`.
def evaluate(model: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]], **kwargs: Any) -> dict[str, float]:
    """The checklist's `evaluate(model, val_data)`: `evaluate_baking` (the tokenizer is needed to read text)."""
    return evaluate_baking(model, tokenizer, examples, **kwargs)


def measure_token_usage(model: Any, tokenizer: Any, prompts: Sequence[str], token: str = THINKING_OPEN, *,
                        max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> float:
    """The checklist's `measure_token_usage(model, "[thinking]")`: the fraction of unconstrained outputs
    (same sampler as format adherence) after each `{prompt}\\n` holding one `[thinking] … [/endthinking]`.
    Only `[thinking]` is supported as `token` (the wrapper is what is counted)."""
    from services.quietstar.core.baking import encode_prompt

    if token != THINKING_OPEN:
        raise InvalidSpecError(f"only {THINKING_OPEN!r} usage is measured, got {token!r}", field="token")
    if not prompts:
        raise InvalidSpecError("no prompts", field="prompts")
    ids = [encode_prompt(tokenizer, {"prompt": p}) for p in prompts]
    outs = sample_outputs(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return sum(parse_output(tokenizer.decode(o, skip_special_tokens=False)).has_wrapper for o in outs) / len(outs)


def checklist_passed(text: str) -> bool:
    """The checklist's end-to-end assertion on one output: `[thinking]` and `[/endthinking]` both in it."""
    return THINKING_OPEN in text and THINKING_CLOSE in text


def short_question_outputs(model: Any, tokenizer: Any, prompts: Sequence[str] = SHORT_QUESTIONS) -> list[str]:
    """Each prompt's greedy output (`{prompt}\\n` as baking trained, no forced token), given all the room the
    model's context leaves after it, decoded with the special tokens kept: what the checklist's test reads."""
    from services.quietstar.core.baking import encode_prompt

    if not prompts:
        raise InvalidSpecError("no prompts", field="prompts")
    texts = []
    for prompt in prompts:    # one at a time: each gets its own room
        ids = encode_prompt(tokenizer, {"prompt": prompt})
        room = int(model.config.max_seq_len) - len(ids)
        if room < 1:
            raise InvalidSpecError(f"{prompt!r} leaves no room in the model's context of "
                                   f"{model.config.max_seq_len} tokens", field="prompts")
        (out,) = sample_outputs(model, tokenizer, [ids], max_new_tokens=room, temperature=0.0)
        texts.append(tokenizer.decode(out, skip_special_tokens=False))
    return texts

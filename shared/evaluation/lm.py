"""The minimal model and tokenizer interface every scorer uses, and the two primitives built on it.

A model is anything callable as `model(input_ids)` with input_ids a LongTensor (B, T), returning logits
(B, T, V) directly, as a tuple whose first element is the logits, or as an object with `.logits` (a Hugging
Face ModelOutput). Generation uses the model's own `generate(input_ids, max_new_tokens=…, eos_token_id=…,
do_sample=False)` when it has one and our greedy loop otherwise. A tokenizer is anything with
`encode(str) -> list[int]`, `decode(list[int]) -> str` and, where an end-of-text token is needed,
`eos_token_id`.

`loglikelihoods` follows lm-evaluation-harness (`HFLM._encode_pair` / `_loglikelihood_tokens`):

- whitespace at the end of the context is moved to the front of the continuation, then the continuation's
  tokens are `encode(context + continuation)[len(encode(context)):]`, so "Answer:" + " yes" is split the
  way a BPE tokenizer merges the space into the word;
- an empty context is replaced by the end-of-text token, so the first continuation token has something to
  be predicted from;
- input = (context + continuation)[-(max_length + 1):][:-1]: the context is cut from the left, the last
  continuation token is only a target;
- `is_greedy` is true when every continuation token is the argmax of its position's logits.

Requests are batched with right padding. That is exact only for a causal model (position t never sees
t' > t), which every causal LM is; `batch_size=1` removes the assumption.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import torch
import torch.nn.functional as F

from shared.errors import InvalidSpecError


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class LanguageModel(Protocol):
    def __call__(self, input_ids: torch.Tensor) -> Any: ...


class LogLikelihood(NamedTuple):
    """Score of one continuation: sum of its tokens' log-probabilities (nats), their count, greedy or not."""

    logprob: float
    tokens: int
    is_greedy: bool


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; afterwards every submodule gets its own previous mode
    back (a frozen part kept in eval inside a training model stays in eval)."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if modes:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def device_of(model: Any) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def logits_of(model: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's logits (B, T, V) for input_ids (B, T), whatever container it returns them in."""
    out = model(input_ids)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise InvalidSpecError(f"the model must return logits of shape (B, T, V) for input (B, T) = "
                               f"{tuple(input_ids.shape)}; got {got}", field="model")
    return logits


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens: a Hugging Face tokenizer that adds a BOS by default
    would otherwise put one in the middle of every context + continuation pair."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[call-arg]
    except TypeError:
        return list(tokenizer.encode(text))


def eos_id(tokenizer: Any, override: int | None = None) -> int:
    """The end-of-text token id: `override` when given, else the tokenizer's; an error when neither."""
    eos = override if override is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise InvalidSpecError("the tokenizer has no eos_token_id; pass eos_token_id explicitly",
                               field="eos_token_id")
    return int(eos)


def context_limit(model: Any, max_length: int | None) -> int | None:
    """`max_length` when given, else the model config's context size (as lm-eval reads it), else None."""
    if max_length is not None:
        if max_length < 1:
            raise InvalidSpecError(f"must be >= 1, got {max_length}", field="max_length")
        return max_length
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_len"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str,
                eos_token_id: int | None = None) -> tuple[list[int], list[int]]:
    """Context and continuation token ids split the lm-eval way (see the module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        return [eos_id(tokenizer, eos_token_id)], encode(tokenizer, continuation)
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model: LanguageModel, tokenizer: Tokenizer, requests: Sequence[tuple[str, str]], *,
                   max_length: int | None = None, batch_size: int = 8,
                   eos_token_id: int | None = None, skip_too_long: bool = False) -> list[LogLikelihood | None]:
    """Score each (context, continuation): the continuation's log-probability given the context.

    A continuation longer than the context limit is an error, or with `skip_too_long` is not scored: None
    in its place."""
    if batch_size < 1:
        raise InvalidSpecError(f"must be >= 1, got {batch_size}", field="batch_size")
    limit = context_limit(model, max_length)
    items: dict[int, tuple[list[int], int]] = {}  # request index -> (input ids, number of continuation tokens)
    for index, (context, continuation) in enumerate(requests):
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation, eos_token_id)
        if not continuation_ids:
            raise InvalidSpecError(f"the continuation {continuation!r} has no tokens to score",
                                   field="continuation")
        if limit is not None and len(continuation_ids) > limit:
            if skip_too_long:
                continue
            raise InvalidSpecError(f"the continuation has {len(continuation_ids)} tokens, more than "
                                   f"max_length={limit}", field="max_length")
        whole = context_ids + continuation_ids
        if limit is not None:
            whole = whole[-(limit + 1):]
        items[index] = (whole, len(continuation_ids))

    # Longest first, so a batch pads little; results go back to request order.
    order = sorted(items, key=lambda i: -len(items[i][0]))
    results: list[LogLikelihood | None] = [None] * len(requests)
    device = device_of(model)
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(items[i][0]) - 1 for i in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids = items[i][0][:-1]
                inputs[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logits = logits_of(model, inputs.to(device))  # (B, T, V)
            for row, i in enumerate(chunk):
                ids, n = items[i]
                # Only the continuation's positions: a (B, T, V) log-softmax of a long passage with a
                # 50k vocabulary would cost gigabytes for a handful of targets.
                logprobs = F.log_softmax(logits[row, len(ids) - 1 - n:len(ids) - 1].float(), dim=-1)  # (n, V)
                target = torch.tensor(ids[-n:], dtype=torch.long, device=logprobs.device)
                picked = logprobs.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((logprobs.argmax(-1) == target).all())
                results[i] = LogLikelihood(float(picked.double().sum()), n, greedy)
    return results


def loglikelihood(model: LanguageModel, tokenizer: Tokenizer, context: str, continuation: str, *,
                  max_length: int | None = None, eos_token_id: int | None = None) -> LogLikelihood:
    """(sum_logprob, num_tokens, is_greedy) of `continuation` given `context`."""
    return loglikelihoods(model, tokenizer, [(context, continuation)], max_length=max_length,
                          batch_size=1, eos_token_id=eos_token_id)[0]


def greedy_generate(model: LanguageModel, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, *, max_length: int | None = None,
                    should_stop: Callable[[list[int]], bool] | None = None) -> torch.Tensor:
    """Argmax decoding on the model's logits, for models without `generate`: (B, T) -> (B, T + new).

    The whole sequence is re-run each step (no cache), cropped from the left to `max_length`. A row that
    emitted `eos_token_id` keeps emitting it; decoding stops when every row has, or when `should_stop`
    (given a row's new tokens) is true for every row.
    """
    if max_new_tokens < 0:
        raise InvalidSpecError(f"must be >= 0, got {max_new_tokens}", field="max_new_tokens")
    limit = context_limit(model, max_length)
    seq = input_ids.to(device_of(model))
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            window = seq if limit is None else seq[:, -limit:]
            next_ids = logits_of(model, window)[:, -1].argmax(-1)  # (B,)
            if eos_token_id is not None:
                next_ids = torch.where(done, torch.full_like(next_ids, eos_token_id), next_ids)
                done |= next_ids == eos_token_id
            seq = torch.cat([seq, next_ids[:, None]], dim=1)
            if bool(done.all()):
                break
            if should_stop is not None:
                new = seq[:, input_ids.shape[1]:].tolist()
                if all(d or should_stop(row) for d, row in zip(done.tolist(), new)):
                    break
    return seq


def has_cache(model: Any) -> bool:
    """True for a model with its own `generate`, unless its generation_config says use_cache=False (as
    TRMTitansMAG's does: without a cache, batched greedy decoding over our loop is the faster path)."""
    config = getattr(model, "generation_config", None)
    return callable(getattr(model, "generate", None)) and getattr(config, "use_cache", True) is not False


def greedy_generate_many(model: LanguageModel, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                         eos_token_id: int | None = None, *, max_length: int | None = None,
                         should_stop: Callable[[list[int]], bool] | None = None, batch_size: int = 8,
                         pad_id: int = 0) -> list[list[int]]:
    """Argmax decoding of many prompts of different lengths, `batch_size` at a time, without a cache: the
    new tokens per prompt, cut before the first eos (as `generate_tokens` returns them).

    Rows are right-padded, each step reads row i's logits at its own last position. For a causal model
    (position t never sees t' > t) the padding after a row's last token cannot change its logits, so every
    row decodes as it would alone (up to floating-point rounding of batched kernels). Each row's window is
    its own last `max_length` tokens. A row stops at eos or when `should_stop(its new tokens)` is true; the
    batch stops when every row has.
    """
    if max_new_tokens < 0:
        raise InvalidSpecError(f"must be >= 0, got {max_new_tokens}", field="max_new_tokens")
    if batch_size < 1:
        raise InvalidSpecError(f"must be >= 1, got {batch_size}", field="batch_size")
    if any(len(p) == 0 for p in prompts):
        raise InvalidSpecError("every prompt needs at least one token", field="prompts")
    limit = context_limit(model, max_length)
    device = device_of(model)
    results: list[list[int]] = []
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            rows = [list(p) for p in prompts[start:start + batch_size]]
            new: list[list[int]] = [[] for _ in rows]
            active = [True] * len(rows)
            for _ in range(max_new_tokens):
                live = [i for i, a in enumerate(active) if a]
                if not live:
                    break
                windows = [rows[i] if limit is None else rows[i][-limit:] for i in live]
                width = max(len(w) for w in windows)
                ids = torch.full((len(live), width), pad_id, dtype=torch.long)
                for r, w in enumerate(windows):
                    ids[r, :len(w)] = torch.tensor(w, dtype=torch.long)
                logits = logits_of(model, ids.to(device))
                last = torch.tensor([len(w) - 1 for w in windows], device=logits.device)
                chosen = logits[torch.arange(len(live), device=logits.device), last].argmax(-1).tolist()
                for i, token in zip(live, chosen, strict=True):
                    if eos_token_id is not None and token == eos_token_id:
                        active[i] = False
                        continue
                    rows[i].append(token)
                    new[i].append(token)
                    if should_stop is not None and should_stop(new[i]):
                        active[i] = False
            results.extend(new)
    return results


def generate_tokens(model: LanguageModel, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, *, max_length: int | None = None,
                    should_stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """The new tokens of greedy decoding, per row, cut before the first eos: via the model's own
    `generate` when it has one (its cache makes it faster), else `greedy_generate`."""
    prompt_len = input_ids.shape[1]
    generate = getattr(model, "generate", None)
    if callable(generate):
        with evaluating(model):
            out = generate(input_ids.to(device_of(model)), max_new_tokens=max_new_tokens,
                           eos_token_id=eos_token_id, do_sample=False)
        out = getattr(out, "sequences", out)
    else:
        out = greedy_generate(model, input_ids, max_new_tokens, eos_token_id, max_length=max_length,
                              should_stop=should_stop)
    rows = []
    for row in out[:, prompt_len:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[:row.index(eos_token_id)]
        rows.append(row)
    return rows

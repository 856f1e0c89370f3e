"""Token-level NLL and perplexity, and the add-one unigram baseline the Cognate gate compares against.

The token stream of a list of texts is

    stream = [eos] + enc(t_1) + [eos] + enc(t_2) + [eos] + … + enc(t_n) + [eos]

and every position but the first is a target, scored exactly once: each text's tokens and the end of each
text. So `tokens` = len(stream) - 1 = Σ (len(enc(t_i)) + 1); the leading eos is context only.

Windows: input stream[a:b] (b - a ≤ seq_len) predicts positions a+1 … b. Window starts step by `stride`
(default seq_len: disjoint windows). A window scores only the positions its predecessor did not, so with
stride < seq_len every scored token but those of the first window has at least seq_len - stride tokens of
context (the Hugging Face "perplexity of fixed-length models" recipe, without its one unscored token per
disjoint window).

NLL is in nats per token, perplexity = exp(NLL). `unigram_nll` uses the same unit, so the Cognate gate's
val_nll_gain_vs_unigram = unigram_nll - model NLL is meaningful when both score the same targets
(stream[1:] of the same texts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from shared.errors import InvalidSpecError
from shared.evaluation.lm import LanguageModel, Tokenizer, device_of, encode, eos_id, evaluating, logits_of

IGNORE_INDEX = -100


def token_stream(tokenizer: Tokenizer, texts: Iterable[str], eos_token_id: int | None = None) -> list[int]:
    """[eos] + Σ (enc(text) + [eos]): see the module docstring."""
    eos = eos_id(tokenizer, eos_token_id)
    stream = [eos]
    for text in texts:
        stream.extend(encode(tokenizer, text))
        stream.append(eos)
    return stream


def windows(n_tokens: int, seq_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(a, b, first) per window: input stream[a:b], targets stream[first:b+1] (first > a).

    Every position 1 … n_tokens-1 is a target of exactly one window.
    """
    if seq_len < 1:
        raise InvalidSpecError(f"must be >= 1, got {seq_len}", field="seq_len")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise InvalidSpecError(f"must be in [1, seq_len={seq_len}], got {stride}", field="stride")
    last = n_tokens - 1  # the highest target position
    out = []
    a, scored_until = 0, 0
    while scored_until < last:
        b = min(a + seq_len, last)
        out.append((a, b, scored_until + 1))
        scored_until = b
        a += stride
    return out


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p(target) over targets != IGNORE_INDEX, and their count; logits (B, T, V) and targets
    (B, T) aligned (logits[:, t] predicts targets[:, t]). Float32 log-softmax whatever the model's dtype."""
    flat_targets = targets.reshape(-1)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat_targets,
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total.double()), int((flat_targets != IGNORE_INDEX).sum())


def _summary(nll_sum: float, tokens: int) -> dict[str, float]:
    if tokens == 0:
        raise InvalidSpecError("no target tokens to score: an unmeasured metric must not pass a gate",
                               field="texts")
    nll = nll_sum / tokens
    return {"nll": nll, "perplexity": math.exp(nll), "tokens": tokens}


def stream_nll(model: LanguageModel, stream: Sequence[int], *, seq_len: int, stride: int | None = None,
               batch_size: int = 8) -> dict[str, float]:
    """nll, perplexity and tokens of a model over a pre-tokenized stream (see the module docstring)."""
    if batch_size < 1:
        raise InvalidSpecError(f"must be >= 1, got {batch_size}", field="batch_size")
    spans = windows(len(stream), seq_len, stride)
    data = torch.tensor(list(stream), dtype=torch.long)
    device = device_of(model)
    nll_sum, tokens = 0.0, 0
    with evaluating(model):
        for start in range(0, len(spans), batch_size):
            chunk = spans[start:start + batch_size]
            width = max(b - a for a, b, _ in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)  # right padding, never a target
            targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for row, (a, b, first) in enumerate(chunk):
                inputs[row, :b - a] = data[a:b]
                targets[row, first - a - 1:b - a] = data[first:b + 1]
            s, n = _nll_sum(logits_of(model, inputs.to(device)), targets.to(device))
            nll_sum += s
            tokens += n
    return _summary(nll_sum, tokens)


def evaluate_perplexity(model: LanguageModel, tokenizer: Tokenizer, texts: Iterable[str], *, seq_len: int,
                        stride: int | None = None, batch_size: int = 8,
                        eos_token_id: int | None = None) -> dict[str, float]:
    """nll (nats/token), perplexity and tokens over `texts` joined by eos, in windows of seq_len tokens."""
    stream = token_stream(tokenizer, texts, eos_token_id)
    return stream_nll(model, stream, seq_len=seq_len, stride=stride, batch_size=batch_size)


def _as_pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch["labels"]
    input_ids, labels = batch
    return input_ids, labels


def heldout_nll(model: LanguageModel, batches: Iterable) -> float:
    """Mean NLL per target token over pre-tokenized batches.

    Each batch is (input_ids, labels) or {"input_ids", "labels"}, both (B, T), in the Hugging Face causal-LM
    convention: labels[:, t] is the token at t (usually input_ids[:, t]), the shift happens here (logits at
    t-1 predict labels at t), and -100 marks positions that are not targets (padding, prompts, thoughts).
    """
    device = device_of(model)
    nll_sum, tokens = 0.0, 0
    with evaluating(model):
        for batch in batches:
            input_ids, labels = _as_pair(batch)
            if input_ids.shape != labels.shape:
                raise InvalidSpecError(f"input_ids {tuple(input_ids.shape)} and labels "
                                       f"{tuple(labels.shape)} must have the same shape", field="labels")
            logits = logits_of(model, input_ids.to(device))
            s, n = _nll_sum(logits[:, :-1], labels[:, 1:].to(device))
            nll_sum += s
            tokens += n
    return _summary(nll_sum, tokens)["nll"]


def token_counts(token_ids: Iterable[int] | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Occurrences of each id in [0, vocab_size) as a (vocab_size,) int64 tensor."""
    ids = torch.as_tensor(token_ids if isinstance(token_ids, torch.Tensor) else list(token_ids),
                          dtype=torch.long).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidSpecError(f"token ids must be in [0, {vocab_size}), got [{int(ids.min())}, "
                               f"{int(ids.max())}]", field="token_ids")
    return torch.bincount(ids, minlength=vocab_size)


def unigram_nll(token_counts_train: torch.Tensor | Mapping[int, int] | Sequence[int],
                tokens_eval: Iterable[int] | torch.Tensor, *, vocab_size: int | None = None) -> float:
    """Mean NLL (nats/token) of `tokens_eval` under the add-one unigram model of the training counts:

        p(t) = (count(t) + 1) / (N + V),  N = Σ counts, V = vocabulary size.

    Counts are a (V,) tensor or sequence indexed by token id (V = its length unless given), or a mapping
    id -> count, which needs `vocab_size`.
    """
    if isinstance(token_counts_train, Mapping):
        if vocab_size is None:
            raise InvalidSpecError("counts given as a mapping need the vocabulary size", field="vocab_size")
        counts = torch.zeros(vocab_size, dtype=torch.float64)
        for token, count in token_counts_train.items():
            if not 0 <= int(token) < vocab_size:
                raise InvalidSpecError(f"token id {token} is outside [0, {vocab_size})",
                                       field="token_counts_train")
            counts[int(token)] = float(count)
    else:
        counts = torch.as_tensor(token_counts_train, dtype=torch.float64).reshape(-1)
        if vocab_size is not None and vocab_size != counts.numel():
            raise InvalidSpecError(f"{counts.numel()} counts for a vocabulary of {vocab_size}",
                                   field="vocab_size")
    if counts.numel() == 0 or bool((counts < 0).any()):
        raise InvalidSpecError("counts must be a non-empty vector of non-negative numbers",
                               field="token_counts_train")
    log_p = torch.log(counts + 1.0) - math.log(float(counts.sum()) + counts.numel())  # (V,)
    ids = torch.as_tensor(tokens_eval if isinstance(tokens_eval, torch.Tensor) else list(tokens_eval),
                          dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise InvalidSpecError("no evaluation tokens: an unmeasured metric must not pass a gate",
                               field="tokens_eval")
    if int(ids.min()) < 0 or int(ids.max()) >= counts.numel():
        raise InvalidSpecError(f"evaluation token ids must be in [0, {counts.numel()})", field="tokens_eval")
    return float(-log_p[ids].mean())

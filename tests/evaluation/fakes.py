"""Tiny stand-ins for a tokenizer and causal language models, for the evaluation tests.

Every model is causal by construction (logits at t depend on tokens 0..t only) and records how it was
called, so tests can check eval mode, no-grad and the lengths it was shown.
"""

from __future__ import annotations

import string
from types import SimpleNamespace
from typing import Iterable, Sequence

import torch
from torch import nn

CHARS = string.printable  # 100 characters
EOS = len(CHARS)
VOCAB = len(CHARS) + 1


class CharTokenizer:
    """One token per printable character, plus an end-of-text token. Its `encode` takes no keywords, like
    the simplest tokenizer the library must accept."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [CHARS.index(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(CHARS[i] if i < len(CHARS) else "<eos>" for i in ids)


class Recording(nn.Module):
    """Base of the fakes: keeps (training, grad enabled, input shape) of every forward call."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device and a parameter
        self.calls: list[tuple[bool, bool, tuple[int, ...]]] = []

    def record(self, input_ids: torch.Tensor) -> None:
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(input_ids.shape)))


class LookupLM(Recording):
    """Puts `margin` logits on table[key] where key is the whole prefix (order None) or its last `order`
    tokens; every other position is uniform."""

    def __init__(self, table: dict[tuple[int, ...], int], order: int | None = None, margin: float = 30.0):
        super().__init__()
        self.table, self.order, self.margin = table, order, margin

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.record(input_ids)
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, VOCAB)
        rows = input_ids.tolist()
        for b in range(batch):
            for t in range(length):
                prefix = rows[b][:t + 1]
                key = tuple(prefix if self.order is None else prefix[-self.order:])
                if key in self.table:
                    logits[b, t, self.table[key]] = self.margin
        return logits + 0 * self.anchor


def prefix_table(sequences: Iterable[tuple[list[int], int]], order: int | None = None
                 ) -> dict[tuple[int, ...], int]:
    """(ids, start) pairs -> a table predicting ids[k] from ids[:k] for every k >= start."""
    table: dict[tuple[int, ...], int] = {}
    for ids, start in sequences:
        for k in range(max(start, 1), len(ids)):
            key = tuple(ids[:k] if order is None else ids[max(0, k - order):k])
            assert table.get(key, ids[k]) == ids[k], f"conflicting continuations for {key}"
            table[key] = ids[k]
    return table


def teach(tokenizer: CharTokenizer, pairs: Iterable[tuple[str, str]], *, eos: bool = False) -> LookupLM:
    """A model that continues each context with its paired text, token by token (and then eos)."""
    sequences = []
    for context, continuation in pairs:
        ids = tokenizer.encode(context + continuation) + ([EOS] if eos else [])
        sequences.append((ids, len(tokenizer.encode(context))))
    return LookupLM(prefix_table(sequences))


class UniformLM(Recording):
    """All logits equal: every token has probability 1/VOCAB."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.record(input_ids)
        return torch.zeros(*input_ids.shape, VOCAB) + 0 * self.anchor


class BigramLM(Recording):
    """Random logits that depend on the last token only, so no amount of extra context changes them."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB, generator=generator))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.record(input_ids)
        return self.table[input_ids]


class PrefixMeanLM(Recording):
    """Random embeddings averaged over the prefix (a causal running mean), then a linear head: logits that
    depend on the whole context, so batching and truncation mistakes show."""

    def __init__(self, seed: int = 0, dim: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.record(input_ids)
        x = self.embed(input_ids)  # (B, T, D)
        counts = torch.arange(1, input_ids.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]
        return self.head(x.cumsum(1) / counts) * 4.0  # (B, T, V)


class OutputWrapper(nn.Module):
    """Returns the wrapped model's logits as `.logits` (a Hugging Face ModelOutput) or as a tuple."""

    def __init__(self, inner: nn.Module, style: str):
        super().__init__()
        self.inner, self.style = inner, style

    def forward(self, input_ids: torch.Tensor):
        logits = self.inner(input_ids)
        return SimpleNamespace(logits=logits) if self.style == "attr" else (logits, None)


class ScriptedGenerator(Recording):
    """A Hugging Face-style model whose `generate` appends a scripted reply to each known prompt; its
    forward must never be called (the library must prefer `generate`)."""

    def __init__(self, tokenizer: CharTokenizer, replies: dict[str, str]):
        super().__init__()
        self.tokenizer = tokenizer
        self.replies = {tuple(tokenizer.encode(p)): r for p, r in replies.items()}
        self.generate_calls: list[dict] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise AssertionError("forward called although the model has generate")

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                 do_sample: bool = True) -> torch.Tensor:
        self.generate_calls.append({"training": self.training, "do_sample": do_sample,
                                    "max_new_tokens": max_new_tokens})
        reply = self.replies[tuple(input_ids[0].tolist())]
        new = (self.tokenizer.encode(reply) + [eos_token_id])[:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([new], dtype=torch.long)], dim=1)

"""Quiet-STaR inference: write visible tokens one at a time, thinking one hidden thought before each.

Legend: B rows decoded together, t + 1 the (cropped) context length, k thought length, V vocabulary.

**One step.** For a context x_0 … x_t (the prompt plus the visible tokens so far):

1. a thought th_0 … th_{k−1} is sampled token by token at the LAST position t: k calls of
   `prefix_stream_hidden(model, x_≤t, stream)` with the growing stream [start], [start, th_0], …, each drawing
   th_j from softmax(masked logits / thought_temperature) — the start and end tokens masked, Gumbel-max, the
   same sampler (`shared.model.thoughts._pick`) training's `sample_thoughts` uses;
2. one more call on the stream [start, th_0 … th_{k−1}, end] gives the base hidden state at position t and the
   thought's hidden state at the end token. The next visible token is drawn from

       mix_thoughts(lm_head(h_base), lm_head(h_end), head(h_base, h_end))
         = log(w · softmax(thought logits) + (1 − w) · softmax(base logits))

   by argmax (temperature 0) or from softmax(mixed / temperature);
3. the visible token is appended to the context; the thought is not (thoughts never enter the base sequence,
   as in training, where they live only in streams).

**Why this is what training scores.** `rl.score_thoughts` runs `stream_forward` on streams
[start, th, end, x_{t+1} …] and predicts x_{t+1} from the base logits at t, the stream logits at the end token
(stream index k + 1) and w = head(base_hidden[t], stream_hidden[end]). The stream forward at position t is
defined as, and tested equal to, `prefix_stream_hidden` on x_≤t ‖ that stream (shared/model/thoughts.py), and
a stream token only sees the tokens before it, so the tokens after `end` change nothing at `end`. Both use a
fixed number of supervision steps (n_sup, default config.n_sup) without ACT halting: with w → 0 this decodes
like the model's fixed-step forward `model(ids, act_threshold=1.0)` (tested). The model's default eval forward
(and so `model.generate`) halts per token, so its logits can differ wherever a position halts early.

**Batching.** The model has no attention mask, so padding would let stream tokens attend to pad tokens: prompts
are grouped by length and never padded. The rows of a group keep equal lengths while they are live; a row
stops at eos (not included) or after max_new_tokens, and leaves the batch. Results come back in input order.

**Randomness.** Each row draws its noise (thought tokens, and the visible token when temperature > 0) from its
own torch.Generator on the model's device, seeded from (seed, the row's prompt, how many equal prompts come
before it in the list). A row's result therefore depends on the seed and its own prompt only — not on which
other prompts are in the call or batched with it — and repeating a prompt in one call gives different samples.
The global RNG is never used.

**Length.** The context is cropped from the left to max_length − (k + 2) tokens (default max_length:
config.max_seq_len), so context plus the final stream fit. No cache: every call recomputes the recursion, so a
visible token costs k + 1 full forwards.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from services.quietstar.core.rl import ThoughtTokens, mix_thoughts
from shared.errors import InvalidSpecError
from shared.evaluation.lm import device_of, evaluating
from shared.model.thoughts import _gumbel, _pick, prefix_stream_hidden

__all__ = ["ThoughtGeneration", "generate_with_thoughts", "render"]


@dataclass
class ThoughtGeneration:
    tokens: list[int] = field(default_factory=list)          # visible new tokens, cut before the first eos
    thoughts: list[list[int]] = field(default_factory=list)  # thoughts[i]: the k tokens thought before tokens[i]
    weights: list[float] = field(default_factory=list)       # mixing weight w used for tokens[i]

    def ids(self, tokens: ThoughtTokens, show_thoughts: bool) -> list[int]:
        """The visible tokens; with show_thoughts, [start, *thought, end, token] for each visible token."""
        if not show_thoughts:
            return list(self.tokens)
        out: list[int] = []
        for thought, token in zip(self.thoughts, self.tokens, strict=True):
            out += [tokens.start_id, *thought, tokens.end_id, token]
        return out


def render(tokenizer: Any, gen: ThoughtGeneration, tokens: ThoughtTokens, *, show_thoughts: bool) -> str:
    """The generation as text, special tokens kept (so shown thoughts read [thinking] … [/endthinking])."""
    return tokenizer.decode(gen.ids(tokens, show_thoughts), skip_special_tokens=False)


# -- one step --

def _noise(generators: list[torch.Generator], vocab: int, device: torch.device) -> Tensor:
    """(B, V) Gumbel noise, row b from generators[b]."""
    return torch.stack([_gumbel((vocab,), g, device) for g in generators])


def _sample_thought(model, prefix: Tensor, generators: list[torch.Generator], length: int, tokens: ThoughtTokens,
                    temperature: float, n_sup: int | None) -> Tensor:
    """A thought (B, k) at the last position of prefix (B, t + 1): k calls with the stream [start, th_<j]."""
    stream = prefix.new_full((prefix.shape[0], 1), tokens.start_id)
    for _ in range(length):
        logits = model.lm_head(prefix_stream_hidden(model, prefix, stream, n_sup=n_sup)[:, -1])
        noise = _noise(generators, logits.shape[-1], logits.device)
        token, _ = _pick(logits, noise, tokens.start_id, tokens.end_id, temperature)
        stream = torch.cat([stream, token.unsqueeze(-1)], dim=1)
    return stream[:, 1:]


def _mixed_next(model, head, prefix: Tensor, thought: Tensor, tokens: ThoughtTokens,
                n_sup: int | None) -> tuple[Tensor, Tensor]:
    """Mixed next-token log-probs (B, V) after prefix (B, t + 1) with thought (B, k) at position t, and the
    weight (B,): one call on [start, thought, end]; base at position t, thought at the end token."""
    b = prefix.shape[0]
    stream = torch.cat([prefix.new_full((b, 1), tokens.start_id), thought, prefix.new_full((b, 1), tokens.end_id)],
                       dim=1)
    hidden = prefix_stream_hidden(model, prefix, stream, n_sup=n_sup)
    base, end = hidden[:, prefix.shape[1] - 1], hidden[:, -1]
    weight = head(base, end)
    return mix_thoughts(model.lm_head(base), model.lm_head(end), weight), weight


# -- the loop --

def _row_seed(seed: int, prompt: tuple[int, ...], repeat: int) -> int:
    digest = hashlib.blake2b(repr((seed, prompt, repeat)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1          # a non-negative 63-bit seed


def _vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _check(model, prompts, max_new_tokens, thought_length, tokens, temperature, thought_temperature, n_sup,
           max_length) -> tuple[list[list[int]], int]:
    if max_new_tokens < 1:
        raise InvalidSpecError(f"must be >= 1, got {max_new_tokens}", field="max_new_tokens")
    if thought_length < 1:
        raise InvalidSpecError(f"must be >= 1, got {thought_length}", field="thought_length")
    if not temperature >= 0:
        raise InvalidSpecError(f"must be >= 0, got {temperature}", field="temperature")
    if not thought_temperature > 0:
        raise InvalidSpecError(f"must be > 0, got {thought_temperature}", field="thought_temperature")
    if n_sup is not None and n_sup < 1:
        raise InvalidSpecError(f"must be >= 1, got {n_sup}", field="n_sup")
    limit = model.config.max_seq_len if max_length is None else max_length
    if limit < thought_length + 3:
        raise InvalidSpecError(f"{limit} cannot hold one context token and a stream of thought_length + 2 = "
                               f"{thought_length + 2} tokens", field="max_length")
    vocab = _vocab(model)
    for name in ("start_id", "end_id"):
        value = getattr(tokens, name)
        if not 0 <= value < vocab:
            raise InvalidSpecError(f"{value} is outside the model's vocabulary of {vocab}", field=f"tokens.{name}")
    if tokens.start_id == tokens.end_id:
        raise InvalidSpecError("start and end tokens must differ", field="tokens")
    if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
        raise InvalidSpecError("at least one prompt of token ids is needed", field="prompts")
    rows = []
    for i, prompt in enumerate(prompts):
        row = [int(x) for x in prompt]
        if not row:
            raise InvalidSpecError("empty prompt", field=f"prompts[{i}]")
        bad = [x for x in row if not 0 <= x < vocab]
        if bad:
            raise InvalidSpecError(f"token ids {bad[:5]} are outside the model's vocabulary of {vocab}",
                                   field=f"prompts[{i}]")
        rows.append(row)
    return rows, limit


def generate_with_thoughts(model, head, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                           thought_length: int, tokens: ThoughtTokens, eos_id: int | None,
                           temperature: float = 0.0, thought_temperature: float = 1.0, seed: int = 0,
                           n_sup: int | None = None, max_length: int | None = None) -> list[ThoughtGeneration]:
    """Decode up to max_new_tokens visible tokens after each prompt, one thought of thought_length tokens
    before each (module docstring). Returns one ThoughtGeneration per prompt, in input order."""
    rows, limit = _check(model, prompts, max_new_tokens, thought_length, tokens, temperature, thought_temperature,
                         n_sup, max_length)
    device = device_of(model)
    keep = limit - (thought_length + 2)
    repeats: dict[tuple[int, ...], int] = defaultdict(int)
    generators = []
    for row in rows:
        key = tuple(row)
        generators.append(torch.Generator(device=device).manual_seed(_row_seed(int(seed), key, repeats[key])))
        repeats[key] += 1
    groups: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[len(row)].append(i)
    results = [ThoughtGeneration() for _ in rows]
    with evaluating(model), evaluating(head):
        for members in groups.values():
            ids = torch.tensor([rows[i] for i in members], dtype=torch.long, device=device)[:, -keep:]
            gens = [generators[i] for i in members]
            for _ in range(max_new_tokens):
                thought = _sample_thought(model, ids, gens, thought_length, tokens, thought_temperature, n_sup)
                mixed, weight = _mixed_next(model, head, ids, thought, tokens, n_sup)
                if temperature == 0:
                    nxt = mixed.argmax(-1)
                else:
                    nxt = (mixed.float() / temperature + _noise(gens, mixed.shape[-1], device)).argmax(-1)
                live = []
                for j, (tok, th, w) in enumerate(zip(nxt.tolist(), thought.tolist(), weight.tolist())):
                    if eos_id is not None and tok == eos_id:
                        continue
                    out = results[members[j]]
                    out.tokens.append(tok)
                    out.thoughts.append(th)
                    out.weights.append(w)
                    live.append(j)
                if not live:
                    break
                if len(live) < len(members):
                    index = torch.tensor(live, device=device)
                    ids, nxt = ids[index], nxt[index]
                    members, gens = [members[j] for j in live], [gens[j] for j in live]
                ids = torch.cat([ids, nxt.unsqueeze(-1)], dim=1)[:, -keep:]
    return results

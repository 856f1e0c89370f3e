"""Thought streams for Quiet-STaR on TRMTitansMAG (issue #9, DESIGN.md §5 Phase 3b): at EVERY position t of a
sequence, tokens appended after x_t — a "stream" — computed for all positions at once, in one forward.

Legend: B batch, L base length, S stream length, r thoughts per position, k thought length, V vocabulary,
d hidden width.

**What a stream forward means.** `stream_forward(model, input_ids, streams)` with streams[b, t] = S tokens
(e.g. `[thinking] th_1 … th_k [/endthinking] x_{t+1} … x_{t+n}`) is defined as running the model, for each t
separately, on x_0 … x_t, streams[t, 0] … streams[t, S−1], EXCEPT that stream tokens never write the neural
memory:

- attention: stream token (t, s) sits at rotary position t + 1 + s and attends (the usual sliding window, the
  persistent tokens) to base tokens x_{≤t} and to its own stream's tokens (t, ≤ s) only;
- memory: its read uses the fast weights W_t that base token x_t read with, with the stream token's own
  query. In the chunked scan (shared/model/memory.py) W_t is the chunk-start state plus the updates of the
  chunk's tokens up to and including t, every gradient taken at the chunk-start weights — exactly the state
  `memory_scan` returns after processing x_0 … x_t. Stream tokens compute no key, value or rates, so no base
  output and no other stream depends on them;
- base tokens never see stream tokens, so base outputs equal a plain forward's;
- the whole TRM recursion (n_latent_steps, t_cycles, N_sup supervision steps, the layer plan) runs on the
  concatenated [base ‖ streams] tokens with that pattern, every net call with a fresh memory, as in the
  model. A FIXED number of supervision steps (n_sup or config.n_sup), no ACT halting; train/eval mode only
  switches dropout. With grad enabled, gradients flow as in the model's train-mode forward: the first
  N_sup − 1 steps without grad, the last with grad from detached (y, z) (and its first T − 1 cycles without,
  as in `supervision_step`).

The parallel form is one forward on L + L·S tokens whose blocks use `SlidingWindowAttention.forward_streams`
(a structured mask: one (L·S, P + L) block against persistent and base keys plus a block-diagonal (L, S, S)
block within streams — never an (L + L·S)² mask) and `NeuralMemory.forward_streams` (the stream queries read
inside the base scan with their position's row of the chunk coefficients). `sequential_stream_forward` is
the per-position reference: a loop over t, each x_≤t ‖ stream_t run as a plain sequence with plain attention
and a memory whose stream part reads the prefix scan's final state directly (`NeuralMemory.read`).

**Outputs.** `StreamOutput.*_hidden` is model.norm(y) of the final answer state — the LM head's input, so
logits = model.lm_head(hidden); `stream_logits[:, t, s]` is the prediction AT stream token (t, s), i.e. of
the stream's next token.

**Thoughts.** `sample_thoughts` samples r thoughts of k tokens at every position: k stream forwards (streams
[start, th_0 … th_{j−1}], the batch expanded to B·r, row b·r + i ↔ thought i of sequence b), token j drawn at
every position at once; never a loop over positions. Sampling is Gumbel-max with noise drawn from
`generator` one (B·r, L, V) tensor per thought token, so the thoughts are a deterministic function of the
generator's state — `sequential_sample_thoughts` (the per-position baseline) draws the same noise and gives
the same thoughts. The start and end tokens are never sampled inside a thought (their logits are masked);
log-probabilities are of that sampling distribution, log_softmax(masked logits / temperature). Sampling runs
without grad and returns detached log-probs; for REINFORCE, `thought_logprobs` recomputes them with grad in
ONE stream forward (or `thought_token_logprobs` on the stream logits of any forward whose streams start with
[start, th_0 … th_{k−1}], e.g. one that also scores the true future tokens; see `thought_streams`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shared.model.attention import SlidingWindowAttention
from shared.model.memory import NeuralMemory


@dataclass
class StreamOutput:
    base_logits: Tensor     # (B, L, V)     logits at base token t (predicting x_{t+1}); equal a plain forward's
    stream_logits: Tensor   # (B, L, S, V)  logits at stream token (t, s) (predicting stream token (t, s + 1))
    base_hidden: Tensor     # (B, L, d)     model.norm(y): logits = model.lm_head(hidden)
    stream_hidden: Tensor   # (B, L, S, d)


@dataclass
class Thoughts:
    tokens: Tensor          # (B, r, L, k) long: thought i at position t of sequence b
    logprobs: Tensor        # (B, r, L, k) log-prob of each token under the sampling distribution (detached)


# -- the two block hooks (MAGBlock's `streams` protocol) --

class _ParallelStreams:
    """[L base ‖ L streams of S] in one sequence: the structured attention and the read-only stream memory."""

    def __init__(self, n_base: int, stream_len: int):
        self.n_base, self.stream_len = n_base, stream_len

    def memory(self, mem: NeuralMemory, h: Tensor) -> Tensor:
        return mem.forward_streams(h, self.n_base, self.stream_len)

    def attention(self, attn: SlidingWindowAttention, h: Tensor) -> Tensor:
        return attn.forward_streams(h, self.n_base, self.stream_len)


class _PrefixStream:
    """x_0 … x_t ‖ stream_t as a plain sequence (n_base = t + 1): plain causal attention; the base tokens run
    the memory as usual and the stream tokens read the prefix scan's final state (W_t) without writing."""

    def __init__(self, n_base: int):
        self.n_base = n_base

    def memory(self, mem: NeuralMemory, h: Tensor) -> Tensor:
        reads, state = mem(h[:, :self.n_base])
        return torch.cat([reads, mem.read(h[:, self.n_base:], state)], dim=1)

    def attention(self, attn: SlidingWindowAttention, h: Tensor) -> Tensor:
        return attn(h)


def _recurse(model, ids: Tensor, n_sup: int | None, streams) -> Tensor:
    """The recursion with a fixed number of supervision steps, gradients as in train mode; model.norm(y)."""
    steps = n_sup or model.config.n_sup
    if steps < 1:
        raise ValueError(f"n_sup must be >= 1, got {steps}")
    x = model.embed(ids)
    y, z = model.initial_state(x)
    with torch.no_grad():
        for _ in range(steps - 1):
            y, z = model.supervision_step(x, y, z, streams)
    y, _ = model.supervision_step(x, y.detach(), z.detach(), streams)
    return model.norm(y)


def _check(input_ids: Tensor, streams: Tensor) -> tuple[int, int, int]:
    if input_ids.dim() != 2 or streams.dim() != 3 or streams.shape[:2] != input_ids.shape:
        raise ValueError(f"input_ids (B, L) and streams (B, L, S) expected, got {tuple(input_ids.shape)} and "
                         f"{tuple(streams.shape)}")
    b, n, s = streams.shape
    if n < 1 or s < 1:
        raise ValueError(f"need L >= 1 and S >= 1, got L={n}, S={s}")
    return b, n, s


def stream_hidden(model, input_ids: Tensor, streams: Tensor, *, n_sup: int | None = None) -> tuple[Tensor, Tensor]:
    """The parallel forward without the LM head: (base_hidden (B, L, d), stream_hidden (B, L, S, d))."""
    b, n, s = _check(input_ids, streams)
    ids = torch.cat([input_ids, streams.reshape(b, n * s)], dim=1)
    hidden = _recurse(model, ids, n_sup, _ParallelStreams(n, s))
    return hidden[:, :n], hidden[:, n:].reshape(b, n, s, -1)


def stream_forward(model, input_ids: Tensor, streams: Tensor, *, n_sup: int | None = None) -> StreamOutput:
    """Every position's stream in one forward (module docstring). input_ids (B, L), streams (B, L, S)."""
    base, stream = stream_hidden(model, input_ids, streams, n_sup=n_sup)
    return StreamOutput(model.lm_head(base), model.lm_head(stream), base, stream)


def prefix_stream_hidden(model, prefix_ids: Tensor, stream: Tensor, *, n_sup: int | None = None) -> Tensor:
    """One position the straightforward way: x_0 … x_t (prefix_ids (B, t + 1)) ‖ stream (B, S) as a plain
    sequence, stream tokens reading the memory without writing it. model.norm(y), (B, t + 1 + S, d)."""
    ids = torch.cat([prefix_ids, stream], dim=1)
    return _recurse(model, ids, n_sup, _PrefixStream(prefix_ids.shape[1]))


def sequential_stream_forward(model, input_ids: Tensor, streams: Tensor, *,
                              n_sup: int | None = None) -> StreamOutput:
    """The per-position reference of `stream_forward`: a loop over t of `prefix_stream_hidden`."""
    b, n, s = _check(input_ids, streams)
    base, stream = [], []
    for t in range(n):
        hidden = prefix_stream_hidden(model, input_ids[:, :t + 1], streams[:, t], n_sup=n_sup)
        base.append(hidden[:, t])
        stream.append(hidden[:, t + 1:])
    base_h, stream_h = torch.stack(base, dim=1), torch.stack(stream, dim=1)
    return StreamOutput(model.lm_head(base_h), model.lm_head(stream_h), base_h, stream_h)


# -- thoughts --

def _masked_scaled(logits: Tensor, start_id: int, end_id: int, temperature: float) -> Tensor:
    """Logits of the sampling distribution, in at least float32: the start and end tokens masked, / T."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    work = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    banned = torch.zeros(work.shape[-1], dtype=torch.bool, device=work.device)
    banned[[start_id, end_id]] = True
    return work.masked_fill(banned, float("-inf"))


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))


def _pick(logits: Tensor, noise: Tensor, start_id: int, end_id: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Gumbel-max sample of softmax(masked logits / T) and its log-prob: logits (..., V), noise (..., V)."""
    scaled = _masked_scaled(logits, start_id, end_id, temperature)
    token = (scaled + noise.to(scaled.dtype)).argmax(-1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, token.unsqueeze(-1)).squeeze(-1)
    return token, logp


def expand_for_thoughts(input_ids: Tensor, num_thoughts: int) -> Tensor:
    """(B, L) → (B·r, L), row b·r + i for thought i of sequence b (the layout every function here uses)."""
    return input_ids.repeat_interleave(num_thoughts, dim=0)


def thought_token_logprobs(stream_logits: Tensor, tokens: Tensor, *, start_id: int, end_id: int,
                           temperature: float = 1.0) -> Tensor:
    """Log-probs (B, r, L, k) of thought tokens (B, r, L, k) under the sampling distribution, from the
    logits (B·r, L, ≥ k, V) of a stream forward whose streams are [start, th_0 … th_{k−1}, …]: the logits at
    stream position j predict th_j. Differentiable."""
    b, r, n, k = tokens.shape
    logits = stream_logits[:, :, :k].reshape(b, r, n, k, -1)
    scaled = _masked_scaled(logits, start_id, end_id, temperature)
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def thought_streams(input_ids: Tensor, tokens: Tensor, *, start_id: int, end_id: int, n_future: int = 0,
                    pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Streams (B·r, L, k + 2 + n_future) = [start, th_0 … th_{k−1}, end, x_{t+1} … x_{t+n_future}] for the
    thoughts `tokens` (B, r, L, k), and a mask (B·r, L, n_future) of the future tokens that exist (t + i < L;
    the others are pad_id). In a stream forward on them, stream logits at j ≤ k − 1 predict th_j (position 0
    is `start`), at k the end token, and at k + 1 + i (the end token for i = 0) x_{t+1+i}."""
    b, r, n, k = tokens.shape
    ids = expand_for_thoughts(input_ids, r)                                   # (B·r, L)
    th = tokens.reshape(b * r, n, k)
    start = th.new_full((b * r, n, 1), start_id)
    end = th.new_full((b * r, n, 1), end_id)
    offs = torch.arange(n, device=ids.device)[:, None] + 1 + torch.arange(n_future, device=ids.device)[None, :]
    valid = (offs < n).expand(b * r, n, n_future)
    future = torch.where(valid, ids[:, offs.clamp(max=n - 1)], torch.full_like(ids[:, :1, None], pad_id))
    return torch.cat([start, th, end, future], dim=2), valid


def thought_logprobs(model, input_ids: Tensor, tokens: Tensor, *, start_id: int, end_id: int,
                     temperature: float = 1.0, n_sup: int | None = None) -> Tensor:
    """Log-probs (B, r, L, k) of given thoughts (B, r, L, k), recomputed in ONE stream forward with
    streams [start, th_0 … th_{k−2}]; with grad when grad is enabled (REINFORCE)."""
    b, r, n, k = tokens.shape
    ids = expand_for_thoughts(input_ids, r)
    th = tokens.reshape(b * r, n, k)
    streams = torch.cat([th.new_full((b * r, n, 1), start_id), th[..., :k - 1]], dim=2)
    _, hidden = stream_hidden(model, ids, streams, n_sup=n_sup)
    return thought_token_logprobs(model.lm_head(hidden), tokens, start_id=start_id, end_id=end_id,
                                  temperature=temperature)


def _vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _draw_noise(model, input_ids: Tensor, num_thoughts: int, length: int,
                generator: torch.Generator | None) -> list[Tensor]:
    b, n = input_ids.shape
    shape = (b * num_thoughts, n, _vocab(model))
    return [_gumbel(shape, generator, input_ids.device) for _ in range(length)]


@torch.no_grad()
def sample_thoughts(model, input_ids: Tensor, *, num_thoughts: int, length: int, start_id: int, end_id: int,
                    temperature: float = 1.0, generator: torch.Generator | None = None,
                    n_sup: int | None = None) -> Thoughts:
    """r = num_thoughts thoughts of k = length tokens after [start] at every position of input_ids (B, L),
    in parallel: k stream forwards, each drawing token j at every position at once (module docstring).
    `generator` lives on input_ids' device. Returns tokens and detached log-probs, (B, r, L, k) each."""
    b, n = input_ids.shape
    if num_thoughts < 1 or length < 1:
        raise ValueError(f"num_thoughts and length must be >= 1, got {num_thoughts}, {length}")
    ids = expand_for_thoughts(input_ids, num_thoughts)                       # (B·r, L)
    streams = ids.new_full((b * num_thoughts, n, 1), start_id)
    tokens, logps = [], []
    for j in range(length):
        noise = _gumbel((b * num_thoughts, n, _vocab(model)), generator, input_ids.device)  # as _draw_noise
        _, hidden = stream_hidden(model, ids, streams, n_sup=n_sup)
        token, logp = _pick(model.lm_head(hidden[:, :, -1]), noise, start_id, end_id, temperature)  # (B·r, L)
        tokens.append(token)
        logps.append(logp)
        if j + 1 < length:
            streams = torch.cat([streams, token.unsqueeze(-1)], dim=2)
    shape = (b, num_thoughts, n, length)
    return Thoughts(torch.stack(tokens, -1).reshape(shape), torch.stack(logps, -1).reshape(shape))


@torch.no_grad()
def sequential_sample_thoughts(model, input_ids: Tensor, *, num_thoughts: int, length: int, start_id: int,
                               end_id: int, temperature: float = 1.0, generator: torch.Generator | None = None,
                               n_sup: int | None = None) -> Thoughts:
    """The per-position baseline of `sample_thoughts`: for each t, the thought generated token by token by
    running the model on x_≤t ‖ [start, thought so far] (`prefix_stream_hidden`). Draws the same Gumbel
    noise from `generator`, so it gives the same thoughts as `sample_thoughts` (up to float ties)."""
    b, n = input_ids.shape
    ids = expand_for_thoughts(input_ids, num_thoughts)
    noise = _draw_noise(model, input_ids, num_thoughts, length, generator)   # same draws, same order
    tokens, logps = [], []
    for t in range(n):
        stream = ids.new_full((b * num_thoughts, 1), start_id)
        lp = []
        for j in range(length):
            hidden = prefix_stream_hidden(model, ids[:, :t + 1], stream, n_sup=n_sup)
            token, logp = _pick(model.lm_head(hidden[:, -1]), noise[j][:, t], start_id, end_id, temperature)
            stream = torch.cat([stream, token.unsqueeze(-1)], dim=1)
            lp.append(logp)
        tokens.append(stream[:, 1:])
        logps.append(torch.stack(lp, dim=-1))
    shape = (b, num_thoughts, n, length)
    return Thoughts(torch.stack(tokens, 1).reshape(shape), torch.stack(logps, 1).reshape(shape))

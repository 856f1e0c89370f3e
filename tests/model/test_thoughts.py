"""Thought streams (shared/model/thoughts.py, Quiet-STaR): every position's stream in one forward equals the
per-position reference; streams are local (no base output, other position or earlier stream token sees
them), never write the memory and never see base tokens after their position; thoughts sampled in parallel
are deterministic, equal the per-position baseline's, and their log-probs recompute (with gradients)."""

import pytest
import torch
import torch.nn.functional as F

from shared.model import memory as memory_module
from shared.model.attention import SlidingWindowAttention
from shared.model.memory import NeuralMemory, naive_memory
from shared.model.thoughts import (expand_for_thoughts, sample_thoughts, sequential_sample_thoughts,
                                   sequential_stream_forward, stream_forward, thought_logprobs, thought_streams,
                                   thought_token_logprobs)
from tests.model.helpers import tiny_model

F64 = torch.float64
START, END = 1, 2


def data(b=2, length=9, s=4, vocab=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, length), generator=g), torch.randint(0, vocab, (b, length, s), generator=g)


def non_prefix_mask(model):
    for layer in model.net.layers:
        layer.memory.mask[[1, 5, 6]] = 0.0
    assert model.net.layers[0].memory.active_prefix() is None
    return model


# -- the two hooks, each against its direct form --

@pytest.mark.parametrize("chunk,active", [(1, 6), (3, 6), (4, 4), (16, 6)])
def test_memory_stream_reads_use_the_weights_base_token_t_read_with_and_write_nothing(chunk, active):
    torch.manual_seed(0)
    mem = NeuralMemory(8, 4, 6, active, chunk, 1.0).double()
    with torch.no_grad():
        mem.to_rates.bias[1] = 1.0
    n, s = 11, 3
    x = torch.randn(2, n + n * s, 8, dtype=F64)
    base, streams = x[:, :n], x[:, n:].view(2, n, s, 8)
    out = mem.forward_streams(x, n, s)
    assert torch.equal(out[:, :n], mem(base)[0])                   # base reads: exactly the plain forward's
    k, v = F.normalize(mem.to_k(base), dim=-1), mem.to_v(base)
    q = F.normalize(mem.to_q(base), dim=-1)
    qs = F.normalize(mem.to_q(streams), dim=-1)
    got = out[:, n:].view(2, n, s, 4)
    for t in range(n):
        # the independent reference: the per-token loop's fast weights after x_0..x_t, read directly
        _, st = naive_memory(k[:, :t + 1], v[:, :t + 1], q[:, :t + 1], *(r[:, :t + 1] for r in mem.rates(base)),
                             mem.w1_init, mem.w2_init, mem.mask, chunk)
        a = F.silu(torch.einsum("bsd,bjd->bjs", mem.w1_init + st.d1, qs[:, t])) * mem.mask
        want = torch.einsum("bds,bjs->bjd", mem.w2_init + st.d2, a)
        assert torch.allclose(got[:, t], want, atol=1e-12), t
        assert torch.allclose(mem.read(streams[:, t], mem(base[:, :t + 1])[1]), want, atol=1e-12)
        if t:   # the weights one token earlier read differently: the check can tell positions apart
            assert not torch.allclose(mem.read(streams[:, t], mem(base[:, :t])[1]), want, atol=1e-6)
    # the stream part writes nothing: other stream tokens change no read
    changed = x.clone()
    changed[:, n + 5] += 1.0
    diff = (mem.forward_streams(changed, n, s) != out).any(-1)[0]
    assert diff.nonzero().flatten().tolist() == [n + 5]


@pytest.mark.parametrize("window,persistent", [(4, 2), (3, 0), (64, 1)])
def test_stream_attention_rows_equal_plain_attention_on_the_prefix_plus_stream(window, persistent):
    torch.manual_seed(0)
    attn = SlidingWindowAttention(16, 2, window, persistent, 10000.0, 0.0).double().eval()
    n, s = 7, 5
    x = torch.randn(2, n + n * s, 16, dtype=F64)
    out = attn.forward_streams(x, n, s)
    assert torch.equal(out[:, :n], attn(x[:, :n]))
    for t in range(n):
        seq = torch.cat([x[:, :t + 1], x[:, n + t * s:n + (t + 1) * s]], dim=1)
        assert torch.allclose(out[:, n + t * s:n + (t + 1) * s], attn(seq)[:, t + 1:], atol=1e-12), t


# -- the model: parallel == per-position reference --

CASES = {
    "memory+recursion": dict(),
    "odd window/chunk, no persistent": dict(window=3, memory_chunk_size=3, persistent_tokens=0, active_ltm_slots=11),
    "non-prefix mask": dict(memory_chunk_size=5),
    "layer plan, T=1 n=1": dict(layer_plan=[[1, 0.8], [0, 1.0], [1, 1.2]], t_cycles=1, n_latent_steps=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parallel_stream_forward_equals_the_sequential_reference(case):
    model = tiny_model(**CASES[case]).eval()
    if case == "non-prefix mask":
        non_prefix_mask(model)
    ids, streams = data(length=11, s=3 if case == "memory+recursion" else 5)
    fast = stream_forward(model, ids, streams)
    slow = sequential_stream_forward(model, ids, streams)
    for name in ("base_logits", "stream_logits", "base_hidden", "stream_hidden"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-10), name
    assert fast.stream_logits.shape == (2, 11, streams.shape[2], 48)
    assert torch.allclose(model.lm_head(fast.stream_hidden), fast.stream_logits)
    # different streams give different stream outputs (the comparison is not vacuous)
    other = stream_forward(model, ids, data(length=11, s=streams.shape[2], seed=1)[1])
    assert not torch.allclose(other.stream_logits, fast.stream_logits, atol=1e-6)


@pytest.mark.parametrize("n_sup", [1, 2, None])
def test_base_outputs_equal_a_plain_forward_with_the_same_fixed_steps(n_sup):
    model = tiny_model().eval()
    ids, streams = data()
    out = stream_forward(model, ids, streams, n_sup=n_sup)
    plain = model(ids, n_sup=n_sup, act_threshold=1.0).logits            # no ACT halting
    assert torch.allclose(out.base_logits, plain, atol=1e-12)
    assert torch.allclose(model.lm_head(out.base_hidden), out.base_logits)
    model.train()                                                         # dropout 0: mode changes nothing
    assert torch.allclose(stream_forward(model, ids, streams, n_sup=n_sup).stream_logits, out.stream_logits,
                          atol=1e-12)
    assert torch.allclose(model(ids, n_sup=n_sup).logits, plain, atol=1e-12)


def test_a_stream_token_reaches_only_its_own_stream_from_its_own_position_on():
    model = tiny_model().eval()
    ids, streams = data(length=9, s=4)
    ref = stream_forward(model, ids, streams)
    t, s = 5, 1
    changed = streams.clone()
    changed[0, t, s] = (changed[0, t, s] + 7) % 48
    out = stream_forward(model, ids, changed)
    assert torch.equal(out.base_logits, ref.base_logits) and torch.equal(out.base_hidden, ref.base_hidden)
    moved = (out.stream_hidden != ref.stream_hidden).any(-1)             # (B, L, S)
    expected = torch.zeros_like(moved)
    expected[0, t, s:] = True
    assert torch.equal(moved, expected)


def test_streams_never_write_the_memory_nor_see_base_tokens_after_their_position():
    model = tiny_model(window=3).eval()                                  # memory carries what the window drops
    ids, streams = data(length=10, s=3)
    ref = stream_forward(model, ids, streams)
    # any change to every stream leaves every base output bit-identical
    out = stream_forward(model, ids, (streams + 5) % 48)
    assert torch.equal(out.base_logits, ref.base_logits) and torch.equal(out.base_hidden, ref.base_hidden)
    # a base token after t changes nothing for streams at ≤ t (and does change later ones)
    later = ids.clone()
    later[:, 6] = (later[:, 6] + 3) % 48
    out = stream_forward(model, later, streams)
    assert torch.equal(out.stream_hidden[:, :6], ref.stream_hidden[:, :6])
    assert torch.equal(out.base_hidden[:, :6], ref.base_hidden[:, :6])
    assert not torch.allclose(out.stream_hidden[:, 6:], ref.stream_hidden[:, 6:])


# -- gradients and QK-clip --

def test_gradients_flow_as_in_the_train_mode_forward():
    model = tiny_model().train()                                          # dropout 0
    ids, streams = data()
    weights = torch.randn(2, 9, 48, generator=torch.Generator().manual_seed(2), dtype=F64)
    (model(ids).logits * weights).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    (stream_forward(model, ids, streams).base_logits * weights).sum().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == plain.keys()
    assert all(torch.allclose(got[n], plain[n], atol=1e-10) for n in plain)


def test_a_checkpointed_memory_scan_gives_the_same_gradients(monkeypatch):
    model = tiny_model().eval()
    ids, streams = data(length=7, s=3)
    grads = []
    for limit in (memory_module.CHECKPOINT_MIN_BYTES, 0):
        monkeypatch.setattr(memory_module, "CHECKPOINT_MIN_BYTES", limit)
        model.zero_grad(set_to_none=True)
        stream_forward(model, ids, streams).stream_logits.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-10) for n in grads[0])


def test_training_stream_forwards_count_stream_logits_toward_qk_clip():
    model = tiny_model().train()
    ids, streams = data(length=8, s=3)
    with torch.no_grad():
        model(ids)
        plain = torch.stack([a.max_logits() for a in model.qk_clip_modules()])
        for a in model.qk_clip_modules():
            a.reset_max_logits()
        stream_forward(model, ids, streams)
        fast = torch.stack([a.max_logits() for a in model.qk_clip_modules()])
        for a in model.qk_clip_modules():
            a.reset_max_logits()
        sequential_stream_forward(model, ids, streams)
        slow = torch.stack([a.max_logits() for a in model.qk_clip_modules()])
    assert torch.allclose(fast, slow, atol=1e-10)
    assert (fast >= plain).all() and (fast > plain).any()


# -- thoughts --

def test_sample_thoughts_shapes_determinism_and_log_probs():
    model = tiny_model().eval()
    ids, _ = data(b=2, length=8)
    kw = dict(num_thoughts=3, length=4, start_id=START, end_id=END, temperature=0.8)
    a = sample_thoughts(model, ids, generator=torch.Generator().manual_seed(5), **kw)
    b = sample_thoughts(model, ids, generator=torch.Generator().manual_seed(5), **kw)
    c = sample_thoughts(model, ids, generator=torch.Generator().manual_seed(6), **kw)
    assert a.tokens.shape == a.logprobs.shape == (2, 3, 8, 4) and a.tokens.dtype == torch.long
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)
    assert not ((a.tokens == START) | (a.tokens == END)).any()
    assert (a.logprobs < 0).all() and not a.logprobs.requires_grad
    # the r thoughts at a position are different draws
    assert not torch.equal(a.tokens[:, 0], a.tokens[:, 1])
    recomputed = thought_logprobs(model, ids, a.tokens, start_id=START, end_id=END, temperature=0.8)
    assert torch.allclose(recomputed, a.logprobs, atol=1e-10)
    # the per-position baseline draws the same noise: same thoughts, same log-probs
    seq = sequential_sample_thoughts(model, ids, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(seq.tokens, a.tokens)
    assert torch.allclose(seq.logprobs, a.logprobs, atol=1e-10)


def test_gradients_reach_the_model_from_thought_log_probs():
    model = tiny_model().train()
    ids, _ = data(b=1, length=6)
    th = sample_thoughts(model, ids, num_thoughts=2, length=3, start_id=START, end_id=END,
                         generator=torch.Generator().manual_seed(0))
    logp = thought_logprobs(model, ids, th.tokens, start_id=START, end_id=END)
    assert logp.requires_grad
    (logp * torch.randn(logp.shape, dtype=F64, generator=torch.Generator().manual_seed(1))).sum().backward()
    layer = model.net.layers[0]
    for name, p in [("embed", model.embed.weight), ("attn.q", layer.attn.q.weight), ("attn.k", layer.attn.k.weight),
                    ("memory.to_q", layer.memory.to_q.weight), ("memory.to_k", layer.memory.to_k.weight),
                    ("memory.w1_init", layer.memory.w1_init), ("mlp", layer.up.weight),
                    ("final norm", model.norm.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_thought_streams_layout_and_scoring_thoughts_with_future_tokens_in_one_forward():
    model = tiny_model().eval()
    ids, _ = data(b=1, length=6)
    th = sample_thoughts(model, ids, num_thoughts=2, length=3, start_id=START, end_id=END,
                         generator=torch.Generator().manual_seed(0))
    streams, valid = thought_streams(ids, th.tokens, start_id=START, end_id=END, n_future=2, pad_id=0)
    assert streams.shape == (2, 6, 3 + 2 + 2) and valid.shape == (2, 6, 2)
    assert torch.equal(streams[1, 2], torch.tensor([START, *th.tokens[0, 1, 2].tolist(), END, ids[0, 3], ids[0, 4]]))
    assert valid[:, :4].all() and valid[:, 4].tolist() == [[True, False]] * 2 and not valid[:, 5].any()
    out = stream_forward(model, expand_for_thoughts(ids, 2), streams)
    logp = thought_token_logprobs(out.stream_logits, th.tokens, start_id=START, end_id=END)
    assert torch.allclose(logp, th.logprobs, atol=1e-10)


def test_shape_errors_are_reported():
    model = tiny_model()
    ids, streams = data()
    with pytest.raises(ValueError):
        stream_forward(model, ids, streams[:, :-1])
    with pytest.raises(ValueError):
        stream_forward(model, ids, streams[..., :0])

"""Quiet-STaR inference (services/quietstar/core/generate.py): the mixed next-token distribution is the one
training scores; with the thoughts weighted out it decodes like the fixed-step base model; seeded and
batch-independent; eos, cropping, the shown form and input checks."""

import pytest
import torch
from torch import nn

from services.quietstar.core import generate as gen_module
from services.quietstar.core.generate import ThoughtGeneration, _mixed_next, generate_with_thoughts, render
from services.quietstar.core.rl import MixingHead, ThoughtTokens, mix_thoughts, score_thoughts
from shared.errors import InvalidSpecError
from tests.model.helpers import tiny_model

TOK = ThoughtTokens(start_id=1, end_id=2, pad_id=0)
VOCAB = 48


def setup(seed=0, n_sup=1, vocab=VOCAB, head_bias=0.0, dtype=torch.float64):
    """A tiny model with an untied random LM head (the tied one just repeats the last token) and a head
    with random output weights, so the mixing weight varies with the thought."""
    model = tiny_model(seed, n_sup=n_sup, vocab_size=vocab)
    g = torch.Generator().manual_seed(seed + 100)
    model.lm_head.weight = nn.Parameter(0.5 * torch.randn(vocab, 32, generator=g, dtype=torch.float64))
    head = MixingHead(32).double()
    with torch.no_grad():
        head.net[2].weight.normal_(0.0, 1.0, generator=g)
        head.net[2].bias.fill_(head_bias)
    return model.to(dtype), head.to(dtype)


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def run(model, head, ps, **kw):
    args = dict(max_new_tokens=4, thought_length=2, tokens=TOK, eos_id=None)
    return generate_with_thoughts(model, head, ps, **{**args, **kw})


def same(a: ThoughtGeneration, b: ThoughtGeneration, atol=1e-9):
    return (a.tokens == b.tokens and a.thoughts == b.thoughts and len(a.weights) == len(b.weights)
            and all(abs(x - y) <= atol for x, y in zip(a.weights, b.weights)))


# -- 1. what training scores --

def test_the_mixed_distribution_is_the_one_training_scores():
    model, head = setup(n_sup=2, dtype=torch.float32)
    ids = torch.tensor(prompts([9], seed=3))
    t, k = 7, 3                                    # think after x_7, predict x_8
    thoughts = torch.randint(3, VOCAB, (1, 1, 9, k), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logp_true, valid, weight, _, out, _, _ = score_thoughts(model, head, ids, thoughts, n_future=1, tokens=TOK)
        mixed, w = _mixed_next(model, head, ids[:, :t + 1], thoughts[:, 0, t], TOK, None)
    train_mixed = mix_thoughts(out.base_logits[:, t], out.stream_logits[:, t, k + 1], weight[:, t])
    assert valid[0, t, 0]
    assert torch.allclose(w, weight[:, t], atol=1e-5)
    assert torch.allclose(mixed, train_mixed, atol=1e-5)
    assert torch.allclose(mixed[0, ids[0, t + 1]], logp_true[0, t, 0], atol=1e-5)
    # not vacuous: another thought gives another distribution
    other, _ = _mixed_next(model, head, ids[:, :t + 1], (thoughts[:, 0, t] + 1) % VOCAB, TOK, None)
    assert not torch.allclose(other, mixed, atol=1e-3)


def test_the_first_generated_step_is_what_training_would_score_for_its_thought():
    model, head = setup(n_sup=2)
    p = prompts([6], seed=5)[0]
    out = run(model, head, [p], max_new_tokens=1, thought_length=3)[0]
    ids = torch.tensor([p])
    thoughts = torch.full((1, 1, 6, 3), 5)
    thoughts[0, 0, 5] = torch.tensor(out.thoughts[0])
    with torch.no_grad():
        _, _, weight, _, so, _, _ = score_thoughts(model, head, ids, thoughts, n_future=1, tokens=TOK)
    mixed = mix_thoughts(so.base_logits[:, 5], so.stream_logits[:, 5, 4], weight[:, 5])
    assert out.weights[0] == pytest.approx(float(weight[0, 5]), abs=1e-9)
    assert out.tokens == [int(mixed.argmax())]
    assert len(out.thoughts[0]) == 3 and not {TOK.start_id, TOK.end_id} & set(out.thoughts[0])


# -- 2. thoughts weighted out: the fixed-step base model --

def test_with_zero_weight_greedy_decoding_is_the_base_models():
    model, head = setup(n_sup=2, head_bias=-50.0)      # 2 steps: fixed-step and ACT forwards can differ
    ps = prompts([5, 5, 7], seed=1)
    got = run(model, head, ps, max_new_tokens=6)
    model.eval()
    for p, g in zip(ps, got):
        ids = torch.tensor([p])
        with torch.no_grad():
            for _ in range(6):
                nxt = model(ids, act_threshold=1.0).logits[:, -1].argmax(-1, keepdim=True)   # no ACT halting
                ids = torch.cat([ids, nxt], 1)
        assert g.tokens == ids[0, len(p):].tolist()
        assert max(g.weights) < 1e-20
    assert len({tuple(g.tokens) for g in got}) > 1          # the outputs are not one repeated constant


# -- 3. seeds --

def test_same_seed_same_result_other_seed_other_thoughts_global_rng_untouched():
    model, head = setup()
    ps = prompts([5, 5], seed=2)
    state = torch.get_rng_state()
    a = run(model, head, ps, seed=7, temperature=0.8)
    b = run(model, head, ps, seed=7, temperature=0.8)
    c = run(model, head, ps, seed=8, temperature=0.8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(same(x, y, atol=0.0) for x, y in zip(a, b))
    assert [x.thoughts for x in a] != [x.thoughts for x in c]
    for x in a:
        assert len(x.tokens) == len(x.thoughts) == len(x.weights) == 4
        assert all(len(th) == 2 and not {TOK.start_id, TOK.end_id} & set(th) for th in x.thoughts)


# -- 4. batching --

def test_batched_equals_alone_and_results_come_back_in_input_order(monkeypatch):
    model, head = setup()
    ps = prompts([6, 4, 6], seed=3)
    batches = []
    real = gen_module.prefix_stream_hidden

    def spy(m, prefix, stream, **kw):
        batches.append(prefix.shape[0])
        return real(m, prefix, stream, **kw)

    monkeypatch.setattr(gen_module, "prefix_stream_hidden", spy)
    together = run(model, head, ps, temperature=0.7)
    assert sorted(set(batches)) == [1, 2]                    # the two length-6 prompts in one batch, never padded
    monkeypatch.setattr(gen_module, "prefix_stream_hidden", real)
    for p, got in zip(ps, together):
        assert same(got, run(model, head, [p], temperature=0.7)[0])
    # a repeated prompt gets its own draws; the first copy is what the prompt gets alone
    twice = run(model, head, [ps[0], ps[0]], temperature=0.7)
    assert same(twice[0], together[0]) and twice[0].thoughts != twice[1].thoughts


# -- 5. ids and rendering --

def test_ids_and_render_with_a_real_tokenizer():
    from shared.data.special_tokens import THINKING_CLOSE, THINKING_OPEN, add_special_tokens, special_token_ids
    from shared.data.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer([f"the sum of {a} and {b} is {a + b}." for a in range(12) for b in range(12)], 300)
    add_special_tokens(tok)
    ids = special_token_ids(tok)
    tt = ThoughtTokens(ids[THINKING_OPEN], ids[THINKING_CLOSE], tok.pad_token_id)
    model, head = setup(vocab=len(tok))
    k = 3
    g = run(model, head, [tok.encode("the sum of 3 and 4 is")], thought_length=k, tokens=tt)[0]
    assert g.ids(tt, show_thoughts=False) == g.tokens
    shown = g.ids(tt, show_thoughts=True)
    assert len(shown) == len(g.tokens) * (k + 3)
    for i, token in enumerate(g.tokens):
        block = shown[i * (k + 3):(i + 1) * (k + 3)]
        assert block == [tt.start_id, *g.thoughts[i], tt.end_id, token]
    assert render(tok, g, tt, show_thoughts=False) == tok.decode(g.tokens, skip_special_tokens=False)
    text = render(tok, g, tt, show_thoughts=True)
    assert text == tok.decode(shown, skip_special_tokens=False)
    assert text.count(THINKING_OPEN) == text.count(THINKING_CLOSE) == len(g.tokens)
    assert tok.decode(shown, skip_special_tokens=True) != text            # the markers are special tokens


# -- 6. eos, cropping, modes, errors --

def test_eos_stops_only_its_row():
    model, head = setup()
    ps = prompts([5, 5], seed=4)
    free = run(model, head, ps, max_new_tokens=6)
    eos = next(t for t in free[0].tokens[1:] if t not in free[1].tokens)
    cut = free[0].tokens.index(eos)
    stopped = run(model, head, ps, max_new_tokens=6, eos_id=eos)
    assert stopped[0].tokens == free[0].tokens[:cut]
    assert stopped[0].thoughts == free[0].thoughts[:cut] and len(stopped[0].weights) == cut
    assert same(stopped[1], free[1])                       # the other row goes on to max_new_tokens


def test_the_context_is_cropped_from_the_left_to_fit_max_length(monkeypatch):
    model, head = setup()
    seen = []
    real = gen_module.prefix_stream_hidden

    def spy(m, prefix, stream, **kw):
        seen.append((prefix[0].tolist(), stream.shape[1]))
        return real(m, prefix, stream, **kw)

    monkeypatch.setattr(gen_module, "prefix_stream_hidden", spy)
    p = prompts([6], seed=6)[0]
    g = run(model, head, [p], max_length=7, max_new_tokens=3)[0]      # k = 2: 3 context tokens + 4 stream
    assert max(len(pre) + s for pre, s in seen) == 7
    full = p + g.tokens
    assert [pre for pre, _ in seen[::3]] == [full[:6][-3:], full[:7][-3:], full[:8][-3:]]


def test_modes_are_restored_and_no_grad_is_kept():
    model, head = setup()
    model.train()
    head.eval()
    model.halt_head.eval()
    run(model, head, prompts([4]), max_new_tokens=1)
    assert model.training and not head.training and not model.halt_head.training
    assert all(p.grad is None for p in [*model.parameters(), *head.parameters()])


@pytest.mark.parametrize("bad,field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(thought_length=0), "thought_length"),
    (dict(temperature=-0.1), "temperature"),
    (dict(thought_temperature=0.0), "thought_temperature"),
    (dict(n_sup=0), "n_sup"),
    (dict(max_length=4), "max_length"),                   # k = 2 needs 1 + 4
    (dict(tokens=ThoughtTokens(1, VOCAB, 0)), "tokens.end_id"),
    (dict(ps=[]), "prompts"),
    (dict(ps=[[3, 4], []]), "prompts[1]"),
    (dict(ps=[[3, VOCAB]]), "prompts[0]"),
])
def test_bad_inputs_name_the_field(bad, field):
    model, head = setup()
    ps = bad.pop("ps", [[3, 4, 5]])
    with pytest.raises(InvalidSpecError) as err:
        run(model, head, ps, **bad)
    assert err.value.field == field

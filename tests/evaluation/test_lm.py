"""Log-likelihood and generation: the lm-eval split, truncation, batching, mode and output forms."""

import math
from pathlib import Path

import pytest
import torch

from shared.errors import InvalidSpecError
from shared.evaluation import greedy_generate, loglikelihood, loglikelihoods
from shared.evaluation.lm import encode_pair, generate_tokens, logits_of
from tests.evaluation.fakes import (EOS, VOCAB, CharTokenizer, OutputWrapper, PrefixMeanLM, Recording,
                                    ScriptedGenerator, UniformLM, teach)

TOK = CharTokenizer()
GPT2_DIR = Path(__file__).resolve().parents[3] / "shared" / "tokenizers" / "gpt2"


def test_uniform_model_scores_log_v_per_continuation_token():
    logprob, tokens, greedy = loglikelihood(UniformLM(), TOK, "Question: sky?\nAnswer:", " blue")
    assert tokens == len(" blue")
    assert logprob == pytest.approx(-tokens * math.log(VOCAB), rel=1e-6)
    assert not greedy  # argmax of a flat row is token 0 ("0"), not the continuation


def test_taught_continuation_is_greedy_and_certain():
    model = teach(TOK, [("Q: sky?\nA:", " blue")])
    logprob, tokens, greedy = loglikelihood(model, TOK, "Q: sky?\nA:", " blue")
    assert greedy and tokens == 5 and logprob == pytest.approx(0.0, abs=1e-6)
    assert not loglikelihood(model, TOK, "Q: sky?\nA:", " bluX").is_greedy


def test_trailing_context_space_moves_to_the_continuation():
    model = PrefixMeanLM()
    assert loglikelihood(model, TOK, "Answer: ", "yes") == loglikelihood(model, TOK, "Answer:", " yes")
    assert encode_pair(TOK, "Answer:  ", "yes") == (TOK.encode("Answer:"), TOK.encode("  yes"))


@pytest.mark.skipif(not (GPT2_DIR / "vocab.bpe").is_file(), reason="the GPT-2 tokenizer files are absent")
def test_bpe_split_gives_the_continuation_its_own_space_token():
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer(vocab_file=str(GPT2_DIR / "encoder.json"), merges_file=str(GPT2_DIR / "vocab.bpe"))
    context_ids, continuation_ids = encode_pair(tok, "Answer: ", "yes")
    assert context_ids == tok.encode("Answer:")
    assert continuation_ids == tok.encode(" yes")  # one merged " yes" token, not " " + "yes"
    assert encode_pair(tok, "Answer:", " yes") == (context_ids, continuation_ids)


def test_empty_context_is_replaced_by_eos():
    model = UniformLM()
    _, tokens, _ = loglikelihood(model, TOK, "", "abc")
    assert tokens == 3
    assert model.calls[-1][2] == (1, 3)  # eos, a, b -> predicts a, b, c
    assert encode_pair(TOK, "", "abc")[0] == [EOS]


def test_context_is_truncated_from_the_left():
    model = PrefixMeanLM()
    context, continuation = "a long context that will not fit", " end"
    result = loglikelihood(model, TOK, context, continuation, max_length=10)
    assert model.calls[-1][2] == (1, 10)
    # Same as scoring the last 11 tokens of the pair by hand.
    ids = TOK.encode(context + continuation)[-11:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]])), -1)[0]
    expected = sum(float(logprobs[t, ids[t + 1]]) for t in range(10 - 4, 10))
    assert result.tokens == 4 and result.logprob == pytest.approx(expected, abs=1e-5)
    with pytest.raises(InvalidSpecError, match="max_length"):
        loglikelihood(model, TOK, context, " far too long", max_length=5)


def test_batched_scores_equal_one_at_a_time():
    model = PrefixMeanLM()
    requests = [("Question: a?\nAnswer:", " x"), ("Q:", " a much longer answer"), ("ctx", " mid one"),
                ("", "no context"), ("Question: a?\nAnswer:", " y")]
    batched = loglikelihoods(model, TOK, requests, batch_size=4)
    single = [loglikelihood(model, TOK, c, x) for c, x in requests]
    for b, s in zip(batched, single):
        assert b.tokens == s.tokens and b.is_greedy == s.is_greedy
        assert b.logprob == pytest.approx(s.logprob, abs=1e-5)


@pytest.mark.parametrize("style", ["attr", "tuple"])
def test_model_output_forms_score_the_same(style):
    inner = PrefixMeanLM()
    plain = loglikelihood(inner, TOK, "Q: x\nA:", " yes")
    wrapped = loglikelihood(OutputWrapper(inner, style), TOK, "Q: x\nA:", " yes")
    assert wrapped == plain


def test_wrong_logits_shape_is_an_error_naming_the_model():
    class Flat(Recording):
        def forward(self, input_ids):
            return torch.zeros(input_ids.shape[0], VOCAB)

    with pytest.raises(InvalidSpecError, match="model"):
        logits_of(Flat(), torch.zeros(1, 3, dtype=torch.long))


def test_empty_continuation_is_an_error():
    with pytest.raises(InvalidSpecError, match="continuation"):
        loglikelihood(UniformLM(), TOK, "ctx", "")


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored_and_forward_runs_in_eval_without_grad(training):
    model = PrefixMeanLM().train(training)
    loglikelihood(model, TOK, "ctx", " x")
    greedy_generate(model, torch.tensor([TOK.encode("ab")]), 3)
    assert model.training is training
    assert all(not was_training and not grad for was_training, grad, _ in model.calls)


def test_mode_is_restored_when_the_model_raises():
    class Broken(Recording):
        def forward(self, input_ids):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError):
        loglikelihood(model, TOK, "ctx", " x")
    assert model.training


def test_greedy_generate_takes_the_argmax_at_every_step():
    model = PrefixMeanLM(seed=3)
    prompt = torch.tensor([TOK.encode("seed"), TOK.encode("text")])
    out = greedy_generate(model, prompt, 6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        for k in range(4, 10):
            assert torch.equal(out[:, k], model(out[:, :k])[:, -1].argmax(-1))


def test_greedy_generate_stops_at_eos_and_pads_finished_rows_with_it():
    model = teach(TOK, [("Q1", " done"), ("Q2", " a longer reply")], eos=True)
    out = greedy_generate(model, torch.tensor([TOK.encode("Q1"), TOK.encode("Q2")]), 40, EOS)
    assert out.shape[1] == 2 + len(" a longer reply") + 1  # stops once both rows have emitted eos
    assert TOK.decode(out[0, 2:7].tolist()) == " done" and (out[0, 7:] == EOS).all()
    assert generate_tokens(model, torch.tensor([TOK.encode("Q1")]), 40, EOS) == [TOK.encode(" done")]


def test_greedy_generate_crops_the_window_to_max_length():
    model = UniformLM()
    greedy_generate(model, torch.tensor([TOK.encode("0123456789")]), 5, max_length=4)
    assert max(shape[1] for _, _, shape in model.calls) == 4


def test_generate_tokens_prefers_the_models_own_generate():
    model = ScriptedGenerator(TOK, {"hi": " there"}).train()
    assert generate_tokens(model, torch.tensor([TOK.encode("hi")]), 20, EOS) == [TOK.encode(" there")]
    assert model.generate_calls == [{"training": False, "do_sample": False, "max_new_tokens": 20}]
    assert model.training


def test_each_submodule_gets_its_own_mode_back():
    model = OutputWrapper(PrefixMeanLM(), "attr").train()
    model.inner.embed.eval()  # e.g. a frozen embedding inside a training model
    loglikelihood(model, TOK, "ctx", " x")
    assert model.training and model.inner.training and not model.inner.embed.training


def test_a_plain_function_is_a_model_too():
    def model(input_ids):
        return torch.zeros(*input_ids.shape, VOCAB)

    assert loglikelihood(model, TOK, "ctx", " x").tokens == 2


def test_a_hugging_face_model_generates_what_our_greedy_loop_does():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                     eos_token_id=EOS, bos_token_id=EOS, pad_token_id=EOS)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).train()
    prompt = torch.tensor([TOK.encode("Question: 2+2?\nAnswer:")])
    theirs = generate_tokens(model, prompt, 12, EOS)  # the model's own generate, with its KV cache
    assert model.training

    class WithoutGenerate(torch.nn.Module):  # hides generate: our loop on the ModelOutput's .logits
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids):
            return self.inner(input_ids)

    assert generate_tokens(WithoutGenerate(), prompt, 12, EOS) == theirs
    # The context size comes from the config when max_length is not given.
    with pytest.raises(InvalidSpecError, match="max_length"):
        loglikelihood(model, TOK, "", "x" * 65)

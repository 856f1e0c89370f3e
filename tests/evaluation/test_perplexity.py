"""Perplexity and NLL: uniform over V tokens is exactly V, a teacher scores ≈ 0, each token counts once."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from shared.errors import InvalidSpecError
from shared.evaluation import (evaluate_perplexity, heldout_nll, stream_nll, token_counts, token_stream,
                               unigram_nll, windows)
from tests.evaluation.fakes import (EOS, VOCAB, BigramLM, CharTokenizer, LookupLM, PrefixMeanLM, UniformLM,
                                    prefix_table)

TOK = CharTokenizer()
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog " * 4]
N_TARGETS = sum(len(t) + 1 for t in TEXTS)  # every character and every end of text


def test_stream_is_eos_then_each_text_followed_by_eos():
    stream = token_stream(TOK, ["ab", "c"])
    assert stream == [EOS, *TOK.encode("ab"), EOS, *TOK.encode("c"), EOS]


@pytest.mark.parametrize("n, seq_len, stride", [(2, 1, None), (10, 3, None), (10, 3, 1), (10, 3, 2),
                                                (57, 8, 5), (57, 64, None), (100, 16, 16), (9, 8, 7)])
def test_windows_score_every_position_once_with_the_promised_context(n, seq_len, stride):
    spans = windows(n, seq_len, stride)
    targets = Counter(p for _, b, first in spans for p in range(first, b + 1))
    assert sorted(targets) == list(range(1, n)) and set(targets.values()) == {1}
    for i, (a, b, first) in enumerate(spans):
        assert 0 < b - a <= seq_len and a < first <= b
        if i:  # after the first window, every scored token sees at least seq_len - stride tokens
            assert first - a >= seq_len - (stride or seq_len)


@pytest.mark.parametrize("seq_len, stride", [(8, None), (8, 3), (1, None), (200, None)])
def test_uniform_model_has_perplexity_v(seq_len, stride):
    result = evaluate_perplexity(UniformLM(), TOK, TEXTS, seq_len=seq_len, stride=stride)
    assert result["tokens"] == N_TARGETS
    assert result["nll"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result["perplexity"] == pytest.approx(VOCAB, rel=1e-5)


def test_teacher_of_the_text_has_nll_near_zero():
    # One text in which every character has one successor: a bigram teacher is certain in every window.
    text = ["abcdefghijklmnopqrstuvwxyz"]
    stream = token_stream(TOK, text)
    bigram = LookupLM(prefix_table([(stream, 1)], order=1), order=1)
    for stride in (None, 2):
        result = evaluate_perplexity(bigram, TOK, text, seq_len=4, stride=stride)
        assert result["nll"] == pytest.approx(0.0, abs=1e-6) and result["tokens"] == len(stream) - 1
    # Several texts: a teacher of the whole stream, in one window.
    stream = token_stream(TOK, TEXTS)
    teacher = LookupLM(prefix_table([(stream, 1)]))
    result = evaluate_perplexity(teacher, TOK, TEXTS, seq_len=len(stream))
    assert result["nll"] == pytest.approx(0.0, abs=1e-6) and result["tokens"] == N_TARGETS


def test_a_model_without_long_context_scores_the_same_for_any_window_stride_or_batch():
    model = BigramLM()
    runs = [evaluate_perplexity(model, TOK, TEXTS, seq_len=s, stride=st, batch_size=bs)
            for s, st, bs in [(4, None, 1), (4, 1, 3), (16, 7, 2), (500, None, 1)]]
    for run in runs[1:]:
        assert run["tokens"] == runs[0]["tokens"]
        assert run["nll"] == pytest.approx(runs[0]["nll"], rel=1e-5)


def test_one_window_over_the_stream_equals_cross_entropy_by_hand():
    model = PrefixMeanLM()
    stream = torch.tensor(token_stream(TOK, TEXTS))
    with torch.no_grad():
        expected = F.cross_entropy(model(stream[None, :-1])[0], stream[1:]).item()
    assert evaluate_perplexity(model, TOK, TEXTS, seq_len=len(stream))["nll"] == pytest.approx(expected, 1e-5)
    # More context per scored token helps a model that uses context: a sliding window beats disjoint ones.
    disjoint = evaluate_perplexity(model, TOK, TEXTS, seq_len=4)
    sliding = evaluate_perplexity(model, TOK, TEXTS, seq_len=4, stride=1)
    assert disjoint["tokens"] == sliding["tokens"] == N_TARGETS and disjoint["nll"] != sliding["nll"]


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored_and_nothing_tracks_gradients(training):
    model = PrefixMeanLM().train(training)
    evaluate_perplexity(model, TOK, TEXTS, seq_len=8)
    heldout_nll(model, [(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 3]]))])
    assert model.training is training
    assert all(not was_training and not grad for was_training, grad, _ in model.calls)


def test_heldout_nll_shifts_labels_and_ignores_minus_100():
    model = PrefixMeanLM()
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])
    labels = input_ids.clone()
    labels[1, :3] = -100  # a prompt that is not a target
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids), -1)
    targets = [(0, t) for t in range(1, 5)] + [(1, 3), (1, 4)]
    expected = -sum(float(logprobs[b, t - 1, input_ids[b, t]]) for b, t in targets) / len(targets)
    assert heldout_nll(model, [(input_ids, labels)]) == pytest.approx(expected, rel=1e-5)
    as_dict = {"input_ids": input_ids, "labels": labels}
    assert heldout_nll(model, [as_dict]) == pytest.approx(expected, rel=1e-5)
    # Split into two batches: still the mean per target token, not the mean of batch means.
    split = [(input_ids[:1], labels[:1]), (input_ids[1:], labels[1:])]
    assert heldout_nll(model, split) == pytest.approx(expected, rel=1e-5)
    assert heldout_nll(UniformLM(), [(input_ids, labels)]) == pytest.approx(math.log(VOCAB))


def test_unigram_nll_follows_add_one_smoothing():
    counts = torch.tensor([3, 1, 0])  # N = 4, V = 3: p = 4/7, 2/7, 1/7
    expected = -(math.log(4 / 7) + math.log(1 / 7)) / 2
    assert unigram_nll(counts, [0, 2]) == pytest.approx(expected)
    assert unigram_nll({0: 3, 1: 1}, torch.tensor([0, 2]), vocab_size=3) == pytest.approx(expected)
    assert unigram_nll([0] * VOCAB, [1, 2, 3]) == pytest.approx(math.log(VOCAB))  # no data: uniform


def test_unigram_baseline_and_model_nll_score_the_same_targets():
    # The Cognate gate's gain: a uniform model is no better than the unigram of a skewed corpus.
    stream = token_stream(TOK, TEXTS)
    counts = token_counts(stream[1:], VOCAB)
    gain = unigram_nll(counts, stream[1:]) - stream_nll(UniformLM(), stream, seq_len=16)["nll"]
    assert gain < 0


@pytest.mark.parametrize("call, match", [
    (lambda: evaluate_perplexity(UniformLM(), TOK, TEXTS, seq_len=0), "seq_len"),
    (lambda: evaluate_perplexity(UniformLM(), TOK, TEXTS, seq_len=4, stride=5), "stride"),
    (lambda: stream_nll(UniformLM(), [EOS], seq_len=4), "texts"),
    (lambda: heldout_nll(UniformLM(), [(torch.ones(1, 3, dtype=torch.long), torch.full((1, 3), -100))]),
     "texts"),
    (lambda: heldout_nll(UniformLM(), [(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2))]), "labels"),
    (lambda: unigram_nll({0: 1}, [0]), "vocab_size"),
    (lambda: unigram_nll([1, 1], [2]), "tokens_eval"),
    (lambda: unigram_nll([1, 1], []), "tokens_eval"),
    (lambda: token_counts([0, 5], 3), "token_ids"),
])
def test_bad_input_is_an_error_naming_the_field(call, match):
    with pytest.raises(InvalidSpecError, match=match):
        call()

"""Quiet-STaR's learning signal and anti-theater checks as pure functions (issue #9 step 2)."""

import math
import random

import pytest
import torch

from services.quietstar.core.rl import (
    MixingHead,
    anti_theater_check,
    kl_to_reference,
    mix_thoughts,
    normalised_edit_distance,
    pearson,
    reinforce_loss,
    score_coherence,
    thought_rewards,
)


def test_mixing_is_a_distribution_between_its_two_parts():
    torch.manual_seed(0)
    base, thought = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    for w in (0.0, 0.3, 1.0):
        mixed = mix_thoughts(base, thought, torch.full((3, 5), w))
        assert torch.allclose(mixed.exp().sum(-1), torch.ones(3, 5), atol=1e-5)
        want = w * thought.softmax(-1) + (1 - w) * base.softmax(-1)
        assert torch.allclose(mixed.exp(), want, atol=1e-5)


def test_the_mixing_head_starts_by_trusting_the_base_and_gets_gradient():
    head = MixingHead(8)
    w = head(torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    assert torch.allclose(w, torch.full_like(w, 1 / (1 + math.e ** 2)), atol=1e-6)
    w.sum().backward()
    assert head.net[2].bias.grad.abs().item() > 0


def test_rewards_have_zero_mean_over_thoughts_and_zero_where_invalid():
    torch.manual_seed(1)
    logp = torch.randn(2, 4, 6)
    valid = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    r = thought_rewards(logp, valid)
    assert torch.allclose(r.mean(dim=1), torch.zeros(2, 6), atol=1e-6)
    assert (r[:, :, ~valid[0]][0] == 0).all()
    # adding the same amount to every thought of a position changes no reward
    assert torch.allclose(thought_rewards(logp + 5.0, valid), r, atol=1e-5)


def test_reinforce_pushes_up_only_thoughts_above_the_threshold():
    logprob = torch.zeros(1, 3, 2, requires_grad=True)
    rewards = torch.tensor([[[0.5, -0.2], [0.05, 0.3], [-0.55, -0.1]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    reinforce_loss(logprob, rewards, threshold=0.1, valid=valid).backward()
    grad = logprob.grad[0]
    assert grad[0, 0] < 0 and grad[1, 1] < 0          # descending the loss raises these log-probs
    assert grad[1, 0] == 0 and (grad[2] == 0).all() and grad[0, 1] == 0


def test_kl_is_zero_against_itself_and_positive_otherwise():
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    assert kl_to_reference(a, a).abs() < 1e-6 and kl_to_reference(a, b) > 0


def test_edit_distance_properties():
    rng = random.Random(0)
    for _ in range(50):
        a = [rng.randrange(4) for _ in range(rng.randrange(8))]
        b = [rng.randrange(4) for _ in range(rng.randrange(8))]
        d = normalised_edit_distance(a, b)
        assert 0 <= d <= 1 and d == normalised_edit_distance(b, a)
        assert normalised_edit_distance(a, a) == 0
    assert normalised_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalised_edit_distance([1, 2], [3, 4]) == 1.0


def test_pearson_and_coherence():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1, 2], [1, 2]) is None
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.1, 0.1]]))
    assert torch.allclose(score_coherence(lp), torch.tensor([0.5, 0.1]))
    assert torch.allclose(score_coherence(torch.log(torch.tensor([[0.5, 0.01]])), torch.tensor([1])),
                          torch.tensor([0.5]))


def test_anti_theater_fails_on_any_missing_or_low_measure():
    assert anti_theater_check(0.5, 0.1, 0.7).passed
    for args in ((None, 0.1, 0.7), (0.5, float("nan"), 0.7), (0.2, 0.1, 0.7), (0.5, 0.01, 0.7), (0.5, 0.1, 0.5)):
        result = anti_theater_check(*args)
        assert not result.passed and len(result.failures) == 1
        assert result.metrics()["quietstar/anti_theater_passed"] == 0.0
    assert "could not be computed" in anti_theater_check(None, 0.1, 0.7).failures[0]

"""Quiet-STaR with the model (issue #9 step 2): targets, a planted reward, rewards' zero mean, rollback,
and anti-theater checks that fail when thoughts are useless."""

import torch

from services.quietstar.core.rl import (
    MixingHead,
    ThoughtTokens,
    anti_theater_check,
    measure_theater,
    quietstar_step,
    restore,
    score_thoughts,
    snapshot,
    train_thoughts,
)
from shared.model.thoughts import sample_thoughts, thought_logprobs
from tests.model.helpers import tiny_model

TOK = ThoughtTokens(start_id=1, end_id=2, pad_id=0)


def batch(b=2, length=10, vocab=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (b, length), generator=g)   # no thinking tokens in the text


def setup(seed=0):
    model = tiny_model(seed)
    head = MixingHead(model.config.hidden_dim).double()
    return model, head


def test_only_true_tokens_are_nll_targets_never_thought_tokens():
    model, head = setup()
    ids = batch()
    th = sample_thoughts(model, ids, num_thoughts=2, length=3, start_id=1, end_id=2,
                         generator=torch.Generator().manual_seed(0))
    _, fvalid, _, _, _, _, targets = score_thoughts(model, head, ids, th.tokens, n_future=2, tokens=TOK)
    n = ids.shape[1]
    for row in range(targets.shape[0]):
        for t in range(n):
            for i in range(2):
                if t + 1 + i < n:
                    assert fvalid[row, t, i] and targets[row, t, i] == ids[row // 2, t + 1 + i]
                else:
                    assert not fvalid[row, t, i]
    assert not torch.isin(targets[fvalid], torch.tensor([1, 2])).any()


def test_rewards_have_zero_mean_over_the_thoughts_of_each_position():
    model, head = setup()
    out = quietstar_step(model, head, batch(), num_thoughts=3, length=2, n_future=2, tokens=TOK,
                         generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.rewards.mean(dim=1), torch.zeros_like(out.rewards[:, 0]), atol=1e-9)
    assert out.rewards.abs().sum() > 0 and torch.isfinite(out.loss)


def test_a_planted_reward_raises_the_rewarded_thought_and_moves_the_mixing_head():
    model, head = setup()
    ids = batch()
    g = torch.Generator().manual_seed(2)
    probe = quietstar_step(model, head, ids, num_thoughts=2, length=3, n_future=2, tokens=TOK, generator=g)
    planted = torch.zeros_like(probe.rewards)
    planted[:, 0], planted[:, 1] = 1.0, -1.0
    head_before = [p.detach().clone() for p in head.parameters()]
    with torch.no_grad():
        before = thought_logprobs(model, ids, probe.tokens, start_id=1, end_id=2).sum(-1)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.05)
    out = quietstar_step(model, head, ids, num_thoughts=2, length=3, n_future=2, tokens=TOK,
                         generator=torch.Generator().manual_seed(2), planted_rewards=planted)
    assert torch.equal(out.tokens, probe.tokens)  # same generator, same thoughts
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    with torch.no_grad():
        after = thought_logprobs(model, ids, probe.tokens, start_id=1, end_id=2).sum(-1)
    valid = probe.valid
    assert (after[:, 0] - before[:, 0])[valid].mean() > 0      # rewarded thought more likely
    assert any(not torch.equal(a, b) for a, b in zip(head.parameters(), head_before))


def test_rollback_restores_exactly_the_saved_weights():
    model, head = setup()
    saved = snapshot(model, head)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    quietstar_step(model, head, batch(), num_thoughts=2, length=2, n_future=2, tokens=TOK).loss.backward()
    opt.step()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in saved[0].items())
    restore(saved, model, head)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved[0].items())
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in saved[1].items())


def test_useless_thoughts_fail_the_anti_theater_checks():
    model, head = setup()
    with torch.no_grad():
        head.net[2].bias.fill_(-60.0)            # the mixing head ignores every thought
    m = measure_theater(model, head, batch(b=4, length=12), num_thoughts=2, length=2, n_future=1, tokens=TOK,
                        continuation=4, prompts=2, generator=torch.Generator().manual_seed(0))
    assert m["ablation"] is not None and abs(m["ablation"]) < 1e-6   # removing them changes nothing
    result = anti_theater_check(m["divergence"], m["ablation"], m["correlation"])
    assert not result.passed and any(f.startswith("ablation") for f in result.failures)


def _loop(model, head, check, steps=4, check_every=2, on_check=None):
    ids = batch(b=2, length=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train_thoughts(model, head, lambda step: batch(b=2, length=8, seed=step), ids, steps=steps, optimizer=opt,
                          num_thoughts=2, length=2, n_future=1, tokens=TOK, check_every=check_every,
                          kl_coefficient=0.1, reward_threshold=0.02, check=check, on_check=on_check)


def test_a_failing_check_rolls_back_exactly_doubles_kl_and_raises_the_threshold():
    model, head = setup()
    start = snapshot(model, head)
    result = _loop(model, head, lambda *m: anti_theater_check(0.0, 0.0, 0.0))
    assert result.rollbacks == 2 and result.last_passing_step == 0
    assert result.kl_coefficient == 0.1 * 4 and abs(result.reward_threshold - 0.02 * 1.5 ** 2) < 1e-12
    # ends on the last passing weights: here the baked start, bit for bit
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start[0].items())
    assert [c["rolled_back_to"] for c in result.checks] == [0, 0]


def test_a_passing_check_becomes_the_rollback_point():
    model, head = setup()
    verdicts = iter([anti_theater_check(1.0, 1.0, 1.0), anti_theater_check(None, 1.0, 1.0)])
    at_pass = {}
    result = _loop(model, head, lambda *m: next(verdicts),
                   on_check=lambda step, v, kl, thr: at_pass.setdefault(step, snapshot(model)[0]))
    assert result.last_passing_step == 2 and result.rollbacks == 1
    # the weights seen after the failing check at step 4 are the step-2 ones, exactly
    assert all(torch.equal(at_pass[2][k], at_pass[4][k]) for k in at_pass[2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in at_pass[2].items())
    assert result.checks[1]["failures"] == ["divergence could not be computed"]
    assert result.kl_coefficient == 0.2 and result.checks[1]["rolled_back_to"] == 2

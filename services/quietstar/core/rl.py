"""Quiet-STaR's learning signal and its honesty checks (DESIGN.md §5 Phase 3b, issue #9 step 2).

At every position t of a span the model thinks r thoughts of k tokens (sampled in parallel, see
shared.model.thoughts); each thought is followed by the n true next tokens, teacher-forced. A mixing head
blends the next-token distribution with the thought and without it:

    p_mix(x | thought) = w · p_thought(x) + (1 − w) · p_base(x),     w = σ(head([h_base ; h_thought]))

The reward of thought j at t is how much it helps predict the true tokens, relative to its siblings:

    R_j = Σ_i log p_mix(x_{t+i} | thought_j)  −  mean_j' Σ_i log p_mix(x_{t+i} | thought_j')

so rewards have zero mean over the r thoughts. REINFORCE raises the log-probability of thoughts whose
advantage is positive and above the reward threshold (the minimum advantage a thought needs to be
reinforced): L_rl = −mean[ 1{R_j > τ} · R_j · log p(thought_j) ]. The model and the head also learn from the
mixed NLL, and a KL term keeps the base predictions near the baked model's (our addition).

Anti-theater checks (our addition) are real ablations: thinking must change what the model writes
(divergence), thoughts must help the likelihood over the same model with thoughts removed (ablation), and
thoughts the model finds coherent must be the ones that lead to right predictions (correlation). A check
that cannot be computed fails.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.telemetry.metric_names import RL_COHERENCE, RL_REWARD

# The thresholds.
DIVERGENCE_MIN = 0.3
ABLATION_MIN = 0.02
CORRELATION_MIN = 0.5


class MixingHead(nn.Module):
    """w = σ(MLP([h_base ; h_thought])). Starts near w ≈ 0.12 (bias −2) so an untrained thought barely
    disturbs the base prediction — the model earns the weight it gives its thoughts."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, -2.0)

    def forward(self, h_base: Tensor, h_thought: Tensor) -> Tensor:
        return torch.sigmoid(self.net(torch.cat([h_base, h_thought], dim=-1))).squeeze(-1)


def mix_thoughts(base_logits: Tensor, thought_logits: Tensor, weight: Tensor) -> Tensor:
    """log(w·softmax(thought) + (1 − w)·softmax(base)), computed in log space; weight broadcasts over the
    vocabulary (shape = logits' shape without the last dim)."""
    w = weight.unsqueeze(-1).clamp(1e-6, 1 - 1e-6)
    return torch.logaddexp(torch.log(w) + F.log_softmax(thought_logits.float(), -1),
                           torch.log1p(-w) + F.log_softmax(base_logits.float(), -1))


def thought_rewards(logp_true: Tensor, valid: Tensor | None = None) -> Tensor:
    """logp_true: (B, r, L) summed log p_mix of the true tokens after each thought. Returns the advantage of
    each thought over the mean of its r siblings (zero mean over r); invalid positions get 0."""
    rewards = logp_true - logp_true.mean(dim=1, keepdim=True)
    if valid is not None:
        rewards = rewards * valid.unsqueeze(1)
    return rewards


def reinforce_loss(thought_logprob: Tensor, rewards: Tensor, threshold: float, valid: Tensor) -> Tensor:
    """−mean over valid (thought, position) of 1{R > τ}·R·log p(thought) (R treated as a constant)."""
    r = rewards.detach()
    keep = (r > max(threshold, 0.0)) & valid.unsqueeze(1)
    n = valid.sum().clamp(min=1) * rewards.shape[1]
    return -(torch.where(keep, r, torch.zeros_like(r)) * thought_logprob).sum() / n


def kl_to_reference(logits: Tensor, ref_logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean KL(p_model || p_ref) over positions (the RL preset's KL to the baked model)."""
    lp, lq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if valid is None:
        return kl.mean()
    return (kl * valid).sum() / valid.sum().clamp(min=1)


# == anti-theater =============================================================================================

def normalised_edit_distance(a: list[int] | str, b: list[int] | str) -> float:
    """Levenshtein distance / max length (0 = identical, 1 = nothing in common); 0 for two empty sequences."""
    if not a and not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1] / max(len(a), len(b))


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation, or None when it is undefined (fewer than 3 pairs or a constant series)."""
    if len(x) != len(y) or len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


def score_coherence(thought_logprobs: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Coherence of a thought as the model reads it: exp(mean token log-prob) ∈ (0, 1] — the inverse
    perplexity of the thought under the model that wrote it (1 = fully predictable, near 0 = noise).
    thought_logprobs: (..., k) per-token log-probs."""
    if lengths is None:
        mean = thought_logprobs.mean(-1)
    else:
        mask = torch.arange(thought_logprobs.shape[-1], device=thought_logprobs.device) < lengths.unsqueeze(-1)
        mean = (thought_logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return mean.exp()


@dataclass
class AntiTheaterResult:
    divergence: float | None
    ablation: float | None
    correlation: float | None
    passed: bool = False
    failures: list[str] = field(default_factory=list)

    def metrics(self, prefix: str = "quietstar/anti_theater") -> dict[str, float]:
        out = {f"{prefix}_passed": float(self.passed)}
        for name in ("divergence", "ablation", "correlation"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}_{name}"] = float(value)
        return out


def anti_theater_check(divergence: float | None, ablation: float | None, correlation: float | None, *,
                       divergence_min: float = DIVERGENCE_MIN, ablation_min: float = ABLATION_MIN,
                       correlation_min: float = CORRELATION_MIN) -> AntiTheaterResult:
    """The checklist's anti_theater_check: every measure must be computed and above its threshold."""
    result = AntiTheaterResult(divergence, ablation, correlation)
    for name, value, minimum in (("divergence", divergence, divergence_min), ("ablation", ablation, ablation_min),
                                 ("correlation", correlation, correlation_min)):
        if value is None or not math.isfinite(value):
            result.failures.append(f"{name} could not be computed")
        elif not value > minimum:
            result.failures.append(f"{name} {value:.3f} is not above {minimum}")
    result.passed = not result.failures
    return result


# == with the model ============================================================================================

@dataclass(frozen=True)
class ThoughtTokens:
    start_id: int   # [thinking]
    end_id: int     # [/endthinking]
    pad_id: int


@dataclass
class StepOutput:
    loss: Tensor
    nll: Tensor                 # mixed NLL of the true tokens after the thoughts (per token)
    rl: Tensor                  # REINFORCE term
    kl: Tensor                  # KL(model base || reference base)
    rewards: Tensor             # (B, r, L) advantages, zero mean over r
    thought_logprob: Tensor     # (B, r, L) log p(thought) summed over its tokens (with grad)
    weight: Tensor              # (B, r, L) mixing weight given to each thought
    valid: Tensor               # (B, L) positions with at least one true future token
    tokens: Tensor              # (B, r, L, k) the thoughts

    def stats(self) -> dict[str, float]:
        v = self.valid.unsqueeze(1).expand_as(self.rewards)
        k = max(1, int(self.tokens.shape[-1]))
        return {"rl/loss": float(self.loss.detach()), "rl/nll": float(self.nll), "rl/reinforce": float(self.rl),
                # the checklist's names: rl/reward = mean log p_mix of a true future token after a thought (the
                # reward before the sibling mean is taken, per token); rl/coherence = score_coherence of the
                # sampled thoughts (exp of their mean token log-prob)
                RL_REWARD: -float(self.nll),
                RL_COHERENCE: float((self.thought_logprob.detach()[v] / k).exp().mean()),
                "rl/kl": float(self.kl), "rl/reward_abs": float(self.rewards[v].abs().mean()),
                "rl/mixing_weight": float(self.weight[v].mean()),
                "rl/thought_logprob": float(self.thought_logprob.detach()[v].mean())}


def generate_thoughts(model, input_ids: Tensor, *, num: int, length: int, tokens: ThoughtTokens,
                      temperature: float = 1.0, generator: torch.Generator | None = None):
    """The checklist's generate_thoughts: `num` thoughts of `length` tokens at every position of input_ids,
    sampled in parallel (shared.model.thoughts.sample_thoughts); returns its Thoughts (tokens, log-probs)."""
    from shared.model.thoughts import sample_thoughts

    return sample_thoughts(model, input_ids, num_thoughts=num, length=length, start_id=tokens.start_id,
                           end_id=tokens.end_id, temperature=temperature, generator=generator)


def score_thoughts(model, head: MixingHead, input_ids: Tensor, thought_tokens: Tensor, *, n_future: int,
                   tokens: ThoughtTokens, temperature: float = 1.0):
    """One stream forward over [start, thought, end, x_{t+1..t+n}] at every position: returns
    (logp_true (B·r, L, n) of the true tokens under the mixed distribution, their mask, the mixing weight
    (B·r, L), the thoughts' per-token log-probs (B, r, L, k), the stream output, and whether the mixed
    top-1 for x_{t+1} is right (B·r, L), and the NLL targets (B·r, L, n): the true tokens only)."""
    from shared.model.thoughts import expand_for_thoughts, stream_forward, thought_streams, thought_token_logprobs

    b, r, n, k = thought_tokens.shape
    streams, fvalid = thought_streams(input_ids, thought_tokens, start_id=tokens.start_id, end_id=tokens.end_id,
                                      n_future=n_future, pad_id=tokens.pad_id)
    out = stream_forward(model, expand_for_thoughts(input_ids, r), streams)
    fut = out.stream_logits[:, :, k + 1:k + 1 + n_future]                          # predict x_{t+1+i}
    offs = (torch.arange(n, device=input_ids.device)[:, None]
            + torch.arange(n_future, device=input_ids.device)[None, :]).clamp(max=n - 1)
    base_fut = out.base_logits[:, offs]                                             # base at t+i predicts x_{t+1+i}
    weight = head(out.base_hidden, out.stream_hidden[:, :, k + 1])                 # at the end token
    mixed = mix_thoughts(base_fut, fut, weight.unsqueeze(-1).expand(-1, -1, n_future))
    targets = streams[:, :, k + 2:k + 2 + n_future]
    logp_true = mixed.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * fvalid
    logp_thought = thought_token_logprobs(out.stream_logits, thought_tokens, start_id=tokens.start_id,
                                          end_id=tokens.end_id, temperature=temperature)
    right = mixed[:, :, 0].argmax(-1) == targets[:, :, 0]
    return logp_true, fvalid, weight, logp_thought, out, right, targets


def quietstar_step(model, head: MixingHead, input_ids: Tensor, *, num_thoughts: int, length: int, n_future: int,
                   tokens: ThoughtTokens, reference=None, kl_coefficient: float = 0.0,
                   reward_threshold: float = 0.0, temperature: float = 1.0,
                   generator: torch.Generator | None = None, planted_rewards: Tensor | None = None) -> StepOutput:
    """The loss of one Quiet-STaR step on a batch of spans (B, L): sample thoughts (no grad), score them and
    the true tokens in one stream forward (with grad), rewards relative to sibling thoughts, REINFORCE on the
    thoughts, mixed NLL, and KL of the base predictions to `reference` (the baked model, frozen).
    `planted_rewards` (B, r, L) replaces the computed rewards (tests)."""
    b, n = input_ids.shape
    with torch.no_grad():
        th = generate_thoughts(model, input_ids, num=num_thoughts, length=length, tokens=tokens,
                               temperature=temperature, generator=generator)
    logp_true, fvalid, weight, logp_thought, out, _, _ = score_thoughts(
        model, head, input_ids, th.tokens, n_future=n_future, tokens=tokens, temperature=temperature)
    valid = fvalid[:, :, 0].reshape(b, num_thoughts, n)[:, 0]                      # (B, L)
    per_thought = logp_true.sum(-1).reshape(b, num_thoughts, n)
    rewards = planted_rewards if planted_rewards is not None else thought_rewards(per_thought.detach(), valid)
    thought_lp = logp_thought.sum(-1)                                               # (B, r, L)
    nll = -logp_true.sum() / fvalid.sum().clamp(min=1)
    rl = reinforce_loss(thought_lp, rewards, reward_threshold, valid)
    if reference is not None and kl_coefficient > 0:
        with torch.no_grad():
            ref_logits = reference(input_ids, act_threshold=1.0).logits
        kl = kl_to_reference(out.base_logits[::num_thoughts], ref_logits)
    else:
        kl = out.base_logits.new_zeros(())
    loss = nll + rl + kl_coefficient * kl
    return StepOutput(loss, nll.detach(), rl.detach(), kl.detach(), rewards.detach(), thought_lp,
                      weight.reshape(b, num_thoughts, n).detach(), valid, th.tokens)


@torch.no_grad()
def measure_theater(model, head: MixingHead, input_ids: Tensor, *, num_thoughts: int, length: int, n_future: int,
                    tokens: ThoughtTokens, continuation: int = 8, prompts: int = 4,
                    generator: torch.Generator | None = None) -> dict[str, float | None]:
    """The three anti-theater measures on held-out spans (B, L):
    - ablation: NLL of the true next tokens with thoughts removed (the base prediction) minus with thoughts
      (mixed, averaged over thoughts), nats per token;
    - correlation: Pearson correlation, over (thought, position) pairs, of the thought's coherence
      (score_coherence) with whether the mixed prediction of x_{t+1} after it is right;
    - divergence: mean normalised edit distance between greedy continuations of `prompts` prefixes with a
      sampled thought inserted ([thinking] … [/endthinking]) and without it.
    None where a measure cannot be computed (then the check fails)."""
    model_was, head_was = model.training, head.training
    model.eval()
    head.eval()
    try:
        b, n = input_ids.shape
        th = generate_thoughts(model, input_ids, num=num_thoughts, length=length, tokens=tokens, generator=generator)
        logp_true, fvalid, weight, logp_thought, out, right, _ = score_thoughts(model, head, input_ids, th.tokens,
                                                                             n_future=n_future, tokens=tokens)
        first = fvalid[..., 0]
        mixed_nll = -(logp_true[..., 0][first]).mean()
        targets = input_ids[:, 1:]
        base_lp = F.log_softmax(out.base_logits[::num_thoughts, :-1].float(), -1)
        base_nll = -base_lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()
        ablation = float(base_nll - mixed_nll) if first.any() else None
        nlls = {"nll_with_thoughts": float(mixed_nll), "nll_without_thoughts": float(base_nll)} if first.any() \
            else {"nll_with_thoughts": None, "nll_without_thoughts": None}
        coherence = score_coherence(logp_thought).reshape(b * num_thoughts, n)
        correlation = pearson(coherence[first].tolist(), right[first].float().tolist())
        divergence = _divergence(model, input_ids[:prompts], th.tokens[:prompts, 0], tokens, continuation)
        return {"ablation": ablation, "correlation": correlation, "divergence": divergence,
                "coherence": float(coherence[first].mean()) if first.any() else None,
                "mixing_weight": float(weight.reshape(-1)[first.reshape(-1)].mean()) if first.any() else None,
                **nlls}
    finally:
        model.train(model_was)
        head.train(head_was)


def _greedy(model, ids: Tensor, steps: int) -> list[int]:
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def _divergence(model, input_ids: Tensor, thoughts: Tensor, tokens: ThoughtTokens, steps: int) -> float | None:
    """Half-way into each prompt: continue greedily with and without [thinking] thought [/endthinking]."""
    dists = []
    for row, thought in zip(input_ids, thoughts):
        cut = max(1, row.shape[0] // 2)
        prefix = row[:cut].unsqueeze(0)
        thought_ids = torch.cat([prefix.new_tensor([tokens.start_id]), thought[cut - 1], prefix.new_tensor([tokens.end_id])])
        plain = _greedy(model, prefix, steps)
        thinking = _greedy(model, torch.cat([prefix, thought_ids.unsqueeze(0)], 1), steps)
        dists.append(normalised_edit_distance(plain, thinking))
    return sum(dists) / len(dists) if dists else None


def measure_coherence(model, head: MixingHead, input_ids: Tensor, **kw) -> float | None:
    """The checklist's measure_coherence: mean coherence of the model's thoughts on held-out spans."""
    return measure_theater(model, head, input_ids, **kw)["coherence"]


def snapshot(*modules: nn.Module) -> list[dict[str, Tensor]]:
    """Exact copies of the modules' states (the last passing checkpoint the anti-theater rollback returns to)."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def restore(saved: list[dict[str, Tensor]], *modules: nn.Module) -> None:
    """Put back exactly what `snapshot` saved (bit-identical)."""
    for state, m in zip(saved, modules, strict=True):
        m.load_state_dict(state, strict=True)


# == the RL loop ===============================================================================================

@dataclass
class RLResult:
    steps: int
    rollbacks: int
    kl_coefficient: float
    reward_threshold: float
    checks: list[dict] = field(default_factory=list)        # one per anti-theater check
    last_check: AntiTheaterResult | None = None
    last_passing_step: int = 0                                # 0: no check passed, the model is the baked one

    def state(self) -> dict:
        """JSON form (for checkpoints)."""
        last = None if self.last_check is None else {
            "divergence": self.last_check.divergence, "ablation": self.last_check.ablation,
            "correlation": self.last_check.correlation, "passed": self.last_check.passed,
            "failures": list(self.last_check.failures)}
        return {"steps": self.steps, "rollbacks": self.rollbacks, "kl_coefficient": self.kl_coefficient,
                "reward_threshold": self.reward_threshold, "checks": self.checks, "last_check": last,
                "last_passing_step": self.last_passing_step}

    @classmethod
    def from_state(cls, state: dict) -> "RLResult":
        last = state.get("last_check")
        check = None if last is None else AntiTheaterResult(last["divergence"], last["ablation"],
                                                             last["correlation"], last["passed"],
                                                             list(last["failures"]))
        return cls(int(state["steps"]), int(state["rollbacks"]), float(state["kl_coefficient"]),
                   float(state["reward_threshold"]), [dict(c) for c in state["checks"]], check,
                   int(state["last_passing_step"]))


@dataclass
class RLCheckpoint:
    """The RL loop's state right after an anti-theater check, when the model's and the head's weights are
    the rollback point itself (a pass snapshots them, a failure restores them), so the weights — saved by
    the caller beside this — are all a restart needs besides: the loop's JSON state, both optimizers'
    state dicts, the thought sampler's generator state and the torch RNG state."""

    result: dict
    optimizer_state: dict
    head_optimizer_state: dict
    generator_state: Tensor
    rng_state: Tensor


def train_thoughts(model, head: MixingHead, batch_at, val_ids: Tensor, *, steps: int, optimizer, num_thoughts: int,
                   length: int, n_future: int, tokens: ThoughtTokens, reference=None, kl_coefficient: float = 0.1,
                   reward_threshold: float = 0.01, check_every: int = 50, seed: int = 0, max_grad_norm: float = 1.0,
                   head_lr: float = 1e-3, on_step=None, on_check=None, check=anti_theater_check,
                   on_checkpoint=None, resume: RLCheckpoint | None = None) -> RLResult:
    """Quiet-STaR RL: `steps` steps of quietstar_step on batch_at(step) (B, L), with an anti-theater check on
    `val_ids` every `check_every` steps and at the end. A passing check becomes the rollback point; a
    failing one restores it exactly, doubles the KL coefficient and raises the reward threshold ×1.5 (the
    checklist's mitigation), and is logged through on_check(step, result, kl, threshold). The optimizer's
    moments are kept across a rollback (only the weights go back). Ends on the last passing weights when the
    final check fails.

    on_checkpoint(RLCheckpoint) after every check; resume: such a checkpoint, with the model and head
    already holding the weights saved beside it — the loop goes on from the next step exactly as it would
    have without the interruption."""
    head_opt = torch.optim.AdamW(head.parameters(), lr=head_lr)
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    generator = torch.Generator(device=val_ids.device).manual_seed(seed)
    result = RLResult(steps=0, rollbacks=0, kl_coefficient=kl_coefficient, reward_threshold=reward_threshold)
    if resume is not None:
        result = RLResult.from_state(resume.result)
        optimizer.load_state_dict(resume.optimizer_state)
        head_opt.load_state_dict(resume.head_optimizer_state)
        generator.set_state(resume.generator_state)
        torch.set_rng_state(resume.rng_state)
    saved = snapshot(model, head)
    model.train()
    head.train()
    for step in range(result.steps + 1, steps + 1):
        out = quietstar_step(model, head, batch_at(step), num_thoughts=num_thoughts, length=length,
                             n_future=n_future, tokens=tokens, reference=reference,
                             kl_coefficient=result.kl_coefficient, reward_threshold=result.reward_threshold,
                             generator=generator)
        optimizer.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        head_opt.step()
        result.steps = step
        if on_step is not None:
            on_step(step, out.stats())
        if step % check_every == 0 or step == steps:
            m = measure_theater(model, head, val_ids, num_thoughts=num_thoughts, length=length, n_future=n_future,
                                tokens=tokens, generator=torch.Generator(device=val_ids.device).manual_seed(seed + 1))
            verdict = check(m["divergence"], m["ablation"], m["correlation"])
            record = {"step": step, **{k: v for k, v in m.items()}, "passed": verdict.passed,
                      "failures": list(verdict.failures)}
            if verdict.passed:
                saved = snapshot(model, head)
                result.last_passing_step = step
            else:
                restore(saved, model, head)
                result.rollbacks += 1
                result.kl_coefficient *= 2.0
                result.reward_threshold *= 1.5
                record.update(rolled_back_to=result.last_passing_step, kl_coefficient=result.kl_coefficient,
                              reward_threshold=result.reward_threshold)
            result.checks.append(record)
            result.last_check = verdict
            if on_check is not None:
                on_check(step, verdict, result.kl_coefficient, result.reward_threshold)
            if on_checkpoint is not None:
                # copies: optimizers' state dicts hold their live buffers, which the next step changes
                on_checkpoint(RLCheckpoint(copy.deepcopy(result.state()), copy.deepcopy(optimizer.state_dict()),
                                           copy.deepcopy(head_opt.state_dict()), generator.get_state(),
                                           torch.get_rng_state()))
    return result

"""Per-model Cognate metrics measured on validation batches: halting, compute, memory usage, NLL.

Every batch is {"input_ids": LongTensor (B, L), "labels": LongTensor (B, L)} with labels already shifted
(labels[b, t] is the target of position t) and -100 where nothing is scored. Every metric runs the model as
at inference (eval mode: per-token ACT halting, `config.act_threshold`), under torch.no_grad, and puts every
submodule back into the mode it was in. All figures except `measure_inference_time` are deterministic
functions of the weights, buffers, config and batches, so gates can use them (DESIGN.md §7: no wall-clock
timings in gates).

Definitions (N = number of input positions over all batches; packed Phase-1 batches have no padding, so
every position is a real token and costs compute whether or not it is scored):

- mean halting steps  H = (1/N) Σ_positions s_p, s_p = supervision steps position p executed
  (`TRMOutput.halting_steps`).
- FLOPs per step per token  F(L) = FLOPs(model.supervision_step on one sample of length L) / L, counted by
  torch.utils.flop_counter (matmuls; elementwise ops are not counted). The LM and halting heads evaluated
  after each step are not part of a supervision step and are left out. The memory computes only its active
  units (masked ones are exactly zero and skipped), so F depends on shapes, recursion depth and the active
  capacity `active_ltm_slots`.
- compute per token  C = (1/N) Σ_batches Σ_positions s_p · F(L_batch)  — the deterministic stand-in for
  inference time: with one sequence length, C = H · F(L) exactly.
- LTM usage  U = mean over layers of |{s active : m_s > 0.01 · max_s' m_s'}| / ltm_slots, where
  m_s = mean over every memory call and position of |silu(W1_init · q)_s ⊙ mask_s|: the memory's hidden
  activation at its read (query q = normalize(W_q · x)), through the learned initial fast weights W1_init
  that every pass's memory starts from and forgetting pulls back to (the in-context updates on top of them
  are a bounded normalised-LMS step, not included). It is the share of the model's full memory width that
  the model actually exercises: an all-zero mask gives 0; on the same weights more active slots give more;
  a unit whose weights never fire (e.g. a zero row of W1_init) does not count.
- validation NLL = Σ −log p(label) / number of targets (labels != -100), natural log.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.model.flops import TotalFlops

IGNORE_INDEX = -100
USED_FRACTION_OF_PEAK = 0.01   # a unit is "used" when its mean |activation| exceeds 1% of the layer's busiest


@dataclass(frozen=True)
class ModelProfile:
    """Everything the diversity figures and the W&B table need from one model, from one pass."""

    halting_steps: float        # H, steps per token
    flops_per_step: float       # F averaged over tokens, FLOPs per token per supervision step
    compute_per_token: float    # C, FLOPs per token
    ltm_usage: float            # U, in [0, 1]
    nll: float                  # nats per target token

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@contextmanager
def _inference(model) -> Iterator[None]:
    """Eval mode and no grad for the duration; each submodule gets its own previous mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _check_batches(batches: Sequence[dict]) -> None:
    if not batches:
        raise InvalidSpecError("need at least one validation batch", field="batches")
    for i, b in enumerate(batches):
        if "input_ids" not in b or b["input_ids"].dim() != 2:
            raise InvalidSpecError("each batch needs 'input_ids' of shape (B, L)", field=f"batches[{i}]")


def flops_per_step(model, seq_len: int) -> float:
    """F(L): FLOPs of one `supervision_step` on one sample of length `seq_len`, divided by `seq_len`."""
    device = model.embed.weight.device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)   # FLOPs do not depend on token values
    with _inference(model):
        x = model.embed(ids)
        y, z = model.initial_state(x)
        with TotalFlops() as counter:
            model.supervision_step(x, y, z)
    return counter.get_total_flops() / seq_len


class _MemoryReads:
    """Forward hooks on every layer's NeuralMemory accumulating Σ |silu(W1_init · q) ⊙ mask| per unit."""

    def __init__(self, model):
        self.memories = [layer.memory for layer in model.net.layers]
        self.sums = [torch.zeros(m.slots, dtype=torch.float64, device=m.mask.device) for m in self.memories]
        self.counts = [0] * len(self.memories)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.memories)]

    def _hook(self, i: int):
        def hook(memory, inputs, output):
            q = F.normalize(memory.to_q(inputs[0]), dim=-1)                  # (B, L, D), as the read uses it
            act = F.silu(q @ memory.w1_init.t()) * memory.mask                # (B, L, S)
            self.sums[i] += act.abs().sum(dim=(0, 1)).double()
            self.counts[i] += act.shape[0] * act.shape[1]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def usage(self) -> float:
        per_layer = []
        for memory, total, count in zip(self.memories, self.sums, self.counts, strict=True):
            mean = total / max(count, 1)
            peak = float(mean.max()) if mean.numel() else 0.0
            active = memory.mask > 0
            used = active & (mean > USED_FRACTION_OF_PEAK * peak) if peak > 0 else torch.zeros_like(active)
            per_layer.append(int(used.sum()) / memory.slots)
        return sum(per_layer) / len(per_layer)


@dataclass
class _Pass:
    steps: float = 0.0          # Σ executed steps over positions
    compute: float = 0.0        # Σ executed steps × F(L) over positions
    positions: int = 0
    nll: float = 0.0            # Σ −log p over targets
    targets: int = 0


def _inference_pass(model, batches: Sequence[dict], per_len: dict[int, float] | None = None) -> _Pass:
    """One ACT pass over the batches; compute is accumulated only when F(L) is given for each length."""
    acc = _Pass()
    with _inference(model):
        for b in batches:
            ids = b["input_ids"]
            out = model(ids)
            steps = out.halting_steps.double().sum().item()
            acc.steps += steps
            acc.compute += steps * per_len[ids.shape[1]] if per_len is not None else 0.0
            acc.positions += ids.numel()
            if "labels" in b:
                labels = b["labels"]
                acc.nll += F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).double(),
                                           labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum").item()
                acc.targets += int((labels != IGNORE_INDEX).sum())
    return acc


def profile_model(model, batches: Sequence[dict]) -> ModelProfile:
    """One inference pass over `batches` giving every per-model figure (definitions in the module doc)."""
    _check_batches(batches)
    # FLOPs first: the counting pass must not feed the memory-read hooks
    per_len = {length: flops_per_step(model, length) for length in sorted({b["input_ids"].shape[1] for b in batches})}
    reads = _MemoryReads(model)
    try:
        acc = _inference_pass(model, batches, per_len)
    finally:
        reads.remove()
    halting = acc.steps / acc.positions
    compute = acc.compute / acc.positions
    return ModelProfile(halting_steps=halting, flops_per_step=compute / halting if halting else 0.0,
                        compute_per_token=compute, ltm_usage=reads.usage(),
                        nll=acc.nll / acc.targets if acc.targets else float("nan"))


def mean_halting_steps(model, batches: Sequence[dict]) -> float:
    """H = (1/N) Σ_positions executed supervision steps at inference (ACT with config.act_threshold)."""
    _check_batches(batches)
    acc = _inference_pass(model, batches)
    return acc.steps / acc.positions


def compute_per_token(model, batches: Sequence[dict]) -> float:
    """C = (1/N) Σ_positions executed steps × F(L), F(L) = FLOPs(one supervision_step on (1, L)) / L."""
    return profile_model(model, batches).compute_per_token


def ltm_usage(model, batches: Sequence[dict]) -> float:
    """U = mean over layers of |{active s : m_s > 1% of max m}| / ltm_slots, m_s = mean |silu(W1_init q)_s|
    at the memory's read over every memory call and position. 0 for an all-zero mask; in [0, 1]."""
    _check_batches(batches)
    reads = _MemoryReads(model)
    try:
        _inference_pass(model, batches)
    finally:
        reads.remove()
    return reads.usage()


def validation_nll(model, batches: Sequence[dict]) -> float:
    """Σ −log p(labels[b, t] | logits[b, t]) / #targets (labels != -100), with ACT halting as at inference."""
    _check_batches(batches)
    acc = _inference_pass(model, batches)
    if acc.targets == 0:
        raise FailedPreconditionError("the validation batches have no target tokens (labels all -100 or absent)")
    return acc.nll / acc.targets


def measure_inference_time(model, batches: Sequence[dict], repeats: int = 3) -> float:
    """Median over `repeats` passes of wall-clock seconds per input token (after one warm-up pass).

    The checklist's name. Bench and report use only: it depends on the machine and its load, so no gate
    uses it (DESIGN.md §7) — gates use `compute_per_token`.
    """
    _check_batches(batches)
    if repeats < 1:
        raise InvalidSpecError(f"must be >= 1, got {repeats!r}", field="repeats")
    device = model.embed.weight.device
    tokens = sum(b["input_ids"].numel() for b in batches)

    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for b in batches:
            model(b["input_ids"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with _inference(model):
        one_pass()   # allocations and kernel selection are not part of steady-state inference
        times = [one_pass() for _ in range(repeats)]
    return statistics.median(times) / tokens


# The checklist's names for the same measurements.
measure_avg_halting_steps = mean_halting_steps
measure_ltm_usage = ltm_usage

"""The Cognate training loop: deep supervision over the curriculum, checkpoints, resume.

One *segment* trains one model over a range of its schedule's steps (the shared warm-up, or a variant's
continuation after the branch point). Per batch, deep supervision: N_sup supervision steps, each with its own
forward, backward and MuonGrokfast step, (y, z) carried detached (TRM); an effective batch can be split into
micro-batches whose gradients accumulate, and an out-of-memory error halves the micro-batch and doubles the
accumulation (recorded in `oom_events`). Every `checkpoint_every` steps the
model, the optimizer (safetensors), the data position and the RNG state (JSON/tensors) are saved under the
job's request id, so a job restarted after a crash continues where it stopped.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from shared.data.curriculum import IGNORE_INDEX, Phase1Dataset, stage_for_epoch
from shared.errors import FailedPreconditionError, ResourceExhaustedError
from shared.storage.formats import optimizer_state_from_tensors, optimizer_state_to_tensors
from shared.utils import detect_training_issues
from shared.utils.training_health import DivergenceError, NonFiniteLossError, TrainingIssue

log = logging.getLogger(__name__)
MAX_LR_HALVINGS = 3


@dataclass(frozen=True)
class Segment:
    name: str                      # "warmup" or a variant name
    seed: int                      # data order and dropout
    weights: dict[str, float] | None
    first_step: int                # schedule step this segment starts at
    last_step: int                 # schedule step it stops before
    steps_per_epoch: int
    total_epochs: int              # the model's whole schedule (stages follow it)


@dataclass(frozen=True)
class StepInfo:
    """What the trainer reports after every optimizer step (to `on_step`, for W&B and progress).

    tokens_per_s: tokens of the effective batch / wall seconds of this step (deep supervision included).
    memory_mb: peak memory so far — torch.cuda.max_memory_allocated on a GPU, the process's peak resident
    set size (getrusage ru_maxrss) on the CPU. epoch_end: this step was the last of an epoch."""

    segment: Segment
    step: int
    loss: float | None             # None: the batch held only prompt tokens (no loss, no update)
    tokens_per_s: float
    memory_mb: float
    epoch_end: bool
    model: object


def peak_memory_mb(device: str) -> float:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


@dataclass
class SegmentResult:
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    resumed_from: int = 0


def criterion(logits: torch.Tensor, targets: torch.Tensor, denominator: int | None = None) -> torch.Tensor:
    """The checklist's criterion: next-token cross-entropy over (B, L, V) logits and already-shifted targets,
    -100 ignored, summed and divided by `denominator` — by default this batch's target count (at least 1, so
    a batch holding only prompt tokens gives 0, not NaN). A micro-batch of an accumulated batch passes the
    whole batch's target count, so the micro-batches' losses add up to the whole batch's."""
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    if denominator is None:
        denominator = int((targets != IGNORE_INDEX).sum())
    return total / max(1, denominator)


def supervision_losses(model, ids: torch.Tensor, targets: torch.Tensor, y, z, denominator: int | None = None):
    """One supervision step from (y, z) (None: the model's initial state): (lm_loss, halt_loss, y, z).
    `targets` are already the next tokens (Phase1Dataset's labels), -100 where nothing is learned; both
    losses are per target token (see `criterion` for `denominator`)."""
    x = model.embed(ids)
    if y is None:
        y, z = model.initial_state(x)
    y, z = model.supervision_step(x, y.detach(), z.detach())
    logits, halt_logits = model.heads(y)
    valid = targets != IGNORE_INDEX
    if denominator is None:
        denominator = int(valid.sum())
    correct = (logits.argmax(-1) == targets).float().detach()
    per = F.binary_cross_entropy_with_logits(halt_logits.float(), correct, reduction="none")
    return criterion(logits, targets, denominator), (per * valid).sum() / max(1, denominator), y, z


class Trainer:
    def __init__(self, model, optimizer, train_records, tokenizer, *, seq_len: int, batch_size: int, n_sup: int,
                 checkpoint_every: int, ctx=None, log_every: int = 10, on_step=None, checkpoint_offset: int = 0,
                 accumulation: int = 1, device: str = "cpu"):
        self.model, self.opt, self.records, self.tok = model, optimizer, train_records, tokenizer
        self.accumulation, self.device = accumulation, device
        self.oom_events: list[dict] = []     # every out-of-memory recovery: step, new micro-batch, accumulation
        self.mitigations: list[dict] = []    # every roll-back with a halved learning rate (see _mitigate)
        self.lr_scale = 1.0                  # learning rates relative to the profile's
        # Segments of one job overlap in schedule steps (each variant continues from the warm-up's end), so
        # their checkpoints are numbered from a per-segment offset to stay distinct and ordered.
        self.checkpoint_offset = checkpoint_offset
        self.seq_len, self.batch_size, self.n_sup = seq_len, batch_size, n_sup
        self.checkpoint_every, self.ctx, self.log_every, self.on_step = checkpoint_every, ctx, log_every, on_step

    def _dataset(self, seg: Segment, epoch: int) -> Phase1Dataset:
        stage = stage_for_epoch(epoch, seg.total_epochs)
        return Phase1Dataset(self.records, self.tok, stage=stage, seq_len=self.seq_len, seed=seg.seed,
                             dataset_weights=seg.weights, epoch=epoch)

    def checkpoint(self, seg: Segment, step: int, data_state: dict, losses: list[float]) -> None:
        if self.ctx is None:
            return
        opt_tensors, opt_meta = optimizer_state_to_tensors(self.opt.state_dict())
        self.ctx.save_checkpoint(self.checkpoint_offset + step, tensors={
            "model": {k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": opt_tensors,
            "rng": {"torch": torch.get_rng_state()},
        }, state={"segment": seg.name, "schedule_step": step, "data": data_state, "optimizer_meta": opt_meta,
                  "losses": losses[-500:], "lr_scale": self.lr_scale})

    def restore(self, seg: Segment) -> tuple[int, dict | None, list[float]]:
        """(next step, data state, loss history) from the job's latest checkpoint of this segment."""
        if self.ctx is None:
            return seg.first_step, None, []
        ckpt = self.ctx.latest_checkpoint()
        if ckpt is None or ckpt.state.get("segment") != seg.name:
            return seg.first_step, None, []
        model_sd = self.ctx.load_checkpoint_tensors(ckpt, "model")
        missing, unexpected = self.model.load_state_dict(model_sd, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise FailedPreconditionError(f"checkpoint {ckpt.ref.uri} does not fit this model "
                                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.opt.load_state_dict(optimizer_state_from_tensors(self.ctx.load_checkpoint_tensors(ckpt, "optimizer"),
                                                              ckpt.state["optimizer_meta"]))
        torch.set_rng_state(self.ctx.load_checkpoint_tensors(ckpt, "rng")["torch"])
        step = int(ckpt.state["schedule_step"])
        self.lr_scale = float(ckpt.state.get("lr_scale", 1.0))
        self.ctx.resumed_from_step = step
        return step + 1, ckpt.state["data"], list(ckpt.state["losses"])

    def _train_step(self, micro: list[list[dict]]) -> float | None:
        """Deep supervision over an effective batch split into micro-batches: for each supervision step, the
        gradients of every micro-batch are accumulated (each carrying its own detached y, z), then one
        MuonGrokfast step. Losses are per target token of the whole effective batch, so any split into
        micro-batches (out-of-memory recovery) gives the same loss and gradient. Returns the last supervision
        step's LM loss; None, with no update, when the batch has no target token (only prompt tokens)."""
        counts = [sum(int((d["labels"] != IGNORE_INDEX).sum()) for d in group) for group in micro]
        n_targets = sum(counts)
        if n_targets == 0:
            return None
        states: list = [(None, None)] * len(micro)
        last = 0.0
        for _ in range(self.n_sup):
            total = 0.0
            for i, group in enumerate(micro):
                if counts[i] == 0:
                    continue                   # nothing to learn here: no loss, no gradient
                ids = torch.stack([d["input_ids"] for d in group]).to(self.device)
                targets = torch.stack([d["labels"] for d in group]).to(self.device)
                lm, halt, y, z = supervision_losses(self.model, ids, targets, *states[i], denominator=n_targets)
                (lm + halt).backward()
                states[i] = (y.detach(), z.detach())
                total += lm.item()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            last = total
        return last

    def _step_with_oom_recovery(self, step: int, drawn: list[dict]) -> float | None:
        """On out-of-memory: halve the micro-batch, double the accumulation (same effective batch, same data),
        record it, retry; a micro-batch of 1 that does not fit is a clear error."""
        while True:
            size = max(1, len(drawn) // self.accumulation)
            micro = [drawn[i:i + size] for i in range(0, len(drawn), size)]
            try:
                return self._train_step(micro)
            except torch.OutOfMemoryError:
                self.opt.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if size == 1:
                    raise ResourceExhaustedError("out of memory with a micro-batch of 1 sequence; reduce "
                                                 "seq_len or the model size") from None
                self.batch_size = max(1, self.batch_size // 2)
                self.accumulation *= 2
                self.oom_events.append({"step": step, "batch_size": self.batch_size,
                                        "accumulation": self.accumulation})
                log.warning("out of memory at step %d: micro-batch %d, accumulation %d", step, self.batch_size,
                            self.accumulation)

    def _mitigate(self, seg: Segment, issue: TrainingIssue) -> tuple[int, dict | None, list[float]]:
        """The profile's mitigation for a diverging or non-finite loss: roll back to the last checkpoint of
        this segment (saved before the issue, so healthy by the same check) and halve every learning rate.
        Recorded in `mitigations`; after MAX_LR_HALVINGS, or with no checkpoint to roll back to, the issue
        is raised."""
        ckpt = self.ctx.latest_checkpoint() if self.ctx is not None else None
        if ckpt is None or ckpt.state.get("segment") != seg.name:
            raise FailedPreconditionError(f"{seg.name}: {issue}; no checkpoint of this segment to roll back "
                                          f"to (lower the learning rate or checkpoint more often)") from issue
        if len(self.mitigations) >= MAX_LR_HALVINGS:
            raise FailedPreconditionError(f"{seg.name}: {issue}; still unhealthy after {MAX_LR_HALVINGS} "
                                          f"learning-rate halvings") from issue
        before = self.lr_scale
        step, data_state, losses = self.restore(seg)          # sets lr_scale to the checkpoint's
        # Half of the lowest scale used so far, also when the checkpoint predates an earlier halving; the
        # optimizer state (and lr_scale in the JSON) carry it into later checkpoints and restarts.
        new = 0.5 * min(before, self.lr_scale)
        for group in self.opt.param_groups:
            group["lr"] *= new / self.lr_scale
        self.lr_scale = new
        self.mitigations.append({"segment": seg.name, "issue": type(issue).__name__, "at_step": issue.step,
                                 "rolled_back_to": step, "lr_scale": new})
        log.warning("%s: %s — rolled back to step %d, learning rates halved", seg.name, issue, step)
        return step, data_state, losses

    def run(self, seg: Segment) -> SegmentResult:
        step, data_state, losses = self.restore(seg)
        result = SegmentResult(losses=losses, resumed_from=step if data_state is not None else 0)
        self.model.train()
        start = time.perf_counter()
        while True:
            try:
                self._run_from(seg, step, data_state, result)
                break
            except (NonFiniteLossError, DivergenceError) as issue:
                step, data_state, result.losses = self._mitigate(seg, issue)
        result.seconds = time.perf_counter() - start
        return result

    def _run_from(self, seg: Segment, step: int, data_state: dict | None, result: SegmentResult) -> None:
        while step < seg.last_step:
            epoch = step // seg.steps_per_epoch
            dataset = self._dataset(seg, epoch)
            if data_state is not None and data_state.get("epoch") == epoch:
                dataset.load_state_dict(data_state)
            data_state = None
            sequences = iter(dataset)
            epoch_end = min(seg.last_step, (epoch + 1) * seg.steps_per_epoch)
            while step < epoch_end:
                drawn = list(itertools.islice(sequences, self.batch_size * self.accumulation))
                if len(drawn) < self.batch_size * self.accumulation:
                    break                                  # the epoch's data ran out: next epoch
                t0 = time.perf_counter()
                lm_total = self._step_with_oom_recovery(step, drawn)
                seconds = time.perf_counter() - t0
                tokens = sum(d["input_ids"].numel() for d in drawn)
                result.tokens += tokens
                if lm_total is None:
                    log.info("%s step %d: the batch holds only prompt tokens; no loss, no update", seg.name, step)
                else:
                    result.losses.append(lm_total)
                    detect_training_issues(result.losses)
                if self.on_step is not None:
                    self.on_step(StepInfo(seg, step, lm_total, tokens / max(seconds, 1e-9),
                                          peak_memory_mb(self.device), step + 1 == epoch_end, self.model))
                if step % self.log_every == 0 and lm_total is not None:
                    log.info("%s step %d: loss %.3f, ppl %.1f", seg.name, step, lm_total, math.exp(min(lm_total, 30)))
                if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0:
                    self.checkpoint(seg, step, dataset.state_dict(), result.losses)
                step += 1
            step = max(step, epoch_end)

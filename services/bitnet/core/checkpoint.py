"""Stage checkpoints of the BitNet job (DESIGN.md §8: a killed worker loses at most one checkpoint interval).

A checkpoint is written after every stage of a compression attempt — calibration, each block's λ warm-up
(after its revert decision), each recovery epoch — through the runtime's JobContext.save_checkpoint, which
refuses to resume from a checkpoint of another phase or spec and whose store checks every file's sha256
(a corrupt checkpoint raises IntegrityError, never loads). Contents:

  model.safetensors      the converted model's state dict: latent BitLinear weights, input-norm gains, λ and
                         the scale buffer of every BitLinear, everything else of the model
  optimizer.safetensors  the stage's AdamW state (the staging optimizer; the recovery optimizer in recovery)
  rng.safetensors        torch's CPU generator state (dropout, when the model has any)
  state.json             FORMAT; the inputs' sha256 (a checkpoint of other inputs is refused); the attempt
                         (0, or 1 for the conservative restart), its config and converted layers; the stage
                         done; the calibration; every measured block record; the NLL the next block's record
                         starts from; in recovery the drop it started from and the epochs done; the optimizer's
                         JSON tree (shared.storage.formats.optimizer_state_to_tensors)

Step numbers grow through the job, so the latest checkpoint is the furthest stage: attempt a's calibration is
a·ATTEMPT_STEPS + 1, its block i a·ATTEMPT_STEPS + 2 + i, its recovery epoch e (from 1) a·ATTEMPT_STEPS + 1 +
blocks + e.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shared.canonical import dumps_canonical, loads_strict
from shared.errors import FailedPreconditionError
from shared.storage.formats import optimizer_state_from_tensors, optimizer_state_to_tensors

FORMAT = "agentforge.bitnet.checkpoint/1"
ATTEMPT_STEPS = 1_000_000
STAGES = ("calibrated", "block", "recovery")


def calibrated_step(attempt: int) -> int:
    return attempt * ATTEMPT_STEPS + 1


def block_step(attempt: int, block: int) -> int:
    return attempt * ATTEMPT_STEPS + 2 + block


def recovery_step(attempt: int, blocks: int, epoch: int) -> int:
    return attempt * ATTEMPT_STEPS + 1 + blocks + epoch


def as_json(value: Any) -> Any:
    """`value` as it reads back from state.json (tuples become lists), for comparing with a checkpoint."""
    return loads_strict(dumps_canonical(value))


def input_hashes(request) -> dict[str, str]:
    return {ref.name: ref.sha256 for ref in request.inputs}


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back: its step, its state.json, and its tensors (model, optimizer, rng)."""

    step: int
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: torch.Tensor

    @property
    def attempt(self) -> int:
        return int(self.state["attempt"])

    @property
    def stage(self) -> str:
        return str(self.state["stage"])

    def load_into(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put the saved weights, optimizer state and RNG state back (every tensor name and shape checked)."""
        load_model_tensors(model, self.model, f"checkpoint step {self.step}")
        optimizer.load_state_dict(optimizer_state_from_tensors(self.optimizer, self.state["optimizer_meta"]))
        torch.set_rng_state(self.rng)


def read(ctx) -> Restored | None:
    """The request's latest checkpoint, or None. The runtime refuses another phase's or spec's checkpoint and
    a file whose sha256 differs from its manifest; this refuses another format and other inputs."""
    ckpt = ctx.latest_checkpoint()
    if ckpt is None:
        return None
    state = ckpt.state
    if state.get("format") != FORMAT or state.get("stage") not in STAGES:
        raise FailedPreconditionError(
            f"checkpoint {ckpt.ref.uri} is not a BitNet stage checkpoint (format {state.get('format')!r}, stage "
            f"{state.get('stage')!r}); refusing to resume from it (use a new request_id)")
    made_from, now = state.get("inputs"), input_hashes(ctx.request)
    if made_from != now:
        changed = sorted(k for k in set(now) | set(made_from or {}) if (made_from or {}).get(k) != now.get(k))
        raise FailedPreconditionError(
            f"checkpoint {ckpt.ref.uri} was made from other inputs ({', '.join(changed)} differ); refusing to "
            f"resume from it (use a new request_id)")
    rng = ctx.load_checkpoint_tensors(ckpt, "rng")
    if "torch" not in rng:
        raise FailedPreconditionError(f"checkpoint {ckpt.ref.uri} has no torch RNG state")
    return Restored(step=ckpt.step, state=state, model=ctx.load_checkpoint_tensors(ckpt, "model"),
                    optimizer=ctx.load_checkpoint_tensors(ckpt, "optimizer"), rng=rng["torch"])


def save(ctx, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """One stage checkpoint (see the module docstring); `state` holds the stage's JSON fields."""
    tensors, meta = optimizer_state_to_tensors(optimizer.state_dict())
    ctx.save_checkpoint(step, tensors={
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "optimizer": tensors, "rng": {"torch": torch.get_rng_state()}},
        state={"format": FORMAT, "inputs": input_hashes(ctx.request), **state, "optimizer_meta": meta})


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with every name, shape and dtype checked first: a checkpoint of another model is a
    FailedPreconditionError naming the difference, never a partial load."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [f"{k} {tuple(tensors[k].shape)} {tensors[k].dtype} vs {tuple(v.shape)} {v.dtype}"
             for k, v in own.items() if k in tensors and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)]
    if missing or unexpected or wrong:
        raise FailedPreconditionError(f"{what} does not fit this model (missing {missing[:3]}, unexpected "
                                      f"{unexpected[:3]}, different {wrong[:3]}); refusing to resume from it")
    model.load_state_dict(tensors, strict=True)

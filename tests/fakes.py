"""Fakes for runtime tests: a small deterministic 'trainer' that checkpoints, resumes and can crash.

It accumulates a tensor over `steps` steps (state_t = state_{t-1} * 0.5 + t), so a resumed run must end
with exactly the same tensor as an uninterrupted one — that is what proves resume is real.
"""

from __future__ import annotations

import threading
import time

import torch

from shared.errors import InvalidSpecError
from shared.runtime import JobResult


class CrashNow(RuntimeError):
    """Simulates a worker dying mid-job (the job fails; its checkpoints stay)."""


def reference_state(steps: int) -> torch.Tensor:
    state = torch.zeros(4, dtype=torch.float64)
    for t in range(1, steps + 1):
        state = state * 0.5 + t
    return state


class CountingRunner:
    def __init__(self, *, steps: int = 10, checkpoint_every: int = 3, delay: float = 0.0,
                 crash_at: int | None = None, gate: threading.Event | None = None):
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.delay = delay
        self.crash_at = crash_at
        self.gate = gate  # when set, the job blocks at step 1 until the gate opens
        self.started = threading.Event()

    def validate(self, spec):
        if spec.max_examples_per_dataset > 10**6:
            raise InvalidSpecError("too many examples for the fake", field="spec.max_examples_per_dataset")
        return []

    def run(self, ctx):
        state = torch.zeros(4, dtype=torch.float64)
        start = 0
        checkpoint = ctx.latest_checkpoint()
        if checkpoint is not None:
            state = ctx.load_checkpoint_tensors(checkpoint, "state")["state"]
            start = checkpoint.step
            ctx.resumed_from_step = start
        self.started.set()
        for t in range(start + 1, self.steps + 1):
            if self.gate is not None:
                while not self.gate.wait(0.01):
                    ctx.check_cancelled()
            if self.crash_at is not None and t == self.crash_at:
                raise CrashNow(f"simulated crash at step {t}")
            state = state * 0.5 + t
            if self.delay:
                time.sleep(self.delay)
            ctx.progress("count", fraction=t / self.steps, step=t, total_steps=self.steps,
                         metrics={"train/loss": 1.0 / t})
            if t % self.checkpoint_every == 0:
                ctx.save_checkpoint(t, tensors={"state": {"state": state}}, state={"note": "fake"})
        with ctx.open_artifact("result", kind="other") as writer:
            writer.add_tensors("state.safetensors", {"state": state}, None)
        return JobResult(artifacts=(writer.ref,), metrics={"final/value": float(state[0])})

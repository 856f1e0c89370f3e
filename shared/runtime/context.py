"""What a phase runner sees while it runs: its request, its spec, progress reporting, cancellation,
job-scoped artifact writing and checkpoints that let a restarted job resume.

Outputs are written under a key scoped by job and fencing token (jobs/<job_id>/t<token>/<name>); only the
coordinator promotes them to a published name, so a stale lease holder's output never becomes visible.
Checkpoints live under checkpoints/<request_id>/ so a job resubmitted with the same request_id — in this
process or in a restarted one — finds them and continues from the latest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.config.load import config_hash
from shared.errors import CancelledError, FailedPreconditionError
from shared.runtime.events import EventLog, JobState
from shared.storage import ArtifactRef, ArtifactStore
from shared.storage.keys import checkpoint_prefix, staging_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    """Everything about a job besides its phase spec (mirrors proto JobContext)."""

    request_id: str
    phase: str
    run_id: str = ""
    fencing_token: int = 0
    inputs: tuple[ArtifactRef, ...] = ()
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1
    profile: str = ""
    config_hash: str = ""
    evaluation: dict | None = None          # the profile's evaluation section (shared.config EvaluationConfig)

    def input(self, name: str) -> ArtifactRef:
        for ref in self.inputs:
            if ref.name == name:
                return ref
        from shared.errors import NotFoundError

        have = ", ".join(r.name for r in self.inputs) or "none"
        raise NotFoundError(f"job input '{name}' was not given (inputs: {have})")


@dataclass(frozen=True)
class JobResult:
    """What a finished job hands back: its (job-scoped) artifacts and final metrics."""

    artifacts: tuple[ArtifactRef, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    ref: ArtifactRef
    state: dict[str, Any]


class JobContext:
    """Handed to PhaseRunner.run(). Thread-safe for progress/metrics; one runner thread per job."""

    def __init__(self, *, job_id: str, request: JobRequest, spec: Any, store: ArtifactStore,
                 events: EventLog, cancel_event: threading.Event,
                 on_metrics: Callable[[dict[str, float], int], None] | None = None):
        self.job_id = job_id
        self.request = request
        self.spec = spec
        self.store = store
        self._events = events
        self.cancel_event = cancel_event
        self._on_metrics = on_metrics
        self.resumed_from_step = 0
        self.spec_hash = config_hash(spec.model_dump(mode="json")) if hasattr(spec, "model_dump") else ""

    # -- progress -------------------------------------------------------------------------------
    def progress(self, stage: str, *, fraction: float = 0.0, step: int = 0, total_steps: int = 0,
                 message: str = "", metrics: dict[str, float] | None = None) -> None:
        """Report progress (appears on the Watch stream); also a cancellation point."""
        self._events.append(state=JobState.RUNNING, stage=stage, fraction=max(0.0, min(1.0, fraction)),
                            step=step, total_steps=total_steps, message=message,
                            metrics=dict(metrics or {}))
        if metrics and self._on_metrics:
            self._on_metrics(dict(metrics), step)
        self.check_cancelled()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise CancelledError(f"job {self.job_id} was cancelled")

    # -- outputs --------------------------------------------------------------------------------
    @property
    def producer(self) -> dict[str, Any]:
        r = self.request
        return {"run_id": r.run_id, "phase": r.phase, "job_id": self.job_id, "request_id": r.request_id,
                "fencing_token": r.fencing_token}

    def output_key(self, name: str) -> str:
        return staging_key(self.job_id, self.request.fencing_token, name)

    def open_artifact(self, name: str, *, kind: str, config: dict[str, Any] | None = None,
                      parents: list[ArtifactRef] | tuple[ArtifactRef, ...] = (), retention: str = "intermediate",
                      tokenizer: str | None = None):
        """Start writing a job-scoped artifact; use as `with ctx.open_artifact(...) as w:`.

        The key belongs to this job alone, so output left there by an earlier incarnation of the same job
        (a worker that died after writing it) is replaced; it was never published. A staged output is
        intermediate: the coordinator's promotion makes the published copy final (gc keeps only that)."""
        key = self.output_key(name)
        if self.store.exists(f"{key}/manifest.json"):
            log.info("replacing unpublished output of an earlier run of job %s at %s", self.job_id, key)
            self.store.delete_artifact(key)
        return self.store.open_artifact(
            key, kind=kind, name=name,
            config=config if config is not None else self.spec.model_dump(mode="json"),
            producer=self.producer, parents=list(parents), retention=retention, tokenizer=tokenizer,
            cancel_event=self.cancel_event)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, step: int, *, tensors: dict[str, dict[str, Any]], state: dict[str, Any],
                        keep: int = 2) -> ArtifactRef:
        """Save `tensors` (file stem -> {name: tensor}) as safetensors and `state` as JSON.

        The checkpoint records this job's spec hash; older checkpoints beyond `keep` are deleted only
        after the new one is complete, so a crash at any moment leaves at least one whole checkpoint.
        """
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        key = f"{checkpoint_prefix(self.request.request_id)}step-{step:010d}"
        with self.store.open_artifact(key, kind="checkpoint", name=f"step-{step}",
                                      config={"spec_hash": self.spec_hash, "phase": self.request.phase},
                                      producer=self.producer, parents=[], retention="intermediate",
                                      cancel_event=None) as writer:
            for stem, group in tensors.items():
                writer.add_tensors(f"{stem}.safetensors", group, None)
            writer.add_json("state.json", {"step": step, **state})
        ref = writer.ref
        existing = self._checkpoint_keys()
        for old in existing[:-keep] if keep > 0 else []:
            self.store.delete_artifact(old)
        return ref

    def _checkpoint_keys(self) -> list[str]:
        prefix = checkpoint_prefix(self.request.request_id)
        keys = [k for k in self.store.list_artifacts(prefix) if k.rsplit("/", 1)[-1].startswith("step-")]
        return sorted(keys)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest complete checkpoint of this request_id, or None. A checkpoint written for another
        phase or spec is refused (FailedPreconditionError), never loaded."""
        keys = self._checkpoint_keys()
        if not keys:
            return None
        manifest = self.store.read_manifest(keys[-1])
        made_for = manifest.config or {}
        if made_for.get("phase") != self.request.phase or made_for.get("spec_hash") != self.spec_hash:
            raise FailedPreconditionError(
                f"checkpoint {keys[-1]} was written for phase {made_for.get('phase')!r} with spec hash "
                f"{str(made_for.get('spec_hash'))[:12]}, this job is phase {self.request.phase!r} with "
                f"spec hash {self.spec_hash[:12]}; refusing to resume from it (use a new request_id)")
        ref = self.store.ref_for(keys[-1])
        state = self.store.load_json(ref, "state.json")
        return Checkpoint(step=int(state["step"]), ref=ref, state=state)

    def load_checkpoint_tensors(self, checkpoint: Checkpoint, stem: str) -> dict[str, Any]:
        tensors, _meta = self.store.load_tensors(checkpoint.ref, f"{stem}.safetensors")
        return tensors

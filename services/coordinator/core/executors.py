"""How the coordinator reaches a phase's job protocol: in process (embedded mode) or over gRPC.

Both give the same view of a job, so the state machine in engine.py is one object in all three ways of
running (DESIGN.md §2); only the transport differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import AgentForgeError
from shared.runtime.context import JobRequest
from shared.runtime.events import JobState
from shared.runtime.registry import Job, JobRegistry
from shared.storage import ArtifactRef


class WorkerUnavailableError(AgentForgeError):
    """The phase worker could not be reached (down, restarting, network)."""


@dataclass(frozen=True)
class Progress:
    seq: int
    stage: str
    fraction: float
    step: int
    total_steps: int
    message: str


@dataclass(frozen=True)
class JobView:
    job_id: str
    state: JobState
    metrics: dict[str, float]
    artifacts: tuple[ArtifactRef, ...]
    error: str
    fencing_token: int
    progress: Progress | None


class PhaseExecutor(Protocol):
    def submit(self, request: JobRequest, spec: Any) -> JobView: ...

    def get(self, job_id: str) -> JobView:
        """NotFoundError when the worker does not know the job (e.g. it restarted)."""

    def cancel(self, job_id: str) -> None: ...


def _view_of(job: Job) -> JobView:
    last = job.events.last
    progress = None if last is None else Progress(last.seq, last.stage, last.fraction, last.step,
                                                  last.total_steps, last.message)
    return JobView(job_id=job.job_id, state=job.state, metrics=dict(job.metrics), artifacts=tuple(job.artifacts),
                   error=job.error, fencing_token=job.request.fencing_token, progress=progress)


class InProcessExecutor:
    """Embedded mode: the phase's JobRegistry lives in this process."""

    def __init__(self, registry: JobRegistry):
        self.registry = registry

    def submit(self, request: JobRequest, spec: Any) -> JobView:
        return _view_of(self.registry.submit(request, spec))

    def get(self, job_id: str) -> JobView:
        return _view_of(self.registry.get(job_id))

    def cancel(self, job_id: str) -> None:
        self.registry.cancel(job_id)

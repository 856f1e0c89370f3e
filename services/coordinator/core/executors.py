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
class MetricEvent:
    """A progress event that carried metrics (what the run report's series are made of)."""

    seq: int
    stage: str
    step: int
    metrics: dict[str, float]
    time: float


@dataclass(frozen=True)
class JobView:
    job_id: str
    state: JobState
    metrics: dict[str, float]
    artifacts: tuple[ArtifactRef, ...]
    error: str
    fencing_token: int
    progress: Progress | None
    events: tuple[MetricEvent, ...] = ()   # metric events after the seq `get` was asked for, oldest first
    more_events: bool = False              # the page was full: ask again after events[-1].seq
    event_log_id: str = ""                 # a new id: the job's event log started again (seqs from 1)


class PhaseExecutor(Protocol):
    def submit(self, request: JobRequest, spec: Any) -> JobView: ...

    def get(self, job_id: str, events_after_seq: int = 0) -> JobView:
        """The job, with its metric events after `events_after_seq` (one page). NotFoundError when the worker
        does not know the job (e.g. it restarted)."""

    def cancel(self, job_id: str) -> None: ...


def _view_of(job: Job, events_after_seq: int | None = None) -> JobView:
    last = job.events.last
    progress = None if last is None else Progress(last.seq, last.stage, last.fraction, last.step,
                                                  last.total_steps, last.message)
    page, more = job.events.metric_events(events_after_seq) if events_after_seq is not None else ([], False)
    return JobView(job_id=job.job_id, state=job.state, metrics=dict(job.metrics), artifacts=tuple(job.artifacts),
                   error=job.error, fencing_token=job.request.fencing_token, progress=progress,
                   events=tuple(MetricEvent(e.seq, e.stage, e.step, dict(e.metrics), e.time) for e in page),
                   more_events=more, event_log_id=job.events.log_id)


class InProcessExecutor:
    """Embedded mode: the phase's JobRegistry lives in this process."""

    def __init__(self, registry: JobRegistry):
        self.registry = registry

    def submit(self, request: JobRequest, spec: Any) -> JobView:
        return _view_of(self.registry.submit(request, spec))

    def get(self, job_id: str, events_after_seq: int = 0) -> JobView:
        return _view_of(self.registry.get(job_id), events_after_seq)

    def cancel(self, job_id: str) -> None:
        self.registry.cancel(job_id)

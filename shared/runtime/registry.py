"""The job registry of one phase worker: idempotent submit, jobs on worker threads, watch, cancel.

Jobs run on a small thread pool, never on the gRPC server's threads, so health checks and Get/Watch
answer while a job trains. Each job runs on a thread of its own that ends with the job (the pool's thread
only waits for it): a thread that ran torch keeps an OpenMP thread team for as long as it lives, and with
more OpenMP threads in a process than cores, libgomp stops spinning at barriers, which made every later
phase of an embedded run (one process, a pool thread per phase) 2–3× slower (measured: an idle team beside
a 2-thread evaluation made it 2.6× slower; bench/RESULTS.md, pipeline_bench). A job's id is derived from its request_id, so a worker restarted after a crash
gives the resubmitted job the same id and the runner resumes from the request's latest checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

from shared.config.load import config_hash
from shared.errors import (
    AgentForgeError,
    AlreadyExistsError,
    CancelledError,
    InvalidSpecError,
    NotFoundError,
    StaleLeaseError,
    UnavailablePhaseError,
)
from shared.runtime.context import JobContext, JobRequest, JobResult
from shared.runtime.events import Event, EventLog, JobState
from shared.runtime.phase import PhaseDefinition
from shared.storage import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)


def job_id_for(phase: str, request_id: str, fencing_token: int = 0) -> str:
    """Deterministic: a restarted worker gives a resubmitted request the same id (and finds its checkpoints
    by request_id); a newer fencing token is a new job, so a fenced-out holder's job stays distinct."""
    return f"{phase}-{hashlib.sha256(request_id.encode()).hexdigest()[:16]}-t{fencing_token}"


@dataclass
class Job:
    job_id: str
    request: JobRequest
    spec: Any
    spec_hash: str
    state: JobState = JobState.QUEUED
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: tuple[ArtifactRef, ...] = ()
    error: str = ""
    error_id: str = ""
    resumed_from_step: int = 0
    events: EventLog = field(default_factory=EventLog)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class JobRegistry:
    """Jobs of one phase in one worker process."""

    def __init__(self, definition: PhaseDefinition, store: ArtifactStore, *, max_workers: int = 1):
        self.definition = definition
        self.store = store
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"job-{definition.phase}")

    # -- spec handling --------------------------------------------------------------------------
    def parse_spec(self, data: dict[str, Any]):
        """Validate a spec dict against the phase's config section (errors name the field)."""
        from pydantic import ValidationError

        try:
            return self.definition.config_model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            raise InvalidSpecError(err["msg"], field=f"spec.{where}") from None

    def validate(self, spec) -> tuple[list[str], str]:
        """Dry run: (warnings, spec hash). The schema check has already passed in parse_spec; a phase
        without a runner says so in a warning (its Submit is refused with UNIMPLEMENTED)."""
        spec_hash = config_hash(spec.model_dump(mode="json"))
        if not self.definition.available:
            return [str(UnavailablePhaseError(self.definition.phase, self.definition.issue)) +
                    ": the spec is valid, but Submit will be refused"], spec_hash
        return list(self.definition.make_runner().validate(spec) or []), spec_hash

    # -- lifecycle ------------------------------------------------------------------------------
    def submit(self, request: JobRequest, spec) -> Job:
        """Start a job, or return the existing one for the same request_id (idempotent)."""
        if not request.request_id:
            raise InvalidSpecError("must not be empty (it makes Submit idempotent)", field="context.request_id")
        if request.phase and request.phase != self.definition.phase:
            raise InvalidSpecError(f"this worker runs phase '{self.definition.phase}', not '{request.phase}'",
                                   field="context.phase")
        request = JobRequest(**{**request.__dict__, "phase": self.definition.phase})
        spec_hash = config_hash(spec.model_dump(mode="json"))
        job_id = job_id_for(self.definition.phase, request.request_id, request.fencing_token)
        with self._lock:
            same_request = [j for j in self._jobs.values() if j.request.request_id == request.request_id]
            newer = [j for j in same_request if j.request.fencing_token > request.fencing_token]
            if newer:
                raise StaleLeaseError(
                    f"request_id '{request.request_id}' already runs with fencing token "
                    f"{newer[0].request.fencing_token} > {request.fencing_token}; this submit is stale")
            for older in same_request:
                if older.request.fencing_token < request.fencing_token:
                    older.cancel_event.set()  # fenced out: a newer lease holder takes over
            existing = self._jobs.get(job_id)
            if existing is not None:
                if existing.spec_hash != spec_hash:
                    raise AlreadyExistsError(
                        f"request_id '{request.request_id}' was already submitted with a different spec; "
                        f"use a new request_id")
                if not (existing.state in (JobState.FAILED, JobState.CANCELLED)):
                    return existing
                # A failed or cancelled job resubmitted with the same request_id runs again (resuming).
            runner = self.definition.make_runner()  # UnavailablePhaseError before anything is recorded
            job = Job(job_id=job_id, request=request, spec=spec, spec_hash=spec_hash)
            job.events.append(state=JobState.QUEUED, message="queued")
            self._jobs[job_id] = job
        self._pool.submit(self._execute, job, runner)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job '{job_id}' on this {self.definition.service} worker")
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def watch(self, job_id: str, after_seq: int = 0, stop: threading.Event | None = None) -> Iterator[Event]:
        return self.get(job_id).events.follow(after_seq, stop=stop)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel_event.set()
        return job

    def shutdown(self, *, cancel_running: bool = True, wait: bool = True) -> None:
        if cancel_running:
            for job in self.jobs():
                job.cancel_event.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # -- execution ------------------------------------------------------------------------------
    def _finish(self, job: Job, state: JobState, message: str) -> None:
        job.state = state
        job.events.append(state=state, message=message, fraction=1.0 if state is JobState.SUCCEEDED else 0.0,
                          metrics=dict(job.metrics))
        job.done.set()

    def _execute(self, job: Job, runner) -> None:
        """The pool's thread: run the job on a fresh thread and wait for it (see the module doc)."""
        worker = threading.Thread(target=self._run_job, args=(job, runner), daemon=True,
                                  name=f"{threading.current_thread().name}-{job.job_id}")
        worker.start()
        worker.join()

    def _run_job(self, job: Job, runner) -> None:
        if job.cancel_event.is_set():
            self._discard_outputs(job)
            self._finish(job, JobState.CANCELLED, "cancelled before it started")
            return
        job.state = JobState.RUNNING
        job.events.append(state=JobState.RUNNING, message="started")

        def record(metrics: dict[str, float], _step: int) -> None:
            job.metrics.update(metrics)

        ctx = JobContext(job_id=job.job_id, request=job.request, spec=job.spec, store=self.store,
                         events=job.events, cancel_event=job.cancel_event, on_metrics=record)
        try:
            result = runner.run(ctx)
            if not isinstance(result, JobResult):
                raise TypeError(f"{type(runner).__name__}.run returned {type(result).__name__}, not JobResult")
            job.resumed_from_step = ctx.resumed_from_step
            job.metrics.update(result.metrics)
            job.artifacts = tuple(result.artifacts)
            self._finish(job, JobState.SUCCEEDED, "finished")
        except CancelledError as exc:
            job.resumed_from_step = ctx.resumed_from_step
            self._discard_outputs(job)
            self._finish(job, JobState.CANCELLED, str(exc))
        except AgentForgeError as exc:
            job.resumed_from_step = ctx.resumed_from_step
            job.error = str(exc)
            log.warning("job %s failed: %s", job.job_id, exc)
            self._finish(job, JobState.FAILED, job.error)
        except Exception:  # noqa: BLE001 - the job boundary: log with an id, never leak a traceback
            job.error_id = uuid.uuid4().hex[:12]
            job.error = f"internal error in phase {self.definition.phase} (error id {job.error_id})"
            log.exception("job %s failed unexpectedly (error id %s)", job.job_id, job.error_id)
            self._finish(job, JobState.FAILED, job.error)

    def _discard_outputs(self, job: Job) -> None:
        """Delete a cancelled job's staged outputs (checkpoints stay, for a later resume)."""
        prefix = f"jobs/{job.job_id}/t{job.request.fencing_token}/"
        try:
            self.store.delete_prefix(prefix)
        except AgentForgeError as exc:
            log.warning("could not delete staged outputs of %s under %s: %s", job.job_id, prefix, exc)

"""The coordinator's state machine: runs as a phase graph, gates, the accelerator lease, restart safety.

One `tick()` advances every active run, oldest run first (so a freed accelerator lease goes to the run that
has waited longest), by looking at its phases in dependency order:
  pending/waiting  -> (deps done) reuse a finished phase, or take the accelerator lease if the phase
                      needs one, and submit the job with request_id "<run>.<phase>.a<attempt>"
  running          -> poll the job; renew its lease while the worker answers; record progress and every
                      metric-carrying progress event (run events of kind "metrics", in order, none twice);
                      a worker that forgot the job (restart) gets the same request again and resumes
                      from its checkpoints; on success promote its job-scoped artifacts (only while its
                      fencing token is current), release the lease and judge the gate table
A failed gate stops the run ("blocked") with metric, value and threshold; ApproveGate records who and why
and lets it continue. Only a running run hands out work units (WorkUnitPool's `accepts_work`).

CancelRun reports the run and its phases "cancelled" at once and asks each running job's worker to stop. A
cancelled job that holds the accelerator lease keeps it until it has really stopped: the phase keeps its
lease_id, and each tick drains such leases (`_drain`): it polls the job, renewing the lease and repeating
the cancel while the worker answers that the job still runs, and releases the lease once the job is terminal
(or unknown to its worker). A worker that stops answering loses the lease one TTL later, as any holder does.
So the next holder never starts while the cancelled job may still be on the accelerator (§8). The lease and
the phase's lease_id are in SQLite, so a coordinator restarted mid-cancel finishes the drain. A cancelled
phase retried before its job stopped waits for the drain before it asks for a lease again.
Everything lives in SQLite, so a restarted coordinator picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from typing import Any, Iterator, Mapping

from services.coordinator.core import gates as gate_mod
from services.coordinator.core.executors import PhaseExecutor, WorkerUnavailableError
from services.coordinator.core.graph import plan
from services.coordinator.core.leases import AcceleratorLeases
from services.coordinator.core.state import EventRecord, PhaseRecord, RunRecord, StateStore
from services.coordinator.core.work_units import WorkUnitPool
from shared.config import Profile, config_hash
from shared.errors import (
    AgentForgeError,
    FailedPreconditionError,
    InvalidSpecError,
    NotFoundError,
    StaleLeaseError,
    UnavailablePhaseError,
)
from shared.runtime.context import JobRequest
from shared.runtime.events import JobState
from shared.runtime.phase import PhaseDefinition
from shared.storage import ArtifactRef, ArtifactStore, published_key

log = logging.getLogger(__name__)

# phase states
PENDING, WAITING, RUNNING = "pending", "waiting", "running"
SUCCEEDED, APPROVED, REUSED, SKIPPED = "succeeded", "approved", "reused", "skipped"
FAILED, GATE_FAILED, CANCELLED = "failed", "gate_failed", "cancelled"
DONE = (SUCCEEDED, APPROVED, REUSED, SKIPPED)
# run states
RUN_RUNNING, RUN_BLOCKED, RUN_FAILED, RUN_CANCELLED, RUN_SUCCEEDED = (
    "running", "blocked", "failed", "cancelled", "succeeded")
RUN_TERMINAL = (RUN_FAILED, RUN_CANCELLED, RUN_SUCCEEDED)


def section_hash(profile: Profile, phase: str) -> str:
    """What a phase's result depends on besides its inputs: its config section and the run seed."""
    section = getattr(profile.phases, phase).model_dump(mode="json")
    return config_hash({"phase": phase, "section": section, "seed": profile.seed})


class Coordinator:
    def __init__(self, state: StateStore, store: ArtifactStore, phases: Mapping[str, PhaseDefinition],
                 executors: Mapping[str, PhaseExecutor], *, accelerators: int = 1, lease_ttl_s: float = 30.0,
                 unit_ttl_s: float = 60.0, clock=time.monotonic):
        self.state = state
        self.store = store
        self.phases = dict(phases)
        self.executors = dict(executors)
        self.leases = AcceleratorLeases(state, capacity=accelerators, ttl_s=lease_ttl_s, clock=clock)
        self.units = WorkUnitPool(state, ttl_s=unit_ttl_s, clock=clock, accepts_work=self._takes_work)
        self.leases.restore()
        self.units.restore()
        self._lock = threading.RLock()
        # (run_id, phase) -> (job_id, event_log_id, seq): how far a job's metric events are stored; rebuilt
        # from the stored events after a restart (_metrics_cursor)
        self._cursors: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # == users ===================================================================================
    def create_run(self, profile: Profile, *, request_id: str = "", start_phase: str = "",
                   inputs: tuple[ArtifactRef, ...] = (), reuse: bool | None = None) -> RunRecord:
        nodes = plan(self.phases, start_phase)
        skipped = [n.phase for n in nodes if n.skipped]
        needed = {dep for n in nodes if not n.skipped for dep in n.depends_on if dep in skipped}
        if needed and not inputs:
            raise InvalidSpecError(f"starting at '{start_phase}' needs the outputs of {sorted(needed)} as input "
                                   f"artifacts", field="inputs")
        for ref in inputs:
            self.store.read_manifest(ref)  # NotFoundError / IntegrityError before anything is recorded
        cfg = profile.model_dump(mode="json")
        rows = [{"phase": n.phase, "state": SKIPPED if n.skipped else PENDING,
                 "config_hash": section_hash(profile, n.phase)} for n in nodes]
        with self._lock:
            run = self.state.create_run(
                run_id=f"run-{uuid.uuid4().hex[:12]}", request_id=request_id or uuid.uuid4().hex,
                profile=profile.name, config=cfg, config_hash=config_hash(profile), start_phase=start_phase or None,
                inputs=[r.to_dict() for r in inputs],
                reuse=profile.coordinator.reuse_finished_phases if reuse is None else reuse, phases=rows,
                state=RUN_RUNNING)
        self._notify()
        return self.state.get_run(run.run_id)

    def get_run(self, run_id: str) -> tuple[RunRecord, list[PhaseRecord]]:
        return self.state.get_run(run_id), self.state.list_phases(run_id)

    def list_runs(self, states=None) -> list[RunRecord]:
        return self.state.list_runs(states)

    def lease_any_unit(self, phase: str, worker: str):
        """A pending unit of `phase` from any running run whose phase is running (oldest run first), or None.
        What a replicated worker asks for: it does not know which run needs it."""
        if not phase:
            raise InvalidSpecError("must not be empty", field="phase")
        for run in self.state.list_runs([RUN_RUNNING], oldest_first=True):
            try:
                ph = self.state.get_phase(run.run_id, phase)
            except NotFoundError:
                continue
            if ph.state == RUNNING:
                got = self.units.lease(run.run_id, phase, worker)
                if got is not None:
                    return got
        return None

    def cancel_run(self, run_id: str) -> RunRecord:
        """Cancelled at once for the user; a lease-holding job's lease is released only once the job has
        stopped (`_drain`), so the phase keeps its lease_id."""
        with self._lock:
            run = self.state.get_run(run_id)
            if run.state in RUN_TERMINAL:
                raise FailedPreconditionError(f"run {run_id} already {run.state}")
            for ph in self.state.list_phases(run_id):
                if ph.state == RUNNING:
                    self._cancel_job(ph)
                if ph.state in (PENDING, WAITING, RUNNING, GATE_FAILED, FAILED):
                    self.state.update_phase(run_id, ph.phase, state=CANCELLED, error="run cancelled")
            self.state.update_run(run_id, state=RUN_CANCELLED, error="cancelled by user")
            self._event(run_id, "run_finished", state=RUN_CANCELLED, message="cancelled by user")
        return self.state.get_run(run_id)

    def retry_phase(self, run_id: str, phase: str) -> RunRecord:
        with self._lock:
            run = self.state.get_run(run_id)
            ph = self.state.get_phase(run_id, phase)
            if ph.state not in (FAILED, GATE_FAILED, CANCELLED):
                raise FailedPreconditionError(f"phase {phase} of run {run_id} is {ph.state}; only a failed, "
                                              f"gate-failed or cancelled phase can be retried")
            if run.state == RUN_SUCCEEDED:
                raise FailedPreconditionError(f"run {run_id} already succeeded")
            self.state.update_phase(run_id, phase, state=PENDING, error="", gate=None)
            for other in self.state.list_phases(run_id):
                if other.state == CANCELLED and other.phase != phase:
                    self.state.update_phase(run_id, other.phase, state=PENDING, error="")
            self.state.update_run(run_id, state=RUN_RUNNING, error="")
            self._event(run_id, "retry", phase=phase, message=f"retrying {phase} (attempt {ph.attempt + 1})")
        self._notify()
        return self.state.get_run(run_id)

    def approve_gate(self, run_id: str, phase: str, who: str, why: str) -> RunRecord:
        if not who.strip() or not why.strip():
            raise InvalidSpecError("approving a gate needs who and why", field="who" if not who.strip() else "why")
        with self._lock:
            ph = self.state.get_phase(run_id, phase)
            if ph.state != GATE_FAILED:
                raise FailedPreconditionError(f"the gate of phase {phase} in run {run_id} did not fail "
                                              f"(phase is {ph.state}); nothing to approve")
            failed = [o for o in map(gate_mod.GateOutcome.from_dict, (ph.gate or {}).get("outcomes", []))
                      if not o.passed]
            locked = [o.metric for o in failed if not o.may_approve]
            if locked:
                raise FailedPreconditionError(f"gate metrics {locked} of phase {phase} may not be approved; "
                                              f"retry the phase instead")
            self.state.record_approval(run_id, phase, who, why, ph.gate or {})
            published = self._publish(run_id, phase, [ArtifactRef.from_dict(a) for a in ph.artifacts])
            self.state.update_phase(run_id, phase, state=APPROVED, artifacts=[r.to_dict() for r in published])
            self.state.update_run(run_id, state=RUN_RUNNING, error="")
            self._event(run_id, "approved", phase=phase, message=f"gate approved by {who}: {why}")
        self._notify()
        return self.state.get_run(run_id)

    def watch_run(self, run_id: str, after_seq: int = 0, *, stop: threading.Event | None = None,
                  poll_s: float = 0.5) -> Iterator[EventRecord]:
        """Events after `after_seq`, following new ones until the run ends (or `stop` is set)."""
        self.state.get_run(run_id)
        seen = after_seq
        while True:
            batch = self.state.events(run_id, after_seq=seen)
            for ev in batch:
                seen = ev.seq
                yield ev
            if batch and batch[-1].kind == "run_finished":
                return
            if not batch and self.state.get_run(run_id).state in RUN_TERMINAL:
                if not self.state.events(run_id, after_seq=seen):
                    return
            if stop is not None and stop.is_set():
                return
            with self._changed:
                self._changed.wait(timeout=poll_s)

    # == the loop ================================================================================
    def start(self, poll_interval_s: float = 0.5) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - keep scheduling; the error is logged with context
                    log.exception("coordinator tick failed")
                self._stop.wait(poll_interval_s)

        self._thread = threading.Thread(target=loop, name="coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def run_until_done(self, run_id: str, *, poll_interval_s: float = 0.1, timeout_s: float | None = None) -> RunRecord:
        """Embedded mode: tick until the run is finished or blocked."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.tick()
            run = self.state.get_run(run_id)
            if run.state in RUN_TERMINAL or run.state == RUN_BLOCKED:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.state} after {timeout_s} s")
            time.sleep(poll_interval_s)

    def tick(self) -> None:
        with self._lock:
            for lease in self.leases.reap():
                self._on_lease_expired(lease)
            self.units.reap()
            self._drain()
            # oldest first: a lease freed above or by an earlier run goes to the run that has waited longest
            for run in self.state.list_runs([RUN_RUNNING], oldest_first=True):
                self._advance(run)

    # == internals ===============================================================================
    def _advance(self, run: RunRecord) -> None:
        profile = Profile.model_validate(run.config)
        phases = {p.phase: p for p in self.state.list_phases(run.run_id)}
        for name, ph in phases.items():
            if ph.state in (PENDING, WAITING):
                deps = self.phases[name].depends_on
                if all(phases[d].state in DONE for d in deps):
                    self._start(run, profile, ph, phases)
            elif ph.state == RUNNING:
                self._poll(run, profile, ph)
            run_now = self.state.get_run(run.run_id)
            if run_now.state != RUN_RUNNING:
                return
        phases = self.state.list_phases(run.run_id)
        if all(p.state in DONE for p in phases):
            self.state.update_run(run.run_id, state=RUN_SUCCEEDED)
            self._event(run.run_id, "run_finished", state=RUN_SUCCEEDED, message="all phases finished")

    def _inputs_for(self, run: RunRecord, phase: str, phases: Mapping[str, PhaseRecord]) -> tuple[ArtifactRef, ...]:
        refs: list[ArtifactRef] = []
        for dep in self.phases[phase].depends_on:
            if phases[dep].state == SKIPPED:
                refs.extend(ArtifactRef.from_dict(d) for d in run.inputs)
            else:
                refs.extend(ArtifactRef.from_dict(d) for d in phases[dep].artifacts)
        unique: dict[str, ArtifactRef] = {}
        for ref in refs:
            unique.setdefault(ref.uri, ref)
        return tuple(unique.values())

    def _start(self, run: RunRecord, profile: Profile, ph: PhaseRecord, phases: Mapping[str, PhaseRecord]) -> None:
        if ph.lease_id:  # retried after a cancel: its cancelled job may still be on the accelerator
            if any(lease.lease_id == ph.lease_id for lease in self.leases.held()):
                if ph.state != WAITING:
                    self.state.update_phase(run.run_id, ph.phase, state=WAITING)
                    self._event(run.run_id, "waiting", phase=ph.phase,
                                message=f"waiting for the cancelled job {ph.job_id} to stop")
                return
            self.state.update_phase(run.run_id, ph.phase, lease_id="")
        inputs = self._inputs_for(run, ph.phase, phases)
        input_hashes = sorted(r.sha256 for r in inputs)
        if run.reuse and self._try_reuse(run, profile, ph, input_hashes):
            return
        lease = None
        if getattr(profile.coordinator.phases, ph.phase).needs_accelerator:
            lease = self.leases.acquire(f"{run.run_id}/{ph.phase}", run_id=run.run_id, phase=ph.phase)
            if lease is None:
                if ph.state != WAITING:
                    self.state.update_phase(run.run_id, ph.phase, state=WAITING)
                    self._event(run.run_id, "waiting", phase=ph.phase, message="waiting for the accelerator lease")
                return
        attempt = ph.attempt + 1
        request = self._request(run, profile, ph.phase, f"{run.run_id}.{ph.phase}.a{attempt}",
                                lease.token if lease else 0, inputs)
        try:
            view = self.executors[ph.phase].submit(request, getattr(profile.phases, ph.phase))
        except WorkerUnavailableError as exc:
            if lease:
                self.leases.release(lease.lease_id, lease.token)
            self._event(run.run_id, "worker_unavailable", phase=ph.phase, message=str(exc))
            return
        except (UnavailablePhaseError, AgentForgeError) as exc:
            if lease:
                self.leases.release(lease.lease_id, lease.token)
            self._fail(run, ph.phase, str(exc), attempt=attempt)
            return
        self.state.update_phase(run.run_id, ph.phase, state=RUNNING, attempt=attempt, job_id=view.job_id,
                                request_id=request.request_id, fencing_token=request.fencing_token,
                                lease_id=lease.lease_id if lease else "", input_hashes=input_hashes,
                                started_at=time.time(), error="")
        self._event(run.run_id, "phase_started", phase=ph.phase,
                    message=f"job {view.job_id} (attempt {attempt}, fencing token {request.fencing_token})")

    def _poll(self, run: RunRecord, profile: Profile, ph: PhaseRecord) -> None:
        executor = self.executors[ph.phase]
        try:
            view = self._collect_metrics(run.run_id, ph, executor)
        except NotFoundError:
            self._resubmit(run, profile, ph)
            return
        except WorkerUnavailableError:
            return  # no renewal: a dead worker's lease expires and is reclaimed by reap()
        # a NaN or infinite value has no JSON form in the state file: it counts as not reported (its gate fails)
        view = dataclasses.replace(view, metrics={k: v for k, v in view.metrics.items() if math.isfinite(v)})
        if ph.lease_id:
            try:
                self.leases.renew(ph.lease_id, ph.fencing_token)
            except StaleLeaseError as exc:
                self._fence(run, ph, str(exc))
                return
        if view.progress and view.progress.seq > (ph.progress or {}).get("seq", 0):
            p = view.progress
            self.state.update_phase(run.run_id, ph.phase, progress=p.__dict__)
            self._event(run.run_id, "progress", phase=ph.phase, message=p.message or p.stage,
                        payload={"stage": p.stage, "fraction": p.fraction, "step": p.step,
                                 "total_steps": p.total_steps, "metrics": view.metrics})
        if view.state is JobState.SUCCEEDED:
            self._finish(run, profile, ph, view)
        elif view.state is JobState.FAILED:
            self._release(ph)
            self._fail(run, ph.phase, view.error or "the job failed")
        elif view.state is JobState.CANCELLED:
            self._release(ph)
            self._fail(run, ph.phase, "the job was cancelled by its worker")

    def _metrics_cursor(self, run_id: str, ph: PhaseRecord) -> tuple[str, int]:
        """(event_log_id, seq) of the last metric event stored for the phase's current job; ("", 0) if none."""
        cached = self._cursors.get((run_id, ph.phase))
        if cached is None:
            last = self.state.last_event(run_id, "metrics", ph.phase)
            p = last.payload if last is not None else {}
            cached = (p.get("job_id", ""), p.get("event_log_id", ""), int(p.get("seq", 0)))
        job_id, log_id, seq = cached
        return (log_id, seq) if job_id == ph.job_id else ("", 0)

    def _collect_metrics(self, run_id: str, ph: PhaseRecord, executor: PhaseExecutor):
        """Get the job, storing each of its metric-carrying progress events as a run event of kind "metrics"
        (payload: job_id, event_log_id, seq, stage, step, metrics, time), page after page, in order.

        The cursor is the last stored event itself, written in the same transaction as the events, so a
        coordinator restarted at any moment neither stores an event twice nor skips one. A job whose worker
        restarted has a new event log (its seqs start again at 1): its events are collected from the start."""
        log_id, seq = self._metrics_cursor(run_id, ph)
        asked = seq
        view = executor.get(ph.job_id, events_after_seq=asked)
        while True:
            if view.event_log_id != log_id:
                log_id, seq = view.event_log_id, 0
                if asked != 0:   # that page was cut from another log: ask this one from its start
                    asked = 0
                    view = executor.get(ph.job_id, events_after_seq=0)
                    continue
            if view.events:
                self.state.append_events(run_id, [("metrics", ph.phase, self._metrics_payload(ph.job_id, log_id, e))
                                                  for e in view.events])
                seq = view.events[-1].seq
                self._notify()
            self._cursors[(run_id, ph.phase)] = (ph.job_id, log_id, seq)
            if not view.more_events:
                return view
            asked = seq
            view = executor.get(ph.job_id, events_after_seq=asked)

    @staticmethod
    def _metrics_payload(job_id: str, log_id: str, e) -> dict[str, Any]:
        """A metric event as stored. A non-finite value has no JSON form: it is left out and named."""
        values = {k: float(v) for k, v in e.metrics.items()}
        payload = {"state": "", "message": e.stage, "job_id": job_id, "event_log_id": log_id, "seq": e.seq,
                   "stage": e.stage, "step": e.step, "time": e.time,
                   "metrics": {k: v for k, v in values.items() if math.isfinite(v)}}
        if len(payload["metrics"]) < len(values):
            payload["non_finite"] = sorted(k for k, v in values.items() if not math.isfinite(v))
        return payload

    @staticmethod
    def _request(run: RunRecord, profile: Profile, phase: str, request_id: str, token: int,
                 inputs: tuple[ArtifactRef, ...]) -> JobRequest:
        return JobRequest(request_id=request_id, phase=phase, run_id=run.run_id, fencing_token=token,
                          inputs=inputs, seed=profile.seed, device=profile.runtime.device,
                          torch_threads=profile.runtime.torch_threads, profile=profile.name,
                          config_hash=run.config_hash, evaluation=profile.evaluation.model_dump())

    def _resubmit(self, run: RunRecord, profile: Profile, ph: PhaseRecord) -> None:
        """The worker does not know the job (it restarted): same request_id, same token -> it resumes."""
        phases = {p.phase: p for p in self.state.list_phases(run.run_id)}
        request = self._request(run, profile, ph.phase, ph.request_id, ph.fencing_token,
                                self._inputs_for(run, ph.phase, phases))
        try:
            view = self.executors[ph.phase].submit(request, getattr(profile.phases, ph.phase))
        except WorkerUnavailableError:
            return
        self.state.update_phase(run.run_id, ph.phase, job_id=view.job_id)
        self._event(run.run_id, "resubmitted", phase=ph.phase, message=f"worker lost job; resubmitted {ph.request_id}")

    def _finish(self, run: RunRecord, profile: Profile, ph: PhaseRecord, view) -> None:
        if ph.lease_id and not self.leases.is_current(ph.fencing_token):
            self._fence(run, ph, f"fencing token {ph.fencing_token} is no longer current")
            return
        self._release(ph)
        outcomes = gate_mod.judge(getattr(profile.gates, ph.phase), view.metrics)
        failed = gate_mod.failures(outcomes)
        gate = {"outcomes": [o.to_dict() for o in outcomes]}
        # Only accepted outputs are published; a gate-failed phase keeps its job-scoped refs until approved.
        artifacts = list(view.artifacts) if failed else self._publish(run.run_id, ph.phase, view.artifacts)
        self.state.update_phase(run.run_id, ph.phase, metrics=view.metrics, artifacts=[r.to_dict() for r in artifacts],
                                gate=gate, finished_at=time.time(), lease_id="",
                                state=GATE_FAILED if failed else SUCCEEDED,
                                error="; ".join(o.reason for o in failed))
        self._event(run.run_id, "gate", phase=ph.phase, payload=gate,
                    message="; ".join(o.reason for o in outcomes))
        if failed:
            reason = f"gate of {ph.phase} failed: " + "; ".join(o.reason for o in failed)
            self.state.update_run(run.run_id, state=RUN_BLOCKED, error=reason)
            self._event(run.run_id, "blocked", phase=ph.phase, state=RUN_BLOCKED, message=reason)
        else:
            self._event(run.run_id, "phase_finished", phase=ph.phase, state=SUCCEEDED, payload={"metrics": view.metrics})

    def _publish(self, run_id: str, phase: str, staged) -> list[ArtifactRef]:
        return [self.store.promote(ref, published_key(run_id, phase, ref.name)) for ref in staged]

    def _try_reuse(self, run: RunRecord, profile: Profile, ph: PhaseRecord, input_hashes: list[str]) -> bool:
        old = self.state.find_finished_phase(ph.phase, ph.config_hash, input_hashes)
        if old is None or old.run_id == run.run_id:
            return False
        outcomes = gate_mod.judge(getattr(profile.gates, ph.phase), old.metrics)
        if gate_mod.failures(outcomes):
            return False
        self.state.update_phase(run.run_id, ph.phase, state=REUSED, metrics=old.metrics, artifacts=old.artifacts,
                                gate={"outcomes": [o.to_dict() for o in outcomes]}, input_hashes=input_hashes,
                                reused_from=old.run_id, finished_at=time.time())
        self._event(run.run_id, "phase_finished", phase=ph.phase, state=REUSED,
                    message=f"reused the result of run {old.run_id} (same inputs and config)")
        return True

    def _fence(self, run: RunRecord, ph: PhaseRecord, why: str) -> None:
        """The job's lease is gone: its output is never promoted; the phase goes back to wait for a lease and
        resubmits the same request (the new holder resumes from checkpoints)."""
        self._cancel_job(ph)
        if ph.job_id:  # whatever the fenced job staged is dead weight: it can never be promoted
            self.store.delete_prefix(f"jobs/{ph.job_id}/")
        self.state.update_phase(run.run_id, ph.phase, state=WAITING, lease_id="", attempt=ph.attempt - 1)
        self._event(run.run_id, "fenced", phase=ph.phase, message=why)

    def _on_lease_expired(self, lease) -> None:
        ph = self._phase_of(lease)
        if ph is None or ph.lease_id != lease.lease_id:
            return
        if ph.state == RUNNING:
            run = self.state.get_run(lease.run_id)
            self._fence(run, ph, f"accelerator lease {lease.lease_id} expired (token {lease.token}); "
                                 f"the worker stopped answering")
        else:  # a cancelled job's, being drained: its worker is gone, so the accelerator is free
            log.warning("lease %s of cancelled job %s expired: its worker stopped answering", lease.lease_id,
                        ph.job_id)
            self.state.update_phase(ph.run_id, ph.phase, lease_id="")

    def _phase_of(self, lease) -> PhaseRecord | None:
        """The phase a lease was granted to; None for a lease taken through the lease API for no phase."""
        if not (lease.run_id and lease.phase):
            return None
        try:
            return self.state.get_phase(lease.run_id, lease.phase)
        except NotFoundError:
            return None

    def _drain(self) -> None:
        """Release the lease of each cancelled job that has stopped (see the module docstring).

        A lease belongs to a cancelled job when its phase still records it but is no longer running. A lease
        its phase does not record was granted just before a restart and is adopted by `_start`; it is left
        alone. Only held leases are looked at, so this costs at most `accelerators` polls a tick."""
        for lease in self.leases.held():
            ph = self._phase_of(lease)
            if ph is None or ph.state == RUNNING or ph.lease_id != lease.lease_id:
                continue
            try:
                view = self.executors[ph.phase].get(ph.job_id, events_after_seq=(ph.progress or {}).get("seq", 0))
            except NotFoundError:
                view = None  # its worker restarted without it: nothing of it runs
            except WorkerUnavailableError:
                continue     # no renewal: the lease expires one TTL later and reap() frees it
            except AgentForgeError as exc:  # an answer we cannot use: as if the worker were unreachable
                log.warning("cancelled job %s of %s/%s: %s; its lease %s is not renewed", ph.job_id, ph.run_id,
                            ph.phase, exc, lease.lease_id)
                continue
            if view is None or view.state.terminal:
                log.info("cancelled job %s of %s/%s stopped (%s); releasing lease %s", ph.job_id, ph.run_id,
                         ph.phase, "unknown to its worker" if view is None else view.state.value, lease.lease_id)
                self._release(ph)
                continue
            try:
                self._cancel_job(ph)  # again: the first request may have been lost (a restart, a worker blip)
            except AgentForgeError as exc:
                log.warning("cancel of %s again: %s", ph.job_id, exc)
            try:
                self.leases.renew(lease.lease_id, ph.fencing_token)
            except StaleLeaseError:
                self.state.update_phase(ph.run_id, ph.phase, lease_id="")

    def _takes_work(self, run_id: str, phase: str) -> bool:
        """Whether work units of the run may be handed out: only while it runs (WorkUnitPool's accepts_work)."""
        try:
            return self.state.get_run(run_id).state == RUN_RUNNING
        except NotFoundError:
            return False

    def _release(self, ph: PhaseRecord) -> None:
        if ph.lease_id:
            try:
                self.leases.release(ph.lease_id, ph.fencing_token)
            except StaleLeaseError:
                pass
            self.state.update_phase(ph.run_id, ph.phase, lease_id="")

    def _cancel_job(self, ph: PhaseRecord) -> None:
        if not ph.job_id:
            return
        try:
            self.executors[ph.phase].cancel(ph.job_id)
        except (NotFoundError, WorkerUnavailableError) as exc:
            log.info("cancel of %s: %s", ph.job_id, exc)

    def _fail(self, run: RunRecord, phase: str, error: str, **fields: Any) -> None:
        self.state.update_phase(run.run_id, phase, state=FAILED, error=error, finished_at=time.time(), **fields)
        self.state.update_run(run.run_id, state=RUN_FAILED, error=f"phase {phase} failed: {error}")
        self._event(run.run_id, "phase_finished", phase=phase, state=FAILED, message=error)
        self._event(run.run_id, "run_finished", state=RUN_FAILED, message=f"phase {phase} failed: {error}")

    def _event(self, run_id: str, kind: str, *, phase: str | None = None, state: str = "", message: str = "",
               payload: dict | None = None) -> None:
        self.state.append_event(run_id, kind, phase=phase, payload={"state": state, "message": message,
                                                                    **(payload or {})})
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

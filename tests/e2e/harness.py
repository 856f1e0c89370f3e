"""A test's view of a running LocalCluster: the coordinator's user RPCs, the phase services' job protocol, the
cluster's S3 store, and the checks every end-to-end test shares (a run driven to its end with each failed
gate approved after its reason was checked, artifacts verified, lineage walked).

Everything goes through the real processes' public surfaces (gRPC with the token, S3 with the cluster's
credentials); nothing reaches into a process.
"""

from __future__ import annotations

import importlib
import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from agentforge.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2
from shared.deploy import topology
from shared.deploy.local import LocalCluster
from shared.rpc.auth import with_token
from shared.rpc.convert import ref_from_proto, ref_to_proto
from shared.rpc.server import channel_options
from shared.runtime.phase import get_phase
from shared.storage import ArtifactRef, ArtifactStore, Manifest, store_from_uri

T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "cancelled")
DONE = ("succeeded", "approved", "reused", "skipped")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}
APPROVER = "e2e-test"


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.2) -> T:
    """predicate()'s first truthy value; AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def service_of(phase: str) -> str:
    """The deploy name of the service that runs `phase` (reasoning_data -> reasoning-data)."""
    return next(s.name for s in topology.SERVICES if s.phase == phase)


@dataclass(frozen=True)
class Approval:
    phase: str
    metrics: tuple[str, ...]   # the failed gate metrics the approval covered


class Client:
    """The coordinator and the phase services of `cluster`, as a user with the token sees them."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.store: ArtifactStore = store_from_uri(topology.STORE_URI, env=cluster.env_for_client())
        self._channels: dict[str, grpc.Channel] = {}
        self.reconnect()

    def _channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            raw = grpc.insecure_channel(self.cluster.address(service), options=channel_options())
            self._channels[service] = with_token(raw, self.cluster.token)
        return self._channels[service]

    def reconnect(self) -> None:
        """Fresh channels (after a restart, so no call waits out a dead connection's backoff)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel("coordinator"))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- the coordinator ------------------------------------------------------------------------------
    def create(self, *, profile: str = "", config_yaml: str = "", start_phase: str = "",
               inputs: Iterable[ArtifactRef] = (), request_id: str = "") -> str:
        req = coordinator_pb2.CreateRunRequest(
            request_id=request_id, start_phase=start_phase,
            inputs=[ref_to_proto(r) for r in inputs])
        if config_yaml:
            req.config_yaml = config_yaml
        else:
            req.profile = profile or "ci"
        return self.stub.CreateRun(req, timeout=30).run_id

    def run(self, run_id: str) -> coordinator_pb2.Run:
        return self.stub.GetRun(coordinator_pb2.RunRef(run_id=run_id), timeout=30)

    def phase(self, run_id: str, phase: str) -> coordinator_pb2.PhaseStatus:
        return next(p for p in self.run(run_id).phases if p.phase == phase)

    def events(self, run_id: str, timeout_s: float = 10.0) -> list[coordinator_pb2.RunEvent]:
        """The run's events so far. The stream ends by itself once the run has finished; for a run that goes
        on, whatever arrived within timeout_s."""
        out: list[coordinator_pb2.RunEvent] = []
        try:
            for ev in self.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=timeout_s):
                out.append(ev)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        return out

    def wait_phase(self, run_id: str, phase: str, states: tuple[str, ...], timeout_s: float) -> coordinator_pb2.PhaseStatus:
        def reached():
            ph = self.phase(run_id, phase)
            if ph.state in ("failed", "cancelled") and ph.state not in states:
                raise AssertionError(f"{phase} of {run_id} ended {ph.state}: {ph.error}")
            return ph if ph.state in states else None
        return wait_for(reached, timeout_s, f"{phase} of {run_id} to be {states}")

    def approve_failed_gates(self, run: coordinator_pb2.Run) -> list[Approval]:
        """Approve every gate-failed phase of a blocked run through ApproveGate, after checking that the run
        and the phase report why: the failed metrics, each with its value (or 'not reported') and threshold,
        a value that really fails its threshold, and only approvable gates among them."""
        assert run.state == "blocked", f"run {run.run_id} is {run.state}, not blocked"
        failed_phases = [p for p in run.phases if p.state == "gate_failed"]
        assert failed_phases, f"run {run.run_id} is blocked with no gate_failed phase: {run.error}"
        approvals = []
        for ph in failed_phases:
            failed = [g for g in ph.gates if not g.passed]
            assert failed, f"{ph.phase} is gate_failed with every gate passed"
            assert f"gate of {ph.phase} failed" in run.error, run.error
            for g in failed:
                assert g.metric in run.error and g.metric in ph.error, (g.metric, run.error)
                if g.measured:
                    assert f"needs {g.op} {g.threshold:g}" in run.error, run.error
                    assert not OPS[g.op](g.value, g.threshold), f"{g.metric} = {g.value} passes {g.op} {g.threshold}"
                else:
                    assert f"{g.metric} was not reported" in run.error, run.error
                assert g.may_approve, f"{ph.phase}: gate {g.metric} failed and may not be approved: {run.error}"
            why = "ci-scale models cannot meet " + ", ".join(g.metric for g in failed)
            approved = self.stub.ApproveGate(coordinator_pb2.ApproveGateRequest(
                run_id=run.run_id, phase=ph.phase, who=APPROVER, why=why), timeout=30)
            assert next(p for p in approved.phases if p.phase == ph.phase).state == "approved"
            approvals.append(Approval(ph.phase, tuple(g.metric for g in failed)))
        return approvals

    def drive(self, run_id: str, timeout_s: float, *, approve: bool = True) -> tuple[coordinator_pb2.Run, list[Approval]]:
        """Follow the run to a terminal state, approving failed gates on the way (approve=False: stop at the
        first block). Returns the last Run and the approvals made."""
        approvals: list[Approval] = []
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(run_id)
            if run.state in TERMINAL:
                return run, approvals
            if run.state == "blocked":
                if not approve:
                    return run, approvals
                approvals += self.approve_failed_gates(run)
                continue
            if time.monotonic() > deadline:
                states = {p.phase: p.state for p in run.phases}
                raise AssertionError(f"run {run_id} still {run.state} after {timeout_s:.0f} s: {states}")
            time.sleep(0.5)

    def cancel_unfinished(self) -> None:
        """Cancel every run that has not ended (a test's leftovers must not hold the lease)."""
        for run in self.stub.ListRuns(coordinator_pb2.ListRunsRequest(states=["running", "blocked"]), timeout=30).runs:
            try:
                self.stub.CancelRun(coordinator_pb2.RunRef(run_id=run.run_id), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:   # it ended meanwhile
                    raise

    # -- the phase services ---------------------------------------------------------------------------
    def _job_stub(self, phase: str):
        definition = get_phase(phase)
        module = importlib.import_module(definition.add_servicer.__module__)
        return getattr(module, definition.grpc_service.rsplit(".", 1)[1] + "Stub")(self._channel(service_of(phase)))

    def job(self, phase: str, job_id: str) -> job_pb2.JobStatus:
        """Get on the phase's own service: the job as its worker knows it."""
        return self._job_stub(phase).Get(job_pb2.JobRef(job_id=job_id), timeout=30)

    def job_events(self, phase: str, job_id: str, timeout_s: float = 60.0) -> list:
        """Every progress event of a finished job, replayed by its worker's Watch (times on the worker's clock)."""
        return list(self._job_stub(phase).Watch(job_pb2.WatchRequest(job_id=job_id), timeout=timeout_s))


# -- run records ------------------------------------------------------------------------------------------
def event_time(ev: coordinator_pb2.RunEvent) -> float:
    return ev.time.ToNanoseconds() / 1e9


def phase_spans(events: list[coordinator_pb2.RunEvent]) -> dict[str, list[tuple[float, float]]]:
    """{phase: [(started, finished), ...]} from a run's events: each phase_started up to the phase's next
    gate verdict, failure, fencing or the run's end (a span still open at the last event ends there)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    open_at: dict[str, float] = {}
    for ev in events:
        if ev.kind == "phase_started":
            open_at[ev.phase] = event_time(ev)
        elif ev.phase in open_at and ev.kind in ("gate", "phase_finished", "fenced"):
            spans.setdefault(ev.phase, []).append((open_at.pop(ev.phase), event_time(ev)))
        elif ev.kind == "run_finished":
            for phase, start in open_at.items():
                spans.setdefault(phase, []).append((start, event_time(ev)))
            open_at.clear()
    if events:
        for phase, start in open_at.items():
            spans.setdefault(phase, []).append((start, event_time(events[-1])))
    return spans


# -- artifacts ----------------------------------------------------------------------------------------------
def verify_run_artifacts(client: Client, run: coordinator_pb2.Run) -> list[str]:
    """Every artifact published under the run verifies (each file re-hashed), and each phase's refs in the
    run record are exactly those published artifacts. Returns the published keys."""
    store = client.store
    keys = store.list_artifacts(f"runs/{run.run_id}/")
    for key in keys:
        store.verify(store.ref_for(key))
    recorded = set()
    for ph in run.phases:
        for a in ph.artifacts:
            ref = ref_from_proto(a)
            key = store.key_from_uri(ref.uri)
            assert key.startswith(f"runs/{run.run_id}/{ph.phase}/"), f"{ph.phase} refers to unpublished {ref.uri}"
            store.verify(ref)   # the manifest is the one the run recorded (sha256), every file re-hashed
            recorded.add(key)
    assert recorded == set(keys), f"published but not recorded: {set(keys) - recorded}; recorded but not " \
                                  f"published: {recorded - set(keys)}"
    return keys


def lineage(store: ArtifactStore, ref: ArtifactRef) -> dict[str, tuple[ArtifactRef, Manifest]]:
    """Every artifact reachable from `ref` through manifests' parents, by URI. Each is read through its ref,
    so a parent whose manifest is missing or differs from the hash its child recorded fails here, and each
    one's files are re-hashed."""
    seen: dict[str, tuple[ArtifactRef, Manifest]] = {}
    todo = [ref]
    while todo:
        r = todo.pop()
        if r.uri in seen:
            continue
        manifest = store.read_manifest(r)
        store.verify(r)
        seen[r.uri] = (r, manifest)
        todo.extend(manifest.parents)
    return seen

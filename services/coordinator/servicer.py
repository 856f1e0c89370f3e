"""CoordinatorService servicer: proto <-> the Coordinator state machine, nothing else."""

from __future__ import annotations

import threading

import yaml
from google.protobuf import json_format, struct_pb2

from agentforge.v1 import common_pb2, coordinator_pb2
from services.coordinator.core.engine import Coordinator
from services.coordinator.core.gates import GateOutcome
from services.coordinator.core.state import EventRecord, PhaseRecord, RunRecord
from shared.config import load_profile, profile_from_dict
from shared.errors import ConfigError, InvalidSpecError
from shared.rpc.convert import ref_from_proto, ref_to_proto
from shared.storage import ArtifactRef


def _ts(seconds: float):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromNanoseconds(int((seconds or 0.0) * 1e9))
    return t


def _gate(o: GateOutcome) -> coordinator_pb2.GateResult:
    return coordinator_pb2.GateResult(metric=o.metric, op=o.op, threshold=o.threshold, measured=o.measured,
                                      value=o.value, passed=o.passed, mitigation=o.mitigation,
                                      may_approve=o.may_approve)


def phase_to_proto(ph: PhaseRecord, coordinator: Coordinator, profile_cfg: dict) -> coordinator_pb2.PhaseStatus:
    definition = coordinator.phases[ph.phase]
    msg = coordinator_pb2.PhaseStatus(
        phase=ph.phase, state=ph.state, attempt=ph.attempt, job_id=ph.job_id or "",
        fencing_token=ph.fencing_token or 0,
        metrics=[common_pb2.Metric(name=k, value=v) for k, v in sorted((ph.metrics or {}).items())],
        artifacts=[ref_to_proto(ArtifactRef.from_dict(a)) for a in ph.artifacts or []],
        gates=[_gate(GateOutcome.from_dict(o)) for o in (ph.gate or {}).get("outcomes", [])],
        error=ph.error or "", reused_from=ph.reused_from or "", depends_on=list(definition.depends_on),
        needs_accelerator=bool(profile_cfg["coordinator"]["phases"][ph.phase]["needs_accelerator"]))
    if ph.progress:
        p = ph.progress
        msg.progress.CopyFrom(common_pb2.ProgressEvent(
            job_id=ph.job_id or "", seq=p.get("seq", 0), stage=p.get("stage", ""), fraction=p.get("fraction", 0.0),
            step=p.get("step", 0), total_steps=p.get("total_steps", 0), message=p.get("message", "")))
    return msg


def run_to_proto(run: RunRecord, phases: list[PhaseRecord], coordinator: Coordinator) -> coordinator_pb2.Run:
    return coordinator_pb2.Run(
        run_id=run.run_id, request_id=run.request_id, profile=run.profile, config_hash=run.config_hash,
        state=run.state, start_phase=run.start_phase or "", error=run.error or "",
        phases=[phase_to_proto(p, coordinator, run.config) for p in phases],
        created_at=_ts(run.created_at), updated_at=_ts(run.updated_at))


def event_to_proto(ev: EventRecord) -> coordinator_pb2.RunEvent:
    payload = ev.payload or {}
    msg = coordinator_pb2.RunEvent(run_id=ev.run_id, seq=ev.seq, kind=ev.kind, phase=ev.phase or "",
                                   message=payload.get("message", ""), state=payload.get("state", ""),
                                   time=_ts(ev.time))
    metrics = payload.get("metrics") or {}
    step = int(payload.get("step", 0)) if ev.kind == "metrics" else 0   # a "metrics" event's values share its step
    msg.metrics.extend(common_pb2.Metric(name=k, value=v, step=step) for k, v in sorted(metrics.items()))
    msg.gates.extend(_gate(GateOutcome.from_dict(o)) for o in payload.get("outcomes", []))
    return msg


class CoordinatorServicer:
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    def _run(self, run_id: str) -> coordinator_pb2.Run:
        run, phases = self.c.get_run(run_id)
        return run_to_proto(run, phases, self.c)

    # -- users --
    def CreateRun(self, request, context):
        which = request.WhichOneof("config")
        if which == "profile":
            profile = load_profile(request.profile) if "/" not in request.profile else None
            if profile is None:
                raise InvalidSpecError("must be a shipped profile name, not a path (send config_yaml)",
                                       field="profile")
        elif which == "config_yaml":
            try:
                data = yaml.safe_load(request.config_yaml)
            except yaml.YAMLError as exc:
                raise ConfigError(f"not valid YAML: {exc}", source="config_yaml") from None
            profile = profile_from_dict(data, source="config_yaml")
        else:
            raise InvalidSpecError("set either profile or config_yaml", field="config")
        run = self.c.create_run(profile, request_id=request.request_id, start_phase=request.start_phase,
                                inputs=tuple(ref_from_proto(r) for r in request.inputs),
                                reuse=True if request.reuse_finished_phases else None)
        return self._run(run.run_id)

    def GetRun(self, request, context):
        return self._run(request.run_id)

    def ListRuns(self, request, context):
        runs = self.c.list_runs(list(request.states) or None)
        return coordinator_pb2.ListRunsResponse(runs=[self._run(r.run_id) for r in runs])

    def WatchRun(self, request, context):
        stop = threading.Event()
        context.add_callback(stop.set)
        for ev in self.c.watch_run(request.run_id, request.after_seq, stop=stop):
            yield event_to_proto(ev)

    def CancelRun(self, request, context):
        self.c.cancel_run(request.run_id)
        return self._run(request.run_id)

    def RetryPhase(self, request, context):
        self.c.retry_phase(request.run_id, request.phase)
        return self._run(request.run_id)

    def ApproveGate(self, request, context):
        self.c.approve_gate(request.run_id, request.phase, request.who, request.why)
        return self._run(request.run_id)

    # -- accelerator lease --
    def AcquireLease(self, request, context):
        if not request.holder:
            raise InvalidSpecError("must not be empty", field="holder")
        lease = self.c.leases.acquire(request.holder, run_id=request.run_id, phase=request.phase)
        if lease is None:
            return coordinator_pb2.Lease(granted=False, ttl_s=self.c.leases.ttl_s)
        return coordinator_pb2.Lease(granted=True, lease_id=lease.lease_id, holder=lease.holder,
                                     fencing_token=lease.token, ttl_s=self.c.leases.ttl_s)

    def RenewLease(self, request, context):
        lease = self.c.leases.renew(request.lease_id, request.fencing_token)
        return coordinator_pb2.Lease(granted=True, lease_id=lease.lease_id, holder=lease.holder,
                                     fencing_token=lease.token, ttl_s=self.c.leases.ttl_s)

    def ReleaseLease(self, request, context):
        return coordinator_pb2.ReleaseLeaseResponse(
            released=self.c.leases.release(request.lease_id, request.fencing_token))

    # -- work units --
    def PlanUnits(self, request, context):
        self.c.state.get_run(request.run_id)
        units = [(u.unit_id, json_format.MessageToDict(u.payload)) for u in request.units]
        if any(not uid for uid, _ in units):
            raise InvalidSpecError("every unit needs a unit_id", field="units.unit_id")
        planned = self.c.units.plan(request.run_id, request.phase, units)
        total = self.c.units.progress(request.run_id, request.phase)["total"]
        return coordinator_pb2.PlanUnitsResponse(planned=planned, total=total)

    def LeaseUnit(self, request, context):
        if not request.worker:
            raise InvalidSpecError("must not be empty", field="worker")
        if request.run_id:
            got = self.c.units.lease(request.run_id, request.phase, request.worker)
        else:
            got = self.c.lease_any_unit(request.phase, request.worker)
        if got is None:
            return coordinator_pb2.UnitLease(granted=False, ttl_s=self.c.units.ttl_s)
        payload = struct_pb2.Struct()
        payload.update(got.payload)
        return coordinator_pb2.UnitLease(granted=True, unit=coordinator_pb2.WorkUnit(unit_id=got.unit_id, payload=payload),
                                         fencing_token=got.token, ttl_s=self.c.units.ttl_s,
                                         run_id=got.run_id, phase=got.phase)

    def HeartbeatUnit(self, request, context):
        self.c.units.heartbeat(request.run_id, request.phase, request.unit_id, request.fencing_token)
        return coordinator_pb2.UnitLease(granted=True, fencing_token=request.fencing_token,
                                         ttl_s=self.c.units.ttl_s, run_id=request.run_id, phase=request.phase,
                                         unit=coordinator_pb2.WorkUnit(unit_id=request.unit_id))

    def CompleteUnit(self, request, context):
        u = request.unit
        new = self.c.units.complete(u.run_id, u.phase, u.unit_id, u.fencing_token,
                                    ref_from_proto(request.artifact).to_dict())
        return coordinator_pb2.CompleteUnitResponse(newly_completed=new)

    def ListUnits(self, request, context):
        out = coordinator_pb2.ListUnitsResponse()
        for u in self.c.state.list_units(request.run_id, request.phase):
            item = out.units.add(unit_id=u.unit_id, state=u.state, attempts=u.attempts)
            item.payload.update(u.payload)
            if u.artifact:
                item.artifact.CopyFrom(ref_to_proto(ArtifactRef.from_dict(u.artifact)))
        return out

    # -- cost budgets --
    def ReserveBudget(self, request, context):
        granted, snap = self.c.state.budget_reserve(request.run_id, request.phase, request.limit_usd,
                                                    request.amount_usd, request.reservation_id)
        return coordinator_pb2.BudgetReservation(granted=granted, reservation_id=request.reservation_id,
                                                 status=coordinator_pb2.BudgetStatus(**snap))

    def SettleBudget(self, request, context):
        snap = self.c.state.budget_settle(request.run_id, request.phase, request.reservation_id,
                                          None if request.unbilled else request.actual_usd)
        return coordinator_pb2.BudgetStatus(**snap)

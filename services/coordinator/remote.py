"""GrpcExecutor: the coordinator's client for a phase service's job protocol (services mode).

Translates status codes back into the project's exceptions, so the state machine handles a remote job
exactly like an in-process one.
"""

from __future__ import annotations

import importlib
from typing import Any

import grpc

from agentforge.v1 import job_pb2
from services.coordinator.core.executors import JobView, MetricEvent, Progress, WorkerUnavailableError
from shared import errors
from shared.rpc.convert import STATE_FROM_PROTO, dict_to_message, ref_from_proto, request_to_proto
from shared.rpc.status import EXCEPTION_FOR_STATUS
from shared.runtime.context import JobRequest

_ERROR_FOR = {
    **EXCEPTION_FOR_STATUS,
    grpc.StatusCode.UNAVAILABLE: WorkerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: WorkerUnavailableError,
}


class GrpcExecutor:
    def __init__(self, definition, channel: grpc.Channel, *, timeout_s: float = 30.0):
        self.definition = definition
        module = importlib.import_module(definition.add_servicer.__module__)
        self._stub = getattr(module, definition.grpc_service.rsplit(".", 1)[1] + "Stub")(channel)
        self._timeout = timeout_s

    def _call(self, method: str, message):
        try:
            return getattr(self._stub, method)(message, timeout=self._timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise errors.UnavailablePhaseError(self.definition.phase, self.definition.issue) from None
            cls = _ERROR_FOR.get(code, errors.AgentForgeError)
            raise cls(f"{self.definition.service} worker: {details}") from None

    @staticmethod
    def _view(status) -> JobView:
        ev = status.last_event if status.HasField("last_event") else None
        progress = None if ev is None else Progress(ev.seq, ev.stage, ev.fraction, ev.step, ev.total_steps,
                                                    ev.message)
        events = tuple(MetricEvent(e.seq, e.stage, e.step, {m.name: m.value for m in e.metrics},
                                   e.time.ToNanoseconds() / 1e9) for e in status.events)
        return JobView(job_id=status.job_id, state=STATE_FROM_PROTO[status.state],
                       metrics={m.name: m.value for m in status.metrics},
                       artifacts=tuple(ref_from_proto(a) for a in status.artifacts),
                       error=status.error, fencing_token=status.fencing_token, progress=progress,
                       events=events, more_events=status.more_events, event_log_id=status.event_log_id)

    def submit(self, request: JobRequest, spec: Any) -> JobView:
        msg = self.definition.submit_message(
            context=request_to_proto(request),
            spec=dict_to_message(spec.model_dump(mode="json"), self.definition.spec_message))
        return self._view(self._call("Submit", msg))

    def get(self, job_id: str, events_after_seq: int = 0) -> JobView:
        return self._view(self._call("Get", job_pb2.JobRef(job_id=job_id, events_after_seq=events_after_seq)))

    def cancel(self, job_id: str) -> None:
        self._call("Cancel", job_pb2.JobRef(job_id=job_id))

"""UnitService and Budget over the coordinator's gRPC API (services mode: AGENTFORGE_COORDINATOR_ADDR).

Transient failures (the coordinator restarting: UNAVAILABLE, DEADLINE_EXCEEDED) are retried with
exponential backoff; every other status becomes the project's exception. A Reserve is retried with the
same reservation id, so a retry after a lost reply never holds the money twice.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import grpc
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from agentforge.v1 import coordinator_pb2, coordinator_pb2_grpc
from shared import errors
from shared.rpc.auth import token_from_env, with_token
from shared.rpc.convert import ref_to_proto
from shared.rpc.server import channel_options
from shared.rpc.status import EXCEPTION_FOR_STATUS
from shared.runtime.units import LeasedUnit, UnitStatus
from shared.storage import ArtifactRef

ADDRESS_ENV = "AGENTFORGE_COORDINATOR_ADDR"

_ERROR_FOR = EXCEPTION_FOR_STATUS
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in _TRANSIENT


class GrpcUnitService:
    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 30.0, retry_for_s: float = 60.0):
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        self._timeout = timeout_s
        self._retry_for_s = retry_for_s

    @classmethod
    def from_env(cls, env=os.environ) -> "GrpcUnitService":
        addr = env.get(ADDRESS_ENV, "")
        if not addr:
            raise errors.InvalidSpecError("the coordinator's address is not set", field=ADDRESS_ENV)
        channel = with_token(grpc.insecure_channel(addr, options=channel_options()), token_from_env(env))
        return cls(channel)

    def _call(self, method: str, message):
        @retry(retry=retry_if_exception(_transient), wait=wait_random_exponential(multiplier=0.2, max=5),
               stop=stop_after_delay(self._retry_for_s), reraise=True)
        def once():
            return getattr(self._stub, method)(message, timeout=self._timeout)

        try:
            return once()
        except grpc.RpcError as exc:
            cls = _ERROR_FOR.get(exc.code(), errors.AgentForgeError)
            raise cls(f"coordinator {method}: {exc.details()}") from None

    def plan(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        msg = coordinator_pb2.PlanUnitsRequest(run_id=run_id, phase=phase)
        for unit_id, payload in units:
            u = msg.units.add(unit_id=unit_id)
            u.payload.update(payload)
        return self._call("PlanUnits", msg).planned

    def lease(self, run_id: str, phase: str, worker: str) -> LeasedUnit | None:
        got = self._call("LeaseUnit", coordinator_pb2.LeaseUnitRequest(run_id=run_id, phase=phase, worker=worker))
        if not got.granted:
            return None
        from google.protobuf import json_format

        return LeasedUnit(got.run_id, got.phase, got.unit.unit_id, json_format.MessageToDict(got.unit.payload),
                          got.fencing_token, 0)

    def heartbeat(self, unit: LeasedUnit) -> None:
        try:
            self._call("HeartbeatUnit", coordinator_pb2.UnitRef(run_id=unit.run_id, phase=unit.phase,
                                                                unit_id=unit.unit_id, fencing_token=unit.token))
        except errors.FailedPreconditionError as exc:  # the unit is no longer this lease's
            raise errors.StaleLeaseError(str(exc)) from None

    def complete(self, unit: LeasedUnit, artifact: dict[str, Any]) -> bool:
        ref = coordinator_pb2.UnitRef(run_id=unit.run_id, phase=unit.phase, unit_id=unit.unit_id,
                                      fencing_token=unit.token)
        try:
            return self._call("CompleteUnit", coordinator_pb2.CompleteUnitRequest(
                unit=ref, artifact=ref_to_proto(ArtifactRef.from_dict(artifact)))).newly_completed
        except errors.FailedPreconditionError as exc:
            raise errors.StaleLeaseError(str(exc)) from None

    def list_units(self, run_id: str, phase: str) -> list[UnitStatus]:
        from google.protobuf import json_format

        got = self._call("ListUnits", coordinator_pb2.ListUnitsRequest(run_id=run_id, phase=phase))
        out = []
        for u in got.units:
            artifact = None
            if u.HasField("artifact") and u.artifact.uri:
                artifact = ArtifactRef(uri=u.artifact.uri, sha256=u.artifact.sha256, size=u.artifact.size,
                                       name=u.artifact.name).to_dict()
            out.append(UnitStatus(u.unit_id, u.state, u.attempts, artifact, json_format.MessageToDict(u.payload)))
        return out

    def budget(self, run_id: str, phase: str, limit_usd: float) -> "GrpcBudget":
        return GrpcBudget(self, run_id, phase, limit_usd)


class GrpcBudget:
    def __init__(self, service: GrpcUnitService, run_id: str, phase: str, limit_usd: float):
        self._s, self.run_id, self.phase, self.limit_usd = service, run_id, phase, float(limit_usd)
        self._last: dict[str, float] = {"limit_usd": self.limit_usd, "spent_usd": 0.0, "reserved_usd": 0.0,
                                        "refused": 0}

    def _keep(self, status) -> None:
        self._last = {"limit_usd": status.limit_usd, "spent_usd": status.spent_usd,
                      "reserved_usd": status.reserved_usd, "refused": status.refused}

    def reserve(self, amount_usd: float) -> str | None:
        rid = uuid.uuid4().hex
        got = self._s._call("ReserveBudget", coordinator_pb2.ReserveBudgetRequest(
            run_id=self.run_id, phase=self.phase, limit_usd=self.limit_usd, amount_usd=float(amount_usd),
            reservation_id=rid))
        self._keep(got.status)
        return rid if got.granted else None

    def settle(self, reservation_id: str, actual_usd: float) -> None:
        self._keep(self._s._call("SettleBudget", coordinator_pb2.SettleBudgetRequest(
            run_id=self.run_id, phase=self.phase, reservation_id=reservation_id, actual_usd=float(actual_usd))))

    def release(self, reservation_id: str) -> None:
        self._keep(self._s._call("SettleBudget", coordinator_pb2.SettleBudgetRequest(
            run_id=self.run_id, phase=self.phase, reservation_id=reservation_id, unbilled=True)))

    def snapshot(self) -> dict[str, float]:
        return dict(self._last)

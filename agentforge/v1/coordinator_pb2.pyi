import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from agentforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateRunRequest(_message.Message):
    __slots__ = ("request_id", "profile", "config_yaml", "start_phase", "inputs", "reuse_finished_phases")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    START_PHASE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REUSE_FINISHED_PHASES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    config_yaml: str
    start_phase: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    reuse_finished_phases: bool
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., config_yaml: _Optional[str] = ..., start_phase: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., reuse_finished_phases: _Optional[bool] = ...) -> None: ...

class RunRef(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class PhaseRef(_message.Message):
    __slots__ = ("run_id", "phase")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, states: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ApproveGateRequest(_message.Message):
    __slots__ = ("run_id", "phase", "who", "why")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    who: str
    why: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., who: _Optional[str] = ..., why: _Optional[str] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("metric", "op", "threshold", "measured", "value", "passed", "mitigation", "may_approve")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MITIGATION_FIELD_NUMBER: _ClassVar[int]
    MAY_APPROVE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    op: str
    threshold: float
    measured: bool
    value: float
    passed: bool
    mitigation: str
    may_approve: bool
    def __init__(self, metric: _Optional[str] = ..., op: _Optional[str] = ..., threshold: _Optional[float] = ..., measured: _Optional[bool] = ..., value: _Optional[float] = ..., passed: _Optional[bool] = ..., mitigation: _Optional[str] = ..., may_approve: _Optional[bool] = ...) -> None: ...

class PhaseStatus(_message.Message):
    __slots__ = ("phase", "state", "attempt", "job_id", "fencing_token", "metrics", "artifacts", "gates", "error", "reused_from", "progress", "depends_on", "needs_accelerator")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    NEEDS_ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    phase: str
    state: str
    attempt: int
    job_id: str
    fencing_token: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    gates: _containers.RepeatedCompositeFieldContainer[GateResult]
    error: str
    reused_from: str
    progress: _common_pb2.ProgressEvent
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    needs_accelerator: bool
    def __init__(self, phase: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., job_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., gates: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ..., error: _Optional[str] = ..., reused_from: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., depends_on: _Optional[_Iterable[str]] = ..., needs_accelerator: _Optional[bool] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "request_id", "profile", "config_hash", "state", "start_phase", "phases", "error", "created_at", "updated_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    START_PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    request_id: str
    profile: str
    config_hash: str
    state: str
    start_phase: str
    phases: _containers.RepeatedCompositeFieldContainer[PhaseStatus]
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., profile: _Optional[str] = ..., config_hash: _Optional[str] = ..., state: _Optional[str] = ..., start_phase: _Optional[str] = ..., phases: _Optional[_Iterable[_Union[PhaseStatus, _Mapping]]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run_id", "seq", "kind", "phase", "message", "metrics", "gates", "state", "time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    kind: str
    phase: str
    message: str
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    gates: _containers.RepeatedCompositeFieldContainer[GateResult]
    state: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[str] = ..., phase: _Optional[str] = ..., message: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., gates: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ..., state: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AcquireLeaseRequest(_message.Message):
    __slots__ = ("holder", "run_id", "phase")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    holder: str
    run_id: str
    phase: str
    def __init__(self, holder: _Optional[str] = ..., run_id: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("granted", "lease_id", "holder", "fencing_token", "ttl_s")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    lease_id: str
    holder: str
    fencing_token: int
    ttl_s: float
    def __init__(self, granted: _Optional[bool] = ..., lease_id: _Optional[str] = ..., holder: _Optional[str] = ..., fencing_token: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("lease_id", "fencing_token")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    fencing_token: int
    def __init__(self, lease_id: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class WorkUnit(_message.Message):
    __slots__ = ("unit_id", "payload")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    payload: _struct_pb2.Struct
    def __init__(self, unit_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class PlanUnitsRequest(_message.Message):
    __slots__ = ("run_id", "phase", "units")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    units: _containers.RepeatedCompositeFieldContainer[WorkUnit]
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., units: _Optional[_Iterable[_Union[WorkUnit, _Mapping]]] = ...) -> None: ...

class PlanUnitsResponse(_message.Message):
    __slots__ = ("planned", "total")
    PLANNED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    planned: int
    total: int
    def __init__(self, planned: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class LeaseUnitRequest(_message.Message):
    __slots__ = ("run_id", "phase", "worker")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    worker: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class UnitLease(_message.Message):
    __slots__ = ("granted", "unit", "fencing_token", "ttl_s", "run_id", "phase")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    unit: WorkUnit
    fencing_token: int
    ttl_s: float
    run_id: str
    phase: str
    def __init__(self, granted: _Optional[bool] = ..., unit: _Optional[_Union[WorkUnit, _Mapping]] = ..., fencing_token: _Optional[int] = ..., ttl_s: _Optional[float] = ..., run_id: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class UnitRef(_message.Message):
    __slots__ = ("run_id", "phase", "unit_id", "fencing_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    unit_id: str
    fencing_token: int
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., unit_id: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class CompleteUnitRequest(_message.Message):
    __slots__ = ("unit", "artifact")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    unit: UnitRef
    artifact: _common_pb2.ArtifactRef
    def __init__(self, unit: _Optional[_Union[UnitRef, _Mapping]] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class CompleteUnitResponse(_message.Message):
    __slots__ = ("newly_completed",)
    NEWLY_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    newly_completed: bool
    def __init__(self, newly_completed: _Optional[bool] = ...) -> None: ...

class ListUnitsRequest(_message.Message):
    __slots__ = ("run_id", "phase")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class UnitState(_message.Message):
    __slots__ = ("unit_id", "state", "attempts", "artifact", "payload")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    state: str
    attempts: int
    artifact: _common_pb2.ArtifactRef
    payload: _struct_pb2.Struct
    def __init__(self, unit_id: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListUnitsResponse(_message.Message):
    __slots__ = ("units",)
    UNITS_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[UnitState]
    def __init__(self, units: _Optional[_Iterable[_Union[UnitState, _Mapping]]] = ...) -> None: ...

class ReserveBudgetRequest(_message.Message):
    __slots__ = ("run_id", "phase", "limit_usd", "amount_usd", "reservation_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    limit_usd: float
    amount_usd: float
    reservation_id: str
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., limit_usd: _Optional[float] = ..., amount_usd: _Optional[float] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class BudgetReservation(_message.Message):
    __slots__ = ("granted", "reservation_id", "status")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    reservation_id: str
    status: BudgetStatus
    def __init__(self, granted: _Optional[bool] = ..., reservation_id: _Optional[str] = ..., status: _Optional[_Union[BudgetStatus, _Mapping]] = ...) -> None: ...

class SettleBudgetRequest(_message.Message):
    __slots__ = ("run_id", "phase", "reservation_id", "actual_usd", "unbilled")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_USD_FIELD_NUMBER: _ClassVar[int]
    UNBILLED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: str
    reservation_id: str
    actual_usd: float
    unbilled: bool
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[str] = ..., reservation_id: _Optional[str] = ..., actual_usd: _Optional[float] = ..., unbilled: _Optional[bool] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("limit_usd", "spent_usd", "reserved_usd", "refused")
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    refused: int
    def __init__(self, limit_usd: _Optional[float] = ..., spent_usd: _Optional[float] = ..., reserved_usd: _Optional[float] = ..., refused: _Optional[int] = ...) -> None: ...

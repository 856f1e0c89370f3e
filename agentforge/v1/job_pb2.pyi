from agentforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobContext(_message.Message):
    __slots__ = ("request_id", "run_id", "phase", "fencing_token", "inputs", "seed", "device", "torch_threads", "profile", "config_hash", "evaluation")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TORCH_THREADS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    run_id: str
    phase: str
    fencing_token: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    seed: int
    device: str
    torch_threads: int
    profile: str
    config_hash: str
    evaluation: _common_pb2.EvaluationSpec
    def __init__(self, request_id: _Optional[str] = ..., run_id: _Optional[str] = ..., phase: _Optional[str] = ..., fencing_token: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., torch_threads: _Optional[int] = ..., profile: _Optional[str] = ..., config_hash: _Optional[str] = ..., evaluation: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("ok", "warnings", "spec_hash")
    OK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    spec_hash: str
    def __init__(self, ok: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., spec_hash: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "request_id", "phase", "state", "metrics", "artifacts", "error", "error_id", "resumed_from_step", "fencing_token", "last_event", "events", "more_events", "event_log_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MORE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_LOG_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request_id: str
    phase: str
    state: _common_pb2.JobState
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactRef]
    error: str
    error_id: str
    resumed_from_step: int
    fencing_token: int
    last_event: _common_pb2.ProgressEvent
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.ProgressEvent]
    more_events: bool
    event_log_id: str
    def __init__(self, job_id: _Optional[str] = ..., request_id: _Optional[str] = ..., phase: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.ArtifactRef, _Mapping]]] = ..., error: _Optional[str] = ..., error_id: _Optional[str] = ..., resumed_from_step: _Optional[int] = ..., fencing_token: _Optional[int] = ..., last_event: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.ProgressEvent, _Mapping]]] = ..., more_events: _Optional[bool] = ..., event_log_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id", "events_after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    events_after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., events_after_seq: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class ArtifactRef(_message.Message):
    __slots__ = ("uri", "sha256", "size", "name")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size: int
    name: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value", "step")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    step: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("job_id", "seq", "state", "stage", "fraction", "step", "total_steps", "message", "metrics", "time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    state: JobState
    stage: str
    fraction: float
    step: int
    total_steps: int
    message: str
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., fraction: _Optional[float] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., message: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("muon_lr", "adamw_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda", "qk_clip_threshold", "kl_coefficient")
    MUON_LR_FIELD_NUMBER: _ClassVar[int]
    ADAMW_LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_ALPHA_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    QK_CLIP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    KL_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    muon_lr: float
    adamw_lr: float
    weight_decay: float
    grokfast_alpha: float
    grokfast_lambda: float
    qk_clip_threshold: float
    kl_coefficient: float
    def __init__(self, muon_lr: _Optional[float] = ..., adamw_lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., grokfast_alpha: _Optional[float] = ..., grokfast_lambda: _Optional[float] = ..., qk_clip_threshold: _Optional[float] = ..., kl_coefficient: _Optional[float] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("gsm8k_limit", "multiple_choice_limit", "max_new_tokens", "perplexity_seq_len")
    GSM8K_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MULTIPLE_CHOICE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    gsm8k_limit: int
    multiple_choice_limit: int
    max_new_tokens: int
    perplexity_seq_len: int
    def __init__(self, gsm8k_limit: _Optional[int] = ..., multiple_choice_limit: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., perplexity_seq_len: _Optional[int] = ...) -> None: ...

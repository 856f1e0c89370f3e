from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BitNetSpec(_message.Message):
    __slots__ = ("size_category", "embedding_bits", "pack_format", "calibration_samples", "lambda_warmup_steps", "recovery_lr", "recovery_epochs", "max_layer_drop", "seed", "memory_init_bits")
    SIZE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_BITS_FIELD_NUMBER: _ClassVar[int]
    PACK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_LR_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAYER_DROP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_INIT_BITS_FIELD_NUMBER: _ClassVar[int]
    size_category: str
    embedding_bits: int
    pack_format: str
    calibration_samples: int
    lambda_warmup_steps: int
    recovery_lr: float
    recovery_epochs: int
    max_layer_drop: float
    seed: int
    memory_init_bits: int
    def __init__(self, size_category: _Optional[str] = ..., embedding_bits: _Optional[int] = ..., pack_format: _Optional[str] = ..., calibration_samples: _Optional[int] = ..., lambda_warmup_steps: _Optional[int] = ..., recovery_lr: _Optional[float] = ..., recovery_epochs: _Optional[int] = ..., max_layer_drop: _Optional[float] = ..., seed: _Optional[int] = ..., memory_init_bits: _Optional[int] = ...) -> None: ...

class BitNetSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: BitNetSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[BitNetSpec, _Mapping]] = ...) -> None: ...

from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenPrice(_message.Message):
    __slots__ = ("model", "input_per_mtok", "output_per_mtok")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    model: str
    input_per_mtok: float
    output_per_mtok: float
    def __init__(self, model: _Optional[str] = ..., input_per_mtok: _Optional[float] = ..., output_per_mtok: _Optional[float] = ...) -> None: ...

class ReasoningDataSpec(_message.Message):
    __slots__ = ("backend", "target_examples", "strategies", "val_fraction", "shard_size", "seed", "cost_limit_usd", "concurrency", "api_base", "model", "sources", "items_per_unit", "near_duplicate_threshold", "api_key_env", "prices", "max_completion_tokens", "request_timeout_s", "max_retries")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TARGET_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SHARD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COST_LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    API_BASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ENV_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    backend: str
    target_examples: int
    strategies: _containers.RepeatedScalarFieldContainer[str]
    val_fraction: float
    shard_size: int
    seed: int
    cost_limit_usd: float
    concurrency: int
    api_base: str
    model: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    items_per_unit: int
    near_duplicate_threshold: float
    api_key_env: str
    prices: _containers.RepeatedCompositeFieldContainer[TokenPrice]
    max_completion_tokens: int
    request_timeout_s: float
    max_retries: int
    def __init__(self, backend: _Optional[str] = ..., target_examples: _Optional[int] = ..., strategies: _Optional[_Iterable[str]] = ..., val_fraction: _Optional[float] = ..., shard_size: _Optional[int] = ..., seed: _Optional[int] = ..., cost_limit_usd: _Optional[float] = ..., concurrency: _Optional[int] = ..., api_base: _Optional[str] = ..., model: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ..., items_per_unit: _Optional[int] = ..., near_duplicate_threshold: _Optional[float] = ..., api_key_env: _Optional[str] = ..., prices: _Optional[_Iterable[_Union[TokenPrice, _Mapping]]] = ..., max_completion_tokens: _Optional[int] = ..., request_timeout_s: _Optional[float] = ..., max_retries: _Optional[int] = ...) -> None: ...

class ReasoningDataSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: ReasoningDataSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[ReasoningDataSpec, _Mapping]] = ...) -> None: ...

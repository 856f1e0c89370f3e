from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenizerSpec(_message.Message):
    __slots__ = ("kind", "vocab_size", "gpt2_dir")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    GPT2_DIR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    vocab_size: int
    gpt2_dir: str
    def __init__(self, kind: _Optional[str] = ..., vocab_size: _Optional[int] = ..., gpt2_dir: _Optional[str] = ...) -> None: ...

class DatasetsSpec(_message.Message):
    __slots__ = ("sources", "mirror_dir", "required", "optional", "max_examples_per_dataset", "seq_len", "val_fraction", "tokenizer", "on_bad_line")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    MIRROR_DIR_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_PER_DATASET_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_LINE_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedScalarFieldContainer[str]
    mirror_dir: str
    required: _containers.RepeatedScalarFieldContainer[str]
    optional: _containers.RepeatedScalarFieldContainer[str]
    max_examples_per_dataset: int
    seq_len: int
    val_fraction: float
    tokenizer: TokenizerSpec
    on_bad_line: str
    def __init__(self, sources: _Optional[_Iterable[str]] = ..., mirror_dir: _Optional[str] = ..., required: _Optional[_Iterable[str]] = ..., optional: _Optional[_Iterable[str]] = ..., max_examples_per_dataset: _Optional[int] = ..., seq_len: _Optional[int] = ..., val_fraction: _Optional[float] = ..., tokenizer: _Optional[_Union[TokenizerSpec, _Mapping]] = ..., on_bad_line: _Optional[str] = ...) -> None: ...

class DatasetsSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: DatasetsSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[DatasetsSpec, _Mapping]] = ...) -> None: ...

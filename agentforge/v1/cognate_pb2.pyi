from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelSpec(_message.Message):
    __slots__ = ("num_layers", "hidden_dim", "num_heads", "vocab_size", "max_seq_len", "window", "persistent_tokens", "ltm_slots", "memory_chunk_size", "n_latent_steps", "t_cycles", "n_sup", "dropout", "memory_dim")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LTM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    T_CYCLES_FIELD_NUMBER: _ClassVar[int]
    N_SUP_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_DIM_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    hidden_dim: int
    num_heads: int
    vocab_size: int
    max_seq_len: int
    window: int
    persistent_tokens: int
    ltm_slots: int
    memory_chunk_size: int
    n_latent_steps: int
    t_cycles: int
    n_sup: int
    dropout: float
    memory_dim: int
    def __init__(self, num_layers: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., num_heads: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., window: _Optional[int] = ..., persistent_tokens: _Optional[int] = ..., ltm_slots: _Optional[int] = ..., memory_chunk_size: _Optional[int] = ..., n_latent_steps: _Optional[int] = ..., t_cycles: _Optional[int] = ..., n_sup: _Optional[int] = ..., dropout: _Optional[float] = ..., memory_dim: _Optional[int] = ...) -> None: ...

class MixWeights(_message.Message):
    __slots__ = ("math", "code", "qa", "commonsense", "language")
    MATH_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    QA_FIELD_NUMBER: _ClassVar[int]
    COMMONSENSE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    math: float
    code: float
    qa: float
    commonsense: float
    language: float
    def __init__(self, math: _Optional[float] = ..., code: _Optional[float] = ..., qa: _Optional[float] = ..., commonsense: _Optional[float] = ..., language: _Optional[float] = ...) -> None: ...

class CognateVariant(_message.Message):
    __slots__ = ("name", "seed", "epochs", "act_threshold", "ltm_slots", "mix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ACT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LTM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    seed: int
    epochs: int
    act_threshold: float
    ltm_slots: int
    mix: MixWeights
    def __init__(self, name: _Optional[str] = ..., seed: _Optional[int] = ..., epochs: _Optional[int] = ..., act_threshold: _Optional[float] = ..., ltm_slots: _Optional[int] = ..., mix: _Optional[_Union[MixWeights, _Mapping]] = ...) -> None: ...

class CognateSpec(_message.Message):
    __slots__ = ("model", "variants", "init_seed", "warmup_fraction", "batch_size", "grad_accumulation", "grad_clip", "max_steps_per_epoch", "checkpoint_every_steps", "optimizer")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    INIT_SEED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUMULATION_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    variants: _containers.RepeatedCompositeFieldContainer[CognateVariant]
    init_seed: int
    warmup_fraction: float
    batch_size: int
    grad_accumulation: int
    grad_clip: float
    max_steps_per_epoch: int
    checkpoint_every_steps: int
    optimizer: _common_pb2.OptimizerSpec
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[CognateVariant, _Mapping]]] = ..., init_seed: _Optional[int] = ..., warmup_fraction: _Optional[float] = ..., batch_size: _Optional[int] = ..., grad_accumulation: _Optional[int] = ..., grad_clip: _Optional[float] = ..., max_steps_per_epoch: _Optional[int] = ..., checkpoint_every_steps: _Optional[int] = ..., optimizer: _Optional[_Union[_common_pb2.OptimizerSpec, _Mapping]] = ...) -> None: ...

class CognateSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: CognateSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[CognateSpec, _Mapping]] = ...) -> None: ...

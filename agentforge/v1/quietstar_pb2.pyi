from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuietStarSpec(_message.Message):
    __slots__ = ("baking_epochs", "baking_optimizer", "format_adherence_target", "rl_steps", "num_thoughts", "thought_length", "lookahead_tokens", "rl_optimizer", "batch_size", "seed", "baking_objective", "eval_examples", "max_new_tokens", "rl_seq_len", "anti_theater_every", "reward_threshold", "rl_batch_size")
    BAKING_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BAKING_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_ADHERENCE_TARGET_FIELD_NUMBER: _ClassVar[int]
    RL_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    THOUGHT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RL_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BAKING_OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RL_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    ANTI_THEATER_EVERY_FIELD_NUMBER: _ClassVar[int]
    REWARD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    baking_epochs: int
    baking_optimizer: _common_pb2.OptimizerSpec
    format_adherence_target: float
    rl_steps: int
    num_thoughts: int
    thought_length: int
    lookahead_tokens: int
    rl_optimizer: _common_pb2.OptimizerSpec
    batch_size: int
    seed: int
    baking_objective: str
    eval_examples: int
    max_new_tokens: int
    rl_seq_len: int
    anti_theater_every: int
    reward_threshold: float
    rl_batch_size: int
    def __init__(self, baking_epochs: _Optional[int] = ..., baking_optimizer: _Optional[_Union[_common_pb2.OptimizerSpec, _Mapping]] = ..., format_adherence_target: _Optional[float] = ..., rl_steps: _Optional[int] = ..., num_thoughts: _Optional[int] = ..., thought_length: _Optional[int] = ..., lookahead_tokens: _Optional[int] = ..., rl_optimizer: _Optional[_Union[_common_pb2.OptimizerSpec, _Mapping]] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., baking_objective: _Optional[str] = ..., eval_examples: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., rl_seq_len: _Optional[int] = ..., anti_theater_every: _Optional[int] = ..., reward_threshold: _Optional[float] = ..., rl_batch_size: _Optional[int] = ...) -> None: ...

class QuietStarSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: QuietStarSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[QuietStarSpec, _Mapping]] = ...) -> None: ...

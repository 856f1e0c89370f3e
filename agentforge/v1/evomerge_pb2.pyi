from agentforge.v1 import common_pb2 as _common_pb2
from agentforge.v1 import job_pb2 as _job_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvoMergeSpec(_message.Message):
    __slots__ = ("population_size", "generations", "elites", "seed", "dare_drop_prob", "ties_density", "mutation_scale", "diversity_reinject_below", "early_stop_improvement", "fitness_eval_batches", "fitness")
    POPULATION_SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    ELITES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DARE_DROP_PROB_FIELD_NUMBER: _ClassVar[int]
    TIES_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MUTATION_SCALE_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_REINJECT_BELOW_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOP_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    FITNESS_EVAL_BATCHES_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    population_size: int
    generations: int
    elites: int
    seed: int
    dare_drop_prob: float
    ties_density: float
    mutation_scale: float
    diversity_reinject_below: float
    early_stop_improvement: float
    fitness_eval_batches: int
    fitness: FitnessSpec
    def __init__(self, population_size: _Optional[int] = ..., generations: _Optional[int] = ..., elites: _Optional[int] = ..., seed: _Optional[int] = ..., dare_drop_prob: _Optional[float] = ..., ties_density: _Optional[float] = ..., mutation_scale: _Optional[float] = ..., diversity_reinject_below: _Optional[float] = ..., early_stop_improvement: _Optional[float] = ..., fitness_eval_batches: _Optional[int] = ..., fitness: _Optional[_Union[FitnessSpec, _Mapping]] = ...) -> None: ...

class FitnessSpec(_message.Message):
    __slots__ = ("nll", "multiple_choice", "compute", "mc_examples")
    NLL_FIELD_NUMBER: _ClassVar[int]
    MULTIPLE_CHOICE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    MC_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    nll: float
    multiple_choice: float
    compute: float
    mc_examples: int
    def __init__(self, nll: _Optional[float] = ..., multiple_choice: _Optional[float] = ..., compute: _Optional[float] = ..., mc_examples: _Optional[int] = ...) -> None: ...

class EvoMergeSubmit(_message.Message):
    __slots__ = ("context", "spec")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    context: _job_pb2.JobContext
    spec: EvoMergeSpec
    def __init__(self, context: _Optional[_Union[_job_pb2.JobContext, _Mapping]] = ..., spec: _Optional[_Union[EvoMergeSpec, _Mapping]] = ...) -> None: ...

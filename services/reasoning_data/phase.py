"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import reasoning_data_pb2, reasoning_data_pb2_grpc
from shared.config.schema import ReasoningDataConfig
from shared.runtime.phase import PhaseDefinition

PHASE = PhaseDefinition(
    phase="reasoning_data",
    service="reasoning_data",
    title="Phase 3a — reasoning data with thinking/strategy tokens",
    config_model=ReasoningDataConfig,
    grpc_service="agentforge.v1.ReasoningDataService",
    spec_message=reasoning_data_pb2.ReasoningDataSpec,
    submit_message=reasoning_data_pb2.ReasoningDataSubmit,
    add_servicer=reasoning_data_pb2_grpc.add_ReasoningDataServiceServicer_to_server,
    depends_on=('datasets',),
    issue=8,
    runner_factory=lambda: _runner(),
    background_factory=lambda store: _background(store),
)


def _runner():
    from services.reasoning_data.core.job import ReasoningDataRunner

    return ReasoningDataRunner()


def _background(store):
    from services.reasoning_data.core.job import background_worker

    return background_worker(store)

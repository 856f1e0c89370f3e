"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import evomerge_pb2, evomerge_pb2_grpc
from shared.config.schema import EvoMergeConfig
from shared.runtime.phase import PhaseDefinition


def _runner():
    # imported on first use: discovery must stay cheap (it imports every phase.py)
    from services.evomerge.core.job import EvoMergeRunner

    return EvoMergeRunner()


PHASE = PhaseDefinition(
    phase="evomerge",
    service="evomerge",
    title="Phase 2 — EvoMerge: evolved merge champion",
    config_model=EvoMergeConfig,
    grpc_service="agentforge.v1.EvoMergeService",
    spec_message=evomerge_pb2.EvoMergeSpec,
    submit_message=evomerge_pb2.EvoMergeSubmit,
    add_servicer=evomerge_pb2_grpc.add_EvoMergeServiceServicer_to_server,
    depends_on=('cognate', 'datasets'),   # the three models and their ancestor; held-out text for fitness
    issue=7,
    runner_factory=_runner,
)

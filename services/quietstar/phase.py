"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import quietstar_pb2, quietstar_pb2_grpc
from shared.config.schema import QuietStarConfig
from shared.runtime.phase import PhaseDefinition


def _runner():
    # imported on first use: discovery must stay cheap (it imports every phase.py)
    from services.quietstar.core.job import QuietStarRunner

    return QuietStarRunner()


PHASE = PhaseDefinition(
    phase="quietstar",
    service="quietstar",
    title="Phase 3b — Quiet-STaR: baking and thought RL",
    config_model=QuietStarConfig,
    grpc_service="agentforge.v1.QuietStarService",
    spec_message=quietstar_pb2.QuietStarSpec,
    submit_message=quietstar_pb2.QuietStarSubmit,
    add_servicer=quietstar_pb2_grpc.add_QuietStarServiceServicer_to_server,
    # the champion; the reasoning data; GSM8K's test split for the comparison with Phase 2
    depends_on=('evomerge', 'reasoning_data', 'datasets'),
    issue=9,
    runner_factory=_runner,
)

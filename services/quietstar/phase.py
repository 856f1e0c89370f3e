"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import quietstar_pb2, quietstar_pb2_grpc
from shared.config.schema import QuietStarConfig
from shared.runtime.phase import PhaseDefinition

PHASE = PhaseDefinition(
    phase="quietstar",
    service="quietstar",
    title="Phase 3b — Quiet-STaR: baking and thought RL",
    config_model=QuietStarConfig,
    grpc_service="agentforge.v1.QuietStarService",
    spec_message=quietstar_pb2.QuietStarSpec,
    submit_message=quietstar_pb2.QuietStarSubmit,
    add_servicer=quietstar_pb2_grpc.add_QuietStarServiceServicer_to_server,
    depends_on=('evomerge', 'reasoning_data'),
    issue=9,
    # No runner yet: Validate checks the spec, Submit answers UNIMPLEMENTED naming issue #9.
    runner_factory=None,
)

"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import evomerge_pb2, evomerge_pb2_grpc
from shared.config.schema import EvoMergeConfig
from shared.runtime.phase import PhaseDefinition

PHASE = PhaseDefinition(
    phase="evomerge",
    service="evomerge",
    title="Phase 2 — EvoMerge: evolved merge champion",
    config_model=EvoMergeConfig,
    grpc_service="agentforge.v1.EvoMergeService",
    spec_message=evomerge_pb2.EvoMergeSpec,
    submit_message=evomerge_pb2.EvoMergeSubmit,
    add_servicer=evomerge_pb2_grpc.add_EvoMergeServiceServicer_to_server,
    depends_on=('cognate',),
    issue=7,
    # No runner yet: Validate checks the spec, Submit answers UNIMPLEMENTED naming issue #7.
    runner_factory=None,
)

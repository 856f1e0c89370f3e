"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import bitnet_pb2, bitnet_pb2_grpc
from shared.config.schema import BitNetConfig
from shared.runtime.phase import PhaseDefinition

PHASE = PhaseDefinition(
    phase="bitnet",
    service="bitnet",
    title="Phase 4 — BitNet 1.58-bit compression",
    config_model=BitNetConfig,
    grpc_service="agentforge.v1.BitNetService",
    spec_message=bitnet_pb2.BitNetSpec,
    submit_message=bitnet_pb2.BitNetSubmit,
    add_servicer=bitnet_pb2_grpc.add_BitNetServiceServicer_to_server,
    depends_on=('quietstar',),
    issue=10,
    # No runner yet: Validate checks the spec, Submit answers UNIMPLEMENTED naming issue #10.
    runner_factory=None,
)

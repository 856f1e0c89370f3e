"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import bitnet_pb2, bitnet_pb2_grpc
from shared.config.schema import BitNetConfig
from shared.runtime.phase import PhaseDefinition


def _runner():
    # imported on first use: discovery must stay cheap (it imports every phase.py)
    from services.bitnet.core.job import BitNetRunner

    return BitNetRunner()


PHASE = PhaseDefinition(
    phase="bitnet",
    service="bitnet",
    title="Phase 4 — BitNet 1.58-bit compression",
    config_model=BitNetConfig,
    grpc_service="agentforge.v1.BitNetService",
    spec_message=bitnet_pb2.BitNetSpec,
    submit_message=bitnet_pb2.BitNetSubmit,
    add_servicer=bitnet_pb2_grpc.add_BitNetServiceServicer_to_server,
    # the Phase-3 model; its reasoning data (calibration, QAT, the likelihood metric); the benchmark suite
    depends_on=('quietstar', 'reasoning_data', 'datasets'),
    issue=10,
    runner_factory=_runner,
)

"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import cognate_pb2, cognate_pb2_grpc
from shared.config.schema import CognateConfig
from shared.runtime.phase import PhaseDefinition

def _runner():
    # imported on first use: discovery must stay cheap (it imports every phase.py)
    from services.cognate.core.job import CognateRunner

    return CognateRunner()


PHASE = PhaseDefinition(
    phase="cognate",
    service="cognate",
    title="Phase 1 — Cognate: three diverse TRM x Titans-MAG models",
    config_model=CognateConfig,
    grpc_service="agentforge.v1.CognateService",
    spec_message=cognate_pb2.CognateSpec,
    submit_message=cognate_pb2.CognateSubmit,
    add_servicer=cognate_pb2_grpc.add_CognateServiceServicer_to_server,
    depends_on=('datasets',),
    issue=6,
    runner_factory=_runner,
)

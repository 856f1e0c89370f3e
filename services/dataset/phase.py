"""How the runtime and the coordinator see this phase (see shared.runtime.phase)."""

from agentforge.v1 import dataset_pb2, dataset_pb2_grpc
from shared.config.schema import DatasetsConfig
from shared.runtime.phase import PhaseDefinition


def _runner():
    # imported on first use: discovery must stay cheap (it imports every phase.py)
    from services.dataset.core.runner import DatasetsRunner

    return DatasetsRunner()


PHASE = PhaseDefinition(
    phase="datasets",
    service="dataset",
    title="Phase 0 — datasets: curriculum, tokenizer, evaluation sets",
    config_model=DatasetsConfig,
    grpc_service="agentforge.v1.DatasetService",
    spec_message=dataset_pb2.DatasetsSpec,
    submit_message=dataset_pb2.DatasetsSubmit,
    add_servicer=dataset_pb2_grpc.add_DatasetServiceServicer_to_server,
    depends_on=(),
    issue=4,
    runner_factory=_runner,
)

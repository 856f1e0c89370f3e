"""The dataset service over gRPC: Validate, Submit with progress on Watch, Get -> metrics + artifact refs."""

import grpc

from agentforge.v1 import common_pb2, dataset_pb2, dataset_pb2_grpc, job_pb2
from shared.config import load_profile
from shared.rpc.auth import with_token
from shared.rpc.convert import dict_to_message
from shared.rpc.serve import start_phase_server
from shared.runtime import get_phase

TOKEN = "dataset-service-token-0123456789"


def test_submit_watch_get_over_grpc(tmp_path, datasets_dir):
    section = load_profile("ci").phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)})
    spec = dict_to_message(section.model_dump(mode="json"), dataset_pb2.DatasetsSpec)
    server, registry = start_phase_server(get_phase("datasets"), store_uri=str(tmp_path / "store"),
                                          env={"AGENTFORGE_TOKEN": TOKEN})
    stub = dataset_pb2_grpc.DatasetServiceStub(with_token(grpc.insecure_channel(server.address), TOKEN))
    try:
        check = stub.Validate(spec, timeout=10)
        assert check.ok and not check.warnings
        status = stub.Submit(dataset_pb2.DatasetsSubmit(
            context=job_pb2.JobContext(request_id="svc-1", phase="datasets", seed=3), spec=spec), timeout=10)
        events = list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=300))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        fractions = [e.fraction for e in events if e.state == common_pb2.JOB_STATE_RUNNING and e.stage]
        assert fractions == sorted(fractions) and len(fractions) > 10
        final = stub.Get(job_pb2.JobRef(job_id=status.job_id), timeout=10)
        assert {a.name for a in final.artifacts} == {"datasets", "tokenizer"}
        metrics = {m.name: m.value for m in final.metrics}
        assert metrics["datasets/required_available_fraction"] == 1.0
        assert metrics["datasets/records/train"] > 1000
        manifest = registry.store.read_manifest(registry.store.key_from_uri(
            next(a for a in final.artifacts if a.name == "datasets").uri))
        assert "data/datasets_manifest.json" in manifest.files
    finally:
        registry.shutdown()
        server.stop(None)

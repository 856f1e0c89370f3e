"""Scale-out in services mode (issue #8): the coordinator on loopback gRPC, the real reasoning-data service
(its job plans units with the coordinator and works them) and a replica's background worker that leases
units of any run — what `docker compose up --scale reasoning-data=2` runs, with nothing else changed."""

from collections import Counter

import pytest

from agentforge.v1 import coordinator_pb2
from services.reasoning_data.core.job import background_worker
from shared.config import load_profile
from shared.rpc.convert import ref_from_proto, ref_to_proto
from shared.rpc.serve import start_phase_server
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from tests.coordinator.cluster import TOKEN, Cluster

CI = load_profile("ci")


@pytest.fixture
def cluster(tmp_path, monkeypatch, datasets_dir):
    c = Cluster(tmp_path)
    # the real reasoning-data service in place of the fake one, reaching the coordinator like a container
    monkeypatch.setenv("AGENTFORGE_COORDINATOR_ADDR", c.server.address)
    monkeypatch.setenv("AGENTFORGE_TOKEN", TOKEN)
    c.kill_worker("reasoning_data")
    port = c.workers["reasoning_data"][0].port
    server, registry = start_phase_server(get_phase("reasoning_data"), port=port, store_uri=str(tmp_path / "store"),
                                          env={"AGENTFORGE_TOKEN": TOKEN})
    c.workers["reasoning_data"] = (server, registry)
    # a real datasets artifact for the run to start from
    data = JobRegistry(get_phase("datasets"), c.store)
    spec = CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)})
    dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=1), spec)
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    data.shutdown()
    c.datasets_ref = next(r for r in dj.artifacts if r.name == "datasets")
    yield c
    c.close()


def test_a_replica_and_the_job_share_the_units_of_a_run_through_the_coordinator(cluster):
    replica = background_worker(cluster.store)
    assert replica is not None  # started because AGENTFORGE_COORDINATOR_ADDR is set
    replica.idle_s = 0.01
    try:
        run_id = cluster.stub.CreateRun(coordinator_pb2.CreateRunRequest(
            profile="ci", start_phase="reasoning_data", inputs=[ref_to_proto(cluster.datasets_ref)]),
            timeout=10).run_id
        cluster.wait(lambda: cluster.phase(run_id, "reasoning_data").state in ("succeeded", "failed", "gate_failed"),
                     timeout=180, what="reasoning_data to finish")
    finally:
        replica.stop()
    ph = cluster.phase(run_id, "reasoning_data")
    assert ph.state == "succeeded", ph.error
    metrics = {m.name: m.value for m in ph.metrics}
    assert metrics["reasoning_data/total_examples"] >= CI.phases.reasoning_data.target_examples
    units = cluster.stub.ListUnits(coordinator_pb2.ListUnitsRequest(run_id=run_id, phase="reasoning_data"),
                                   timeout=10).units
    assert units and all(u.state == "done" for u in units)
    assert metrics["reasoning_data/units"] == len(units)
    # each unit's output was written by the worker that held its live lease; the replica did its share
    by_worker = Counter(cluster.store.load_json(ref_from_proto(u.artifact), "report.json")["worker"] for u in units)
    assert len(by_worker) == 2 and by_worker[replica.name] == replica.completed >= 1

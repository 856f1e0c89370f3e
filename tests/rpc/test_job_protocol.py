"""The job protocol end to end over gRPC with a fake phase core: Submit/Watch/Get/Cancel, health while a
job runs, resume after a worker restart, message limits, unexpected errors, and no secrets in logs."""

import dataclasses
import logging
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentforge.v1 import common_pb2, dataset_pb2, dataset_pb2_grpc, job_pb2
from shared.config import load_profile
from shared.rpc.auth import with_token
from shared.rpc.convert import dict_to_message
from shared.rpc.serve import start_phase_server
from shared.runtime import get_phase
from tests.fakes import CountingRunner, reference_state

TOKEN = "job-protocol-token-0123456789"
SPEC = dict_to_message(load_profile("ci").phases.datasets.model_dump(mode="json"), dataset_pb2.DatasetsSpec)


class Exploding:
    def validate(self, spec):
        return []

    def run(self, ctx):
        raise KeyError(f"secret internals {TOKEN}")


def start(tmp_path, runner, env_extra=None):
    definition = dataclasses.replace(get_phase("dataset"), runner_factory=lambda: runner)
    env = {"AGENTFORGE_TOKEN": TOKEN, **(env_extra or {})}
    server, registry = start_phase_server(definition, store_uri=str(tmp_path / "store"), env=env)
    channel = with_token(grpc.insecure_channel(server.address), TOKEN)
    return server, registry, channel, dataset_pb2_grpc.DatasetServiceStub(channel)


def submit(stub, request_id="r1"):
    return stub.Submit(dataset_pb2.DatasetsSubmit(
        context=job_pb2.JobContext(request_id=request_id, phase="datasets"), spec=SPEC), timeout=10)


def test_submit_watch_get_and_health_while_running(tmp_path):
    gate = threading.Event()
    runner = CountingRunner(steps=4, gate=gate)
    server, registry, channel, stub = start(tmp_path, runner)
    status = submit(stub)
    assert status.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
    assert runner.started.wait(10)
    # the job holds its worker thread; health and Get still answer
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
    assert stub.Get(job_pb2.JobRef(job_id=status.job_id), timeout=2).state == common_pb2.JOB_STATE_RUNNING
    assert submit(stub).job_id == status.job_id  # idempotent over the wire too
    gate.set()
    events = list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=30))
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert any(m.name == "train/loss" for e in events for m in e.metrics)
    final = stub.Get(job_pb2.JobRef(job_id=status.job_id), timeout=5)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED
    (artifact,) = final.artifacts
    assert artifact.name == "result" and len(artifact.sha256) == 64 and artifact.size > 0
    assert {m.name: m.value for m in final.metrics}["final/value"] == pytest.approx(float(reference_state(4)[0]))
    registry.shutdown()
    server.stop(None)


def test_cancel_over_grpc(tmp_path):
    gate = threading.Event()
    runner = CountingRunner(steps=4, gate=gate)
    server, registry, channel, stub = start(tmp_path, runner)
    status = submit(stub, "to-cancel")
    assert runner.started.wait(10)
    stub.Cancel(job_pb2.JobRef(job_id=status.job_id), timeout=5)
    events = list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=30))
    assert events[-1].state == common_pb2.JOB_STATE_CANCELLED
    registry.shutdown()
    server.stop(None)


def test_restarted_worker_resumes_the_same_request(tmp_path):
    server, registry, channel, stub = start(tmp_path, CountingRunner(steps=9, checkpoint_every=2, crash_at=6))
    first = submit(stub, "long-job")
    events = list(stub.Watch(job_pb2.WatchRequest(job_id=first.job_id), timeout=30))
    assert events[-1].state == common_pb2.JOB_STATE_FAILED
    registry.shutdown()
    server.stop(None)
    server, registry, channel, stub = start(tmp_path, CountingRunner(steps=9, checkpoint_every=2))
    again = submit(stub, "long-job")
    list(stub.Watch(job_pb2.WatchRequest(job_id=again.job_id), timeout=30))
    final = stub.Get(job_pb2.JobRef(job_id=again.job_id), timeout=5)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED and final.resumed_from_step == 4
    registry.shutdown()
    server.stop(None)


def test_unexpected_error_is_internal_with_an_id_and_no_traceback_or_secret(tmp_path, caplog):
    server, registry, channel, stub = start(tmp_path, Exploding())
    status = submit(stub, "boom")
    events = list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=30))
    final = stub.Get(job_pb2.JobRef(job_id=status.job_id), timeout=5)
    assert events[-1].state == common_pb2.JOB_STATE_FAILED
    assert final.error_id and final.error_id in final.error
    assert "Traceback" not in final.error and TOKEN not in final.error and "KeyError" not in final.error
    registry.shutdown()
    server.stop(None)


def test_oversized_message_is_resource_exhausted(tmp_path):
    server, registry, channel, stub = start(tmp_path, CountingRunner(), {"AGENTFORGE_MAX_MESSAGE_BYTES": "4096"})
    big = dataset_pb2.DatasetsSpec()
    big.CopyFrom(SPEC)
    big.required.extend(["x" * 100] * 100)
    with pytest.raises(grpc.RpcError) as info:
        stub.Validate(big, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    registry.shutdown()
    server.stop(None)


def test_secrets_never_reach_the_logs(tmp_path, caplog):
    from shared.telemetry.logs import SecretRedactingFilter, register_secret

    register_secret(TOKEN)
    handler_filter = SecretRedactingFilter()
    caplog.handler.addFilter(handler_filter)
    caplog.set_level(logging.DEBUG)
    server, registry, channel, stub = start(tmp_path, Exploding())
    status = submit(stub, "leaky")
    list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=30))
    bad = with_token(grpc.insecure_channel(server.address), TOKEN[::-1])
    with pytest.raises(grpc.RpcError):
        dataset_pb2_grpc.DatasetServiceStub(bad).Validate(SPEC, timeout=5)
    registry.shutdown()
    server.stop(None)
    text = caplog.text
    assert "error id" in text  # the failure was logged…
    assert TOKEN not in text   # …without the token, even though the exception message contained it

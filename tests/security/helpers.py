"""Shared by the security tests: servers built by the real builders (the ones `agentforge serve` uses),
raw calls to any gRPC method by name, and a store on the session's SeaweedFS server."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.coordinator.app import address_env, start_coordinator_server
from shared.rpc.auth import with_token
from shared.rpc.serve import start_phase_server
from shared.runtime.phase import discover_phases
from shared.storage import RetryPolicy, S3Store

TOKEN = "security-test-token-5f0c3e9a7b21d864"
PHASES = discover_phases()
SERVERS = ["coordinator", *PHASES]      # every server the deployment runs
HEALTH = "grpc.health.v1.Health"
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.1, max_backoff_s=0.5, jitter_s=0.1)


def start_server(name: str, tmp_path: Path, env: dict[str, str], port: int = 0):
    """(RunningServer, close) for the coordinator or one phase service, with `env` as its environment."""
    if name == "coordinator":
        # the phase services' addresses must be set; nothing is dialled until a run needs them
        addresses = {address_env(d.service): "127.0.0.1:9" for d in PHASES.values()}
        server, coordinator = start_coordinator_server(
            port=port, state_path=str(tmp_path / "coordinator.sqlite"), store_uri=str(tmp_path / "store"),
            env={**addresses, **env})

        def close() -> None:
            coordinator.stop()
            server.stop(None)
            coordinator.state.close()
        return server, close
    store_uri = env.get("AGENTFORGE_STORE") or str(tmp_path / "store")
    server, registry = start_phase_server(PHASES[name], port=port, store_uri=store_uri, env=env)

    def close() -> None:
        registry.shutdown(cancel_running=True, wait=False)
        server.stop(None)
    return server, close


def listed_services(channel: grpc.Channel) -> list[str]:
    """The services a server exposes, as its reflection service lists them (needs the token)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(with_token(channel, TOKEN))
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return sorted(s.name for r in replies for s in r.list_services_response.service)


def methods(service: str) -> list[tuple[str, type, bool, bool]]:
    """(path, request class, client streaming, server streaming) of every method of a service."""
    desc = descriptor_pool.Default().FindServiceByName(service)
    return [(f"/{service}/{m.name}", message_factory.GetMessageClass(m.input_type), m.client_streaming,
             m.server_streaming) for m in desc.methods]


def invoke(channel: grpc.Channel, path: str, request, client_streaming: bool = False,
           server_streaming: bool = False, timeout: float = 5.0):
    """Call any method with one request message; responses come back as raw bytes."""
    ser = type(request).SerializeToString
    if client_streaming and server_streaming:
        return list(channel.stream_stream(path, request_serializer=ser)(iter([request]), timeout=timeout))
    if client_streaming:
        return channel.stream_unary(path, request_serializer=ser)(iter([request]), timeout=timeout)
    if server_streaming:
        return list(channel.unary_stream(path, request_serializer=ser)(request, timeout=timeout))
    return channel.unary_unary(path, request_serializer=ser)(request, timeout=timeout)


def new_bucket() -> str:
    return f"sec-{uuid.uuid4().hex[:16]}"


def s3_store(seaweed, bucket: str) -> S3Store:
    return S3Store(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, bucket, retry=FAST_RETRY)


def s3_env(seaweed, bucket: str) -> dict[str, str]:
    """What a service's environment holds to use the bucket (compose and k8s set the same variables)."""
    return {"AGENTFORGE_STORE": f"s3://{bucket}", "AGENTFORGE_S3_ENDPOINT": seaweed.endpoint,
            "AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}


def stub_for(definition, channel: grpc.Channel):
    """The generated stub of a phase service."""
    module = __import__(definition.add_servicer.__module__, fromlist=["x"])
    return getattr(module, definition.grpc_service.rsplit(".", 1)[1] + "Stub")(channel)


def ci_spec(definition):
    from shared.config import load_profile
    from shared.rpc.convert import dict_to_message

    section = getattr(load_profile("ci").phases, definition.phase)
    return dict_to_message(section.model_dump(mode="json"), definition.spec_message)


def run_job(definition, channel: grpc.Channel, request_id: str, inputs, timeout: float = 60.0):
    """Submit a ci-profile job with these input refs over gRPC, follow Watch to the end; (status, events)."""
    from agentforge.v1 import job_pb2
    from shared.rpc.convert import ref_to_proto

    stub = stub_for(definition, channel)
    submit = definition.submit_message(
        context=job_pb2.JobContext(request_id=request_id, phase=definition.phase,
                                   inputs=[ref_to_proto(r) for r in inputs]),
        spec=ci_spec(definition))
    status = stub.Submit(submit, timeout=10)
    events = list(stub.Watch(job_pb2.WatchRequest(job_id=status.job_id), timeout=timeout))
    return stub.Get(job_pb2.JobRef(job_id=status.job_id), timeout=10), events

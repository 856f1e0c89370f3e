"""In-process contract tests of every phase service: a real gRPC server on a free loopback port."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentforge.v1 import job_pb2
from shared.config import load_profile
from shared.rpc.auth import with_token
from shared.rpc.convert import dict_to_message
from shared.rpc.serve import start_phase_server
from shared.runtime.phase import discover_phases

TOKEN = "test-token-0123456789abcdef"
PHASES = discover_phases()


def stub_class(definition):
    module = __import__(definition.add_servicer.__module__, fromlist=["x"])
    return getattr(module, definition.grpc_service.rsplit(".", 1)[1] + "Stub")


@pytest.fixture(params=list(PHASES), ids=list(PHASES))
def service(request, tmp_path):
    definition = PHASES[request.param]
    env = {"AGENTFORGE_TOKEN": TOKEN, "AGENTFORGE_REQUIRE_AUTH": "1"}
    server, registry = start_phase_server(definition, store_uri=str(tmp_path / "store"), env=env)
    channel = grpc.insecure_channel(server.address)
    yield definition, server, channel
    channel.close()
    registry.shutdown()
    server.stop(None)


def spec_for(definition, profile="ci"):
    section = getattr(load_profile(profile).phases, definition.phase)
    return dict_to_message(section.model_dump(mode="json"), definition.spec_message)


def test_health_answers_without_a_token(service):
    definition, server, channel = service
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", definition.grpc_service):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_calls_without_or_with_a_wrong_token_are_unauthenticated(service):
    definition, server, channel = service
    for ch in (channel, with_token(channel, "wrong-token-0123456789")):
        stub = stub_class(definition)(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Validate(spec_for(definition), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Watch(job_pb2.WatchRequest(job_id="x"), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_lists_the_service(service):
    definition, server, channel = service
    stub = reflection_pb2_grpc.ServerReflectionStub(with_token(channel, TOKEN))
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert definition.grpc_service in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize("profile", ["ci", "tiny", "default"])
def test_validate_accepts_every_profile_and_states_availability(service, profile):
    definition, server, channel = service
    stub = stub_class(definition)(with_token(channel, TOKEN))
    reply = stub.Validate(spec_for(definition, profile), timeout=5)
    assert reply.ok and len(reply.spec_hash) == 64
    if not definition.available:
        assert any(f"issue #{definition.issue}" in w for w in reply.warnings)


def test_validate_names_the_bad_field(service):
    definition, server, channel = service
    stub = stub_class(definition)(with_token(channel, TOKEN))
    spec = spec_for(definition)
    field = next(f for f in spec.DESCRIPTOR.fields if f.type == f.TYPE_INT32 and not f.is_repeated)
    setattr(spec, field.name, -5)
    with pytest.raises(grpc.RpcError) as info:
        stub.Validate(spec, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"spec.{field.name}" in info.value.details()


def _nested_fields(definition):
    return [f for f in definition.spec_message.DESCRIPTOR.fields if f.type == f.TYPE_MESSAGE and not f.is_repeated]


@pytest.mark.parametrize("phase", [p for p, d in PHASES.items() if _nested_fields(d)])
def test_missing_nested_message_is_invalid_argument(phase, tmp_path):
    definition = PHASES[phase]
    nested = _nested_fields(definition)
    env = {"AGENTFORGE_TOKEN": TOKEN}
    server, registry = start_phase_server(definition, store_uri=str(tmp_path / "store"), env=env)
    channel = grpc.insecure_channel(server.address)
    stub = stub_class(definition)(with_token(channel, TOKEN))
    spec = spec_for(definition)
    spec.ClearField(nested[0].name)
    with pytest.raises(grpc.RpcError) as info:
        stub.Validate(spec, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert nested[0].name in info.value.details()
    channel.close()
    registry.shutdown()
    server.stop(None)


def test_submit_of_an_unimplemented_phase_is_unimplemented_and_get_unknown_is_not_found(service):
    definition, server, channel = service
    stub = stub_class(definition)(with_token(channel, TOKEN))
    submit = definition.submit_message(context=job_pb2.JobContext(request_id="r1", phase=definition.phase),
                                       spec=spec_for(definition))
    if not definition.available:
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(submit, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert f"issue #{definition.issue}" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(job_pb2.JobRef(job_id="no-such-job"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.Cancel(job_pb2.JobRef(job_id="no-such-job"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

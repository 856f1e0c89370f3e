"""Authentication on every server the deployment runs (the coordinator and the six phase services, built by
the same functions `agentforge serve` calls, with AGENTFORGE_REQUIRE_AUTH=1): every method of every
service but health refuses a call without the token or with a wrong one; health answers either way; a
server that requires auth and has no usable token does not start."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.errors import InvalidSpecError
from shared.rpc.auth import TOKEN_ENV, with_token
from tests.security.helpers import HEALTH, SERVERS, TOKEN, invoke, listed_services, methods, start_server

AUTH_ENV = {TOKEN_ENV: TOKEN, "AGENTFORGE_REQUIRE_AUTH": "1"}


@pytest.fixture(params=SERVERS)
def served(request, tmp_path):
    server, close = start_server(request.param, tmp_path, AUTH_ENV)
    channel = grpc.insecure_channel(server.address)
    yield request.param, server, channel
    channel.close()
    close()


class RawAuthorization(grpc.UnaryUnaryClientInterceptor):
    """Sends an `authorization` header exactly as given (with_token always adds the Bearer prefix)."""

    def __init__(self, value: str):
        self.value = value

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_Details(details, [("authorization", self.value)]), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata):
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression, self.metadata = base.wait_for_ready, base.compression, metadata


def _request_class(path: str):
    service = path.split("/")[1]
    return {m[0]: m[1] for m in methods(service)}[path]


def test_every_method_of_every_service_refuses_a_missing_or_wrong_token(served):
    name, server, channel = served
    services = listed_services(channel)
    assert set(server.services) <= set(services) and HEALTH in services
    protected = [(service, m) for service in services if service != HEALTH for m in methods(service)]
    assert len(protected) >= len(server.services) * 5  # the job protocol alone has five methods
    for label, ch in (("no token", channel), ("wrong token", with_token(channel, TOKEN[::-1]))):
        for service, (path, request_cls, client_streaming, server_streaming) in protected:
            with pytest.raises(grpc.RpcError) as info:
                invoke(ch, path, request_cls(), client_streaming, server_streaming)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, f"{name}: {path} with {label}"
            assert "bearer token" in info.value.details() and TOKEN not in info.value.details()


def test_the_right_token_is_let_through(served):
    # control for the test above: with the token, the same calls reach the servicer and get its answers
    name, server, channel = served
    path = "/agentforge.v1.CoordinatorService/GetRun" if name == "coordinator" else f"/{server.services[0]}/Get"
    with pytest.raises(grpc.RpcError) as info:
        invoke(with_token(channel, TOKEN), path, _request_class(path)())
    # the servicer's own answer to an empty id: no such job (phase services), a missing run id (coordinator)
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_health_answers_without_a_token_and_with_a_wrong_one(served):
    # tests/rpc/test_phase_services.py checks Check without a token on the phase services; this adds the
    # coordinator, a wrong token (probes must not depend on one) and the Watch stream
    name, server, channel = served
    for ch in (channel, with_token(channel, "not-the-token-" + "x" * 16)):
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", *server.services):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()


@pytest.mark.parametrize("header", [
    "",                                   # empty
    TOKEN,                                # the token without the scheme
    f"bearer {TOKEN}",                    # wrong case of the scheme
    f"Bearer  {TOKEN}",                   # two spaces
    f"Basic {TOKEN}",                     # another scheme
    f"Bearer {TOKEN[:-1]}",               # a prefix of the token
    f"Bearer {TOKEN}x",                   # the token plus a character
    f"Bearer {TOKEN.upper()}",            # case folded
    f"Bearer {TOKEN} ",                   # trailing space
])
def test_only_the_exact_bearer_header_is_accepted(header, tmp_path):
    server, close = start_server("datasets", tmp_path, AUTH_ENV)
    channel = grpc.insecure_channel(server.address)
    try:
        path = f"/{server.services[0]}/Get"
        request_cls = _request_class(path)
        with pytest.raises(grpc.RpcError) as info:
            invoke(grpc.intercept_channel(channel, RawAuthorization(header)), path, request_cls())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            invoke(grpc.intercept_channel(channel, RawAuthorization(f"Bearer {TOKEN}")), path, request_cls())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # the exact header gets through to the servicer
    finally:
        channel.close()
        close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("name", SERVERS)
@pytest.mark.parametrize("token", ["", "short-token"], ids=["no-token", "short-token"])
def test_a_server_that_requires_auth_without_a_usable_token_does_not_start(name, token, tmp_path):
    # tests/rpc/test_serve_process.py checks the `serve` command's exit code and message for one service
    port = _free_port()
    env = {"AGENTFORGE_REQUIRE_AUTH": "1", **({TOKEN_ENV: token} if token else {})}
    with pytest.raises(InvalidSpecError) as info:
        start_server(name, tmp_path, env, port=port)
    assert info.value.field == TOKEN_ENV
    message = str(info.value)
    assert TOKEN_ENV in message and ("no token" in message or "at least 16 characters" in message)
    assert not token or token not in message  # a token that was set is never echoed
    assert _port_is_free(port)  # nothing is listening

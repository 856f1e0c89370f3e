"""Message size limits (AGENTFORGE_MAX_MESSAGE_BYTES, shared/rpc/server.py): an oversized request gets
RESOURCE_EXHAUSTED on the coordinator and on a phase service, unary or streaming, with or without a token,
and the server goes on serving; without the variable the limit is the documented 16 MiB, not gRPC's 4 MiB.
(tests/rpc/test_job_protocol.py checks one oversized Validate on a phase service.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentforge.v1 import coordinator_pb2, job_pb2
from shared.rpc.auth import TOKEN_ENV, with_token
from shared.rpc.server import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_ENV
from tests.security.helpers import TOKEN, invoke, start_server

LIMIT = 4096
# server -> (method, an oversized request to it, whether it streams its answer; a normal request, its method,
# and the servicer's own answer to it)
CASES = {
    "coordinator": ("/agentforge.v1.CoordinatorService/CreateRun",
                    coordinator_pb2.CreateRunRequest(profile="ci", request_id="x" * (2 * LIMIT)), False,
                    coordinator_pb2.RunRef(run_id="no-such-run"), "/agentforge.v1.CoordinatorService/GetRun",
                    grpc.StatusCode.NOT_FOUND),
    "evomerge": ("/agentforge.v1.EvoMergeService/Watch", job_pb2.WatchRequest(job_id="x" * (2 * LIMIT)), True,
                 job_pb2.JobRef(job_id="no-such-job"), "/agentforge.v1.EvoMergeService/Get",
                 grpc.StatusCode.NOT_FOUND),
}


@pytest.mark.parametrize("name", list(CASES))
def test_oversized_requests_are_resource_exhausted_and_the_server_keeps_serving(name, tmp_path):
    path, big, streaming, small, small_path, small_code = CASES[name]
    assert big.ByteSize() > LIMIT
    server, close = start_server(name, tmp_path, {TOKEN_ENV: TOKEN, "AGENTFORGE_REQUIRE_AUTH": "1",
                                                  MAX_MESSAGE_ENV: str(LIMIT)})
    try:
        plain = grpc.insecure_channel(server.address)
        authed = with_token(plain, TOKEN)

        def oversized(channel) -> grpc.StatusCode:
            try:
                invoke(channel, path, big, server_streaming=streaming)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert oversized(authed) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # an oversized call without a token is refused too (by size or by auth); it never gets through
        assert oversized(plain) in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED)
        with ThreadPoolExecutor(8) as pool:  # a burst of them, more than the server's handler threads
            codes = list(pool.map(lambda _: oversized(authed), range(32)))
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # still serving: health, and a normal call answered by the servicer
        reply = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            invoke(authed, small_path, small)
        assert info.value.code() == small_code
        plain.close()
    finally:
        close()


def test_without_the_variable_the_limit_is_16_mib(tmp_path):
    assert DEFAULT_MAX_MESSAGE_BYTES == 16 * 2**20
    server, close = start_server("evomerge", tmp_path, {TOKEN_ENV: TOKEN})
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
        # above gRPC's built-in 4 MiB default, below ours: accepted (the health service answers: unknown name)
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="x" * (5 * 2**20)), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="x" * (DEFAULT_MAX_MESSAGE_BYTES + 1)), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        close()

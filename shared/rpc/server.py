"""Building and running a gRPC server the same way for every service.

Every server gets: the exception→status interceptor, the bearer-token interceptor (when a token is set;
required when `require_auth`), message size limits, the gRPC health service (no token needed) and server
reflection. Handlers run on a thread pool; phase jobs run on their own threads (shared.runtime).
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.errors import InvalidSpecError
from shared.rpc.auth import TOKEN_ENV, BearerTokenInterceptor
from shared.rpc.status import ErrorMappingInterceptor

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20
MAX_MESSAGE_ENV = "AGENTFORGE_MAX_MESSAGE_BYTES"


def max_message_bytes(env=os.environ) -> int:
    raw = env.get(MAX_MESSAGE_ENV, "")
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise InvalidSpecError(f"must be an integer number of bytes, got {raw!r}", field=MAX_MESSAGE_ENV) from None
    if value < 1024:
        raise InvalidSpecError(f"must be >= 1024, got {value}", field=MAX_MESSAGE_ENV)
    return value


def channel_options(limit: int | None = None) -> list[tuple[str, Any]]:
    limit = limit or max_message_bytes()
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer to put on a server: the generated add_*_to_server function and full service name."""

    add: Callable[[Any, grpc.Server], None]
    servicer: Any
    full_name: str


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    services: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.services):
            self.health.set(name, status)

    def stop(self, grace: float | None = 1.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()


def build_server(bindings: Sequence[ServiceBinding], *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, require_auth: bool = False, max_workers: int = 8,
                 max_message: int | None = None) -> RunningServer:
    """Create, bind and start a server. port=0 picks a free port (tests)."""
    if require_auth and not token:
        raise InvalidSpecError("authentication is required but no token is set", field=TOKEN_ENV)
    interceptors: list[grpc.ServerInterceptor] = []
    if token:
        interceptors.append(BearerTokenInterceptor(token))
    interceptors.append(ErrorMappingInterceptor())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                         interceptors=interceptors, options=channel_options(max_message))
    names = []
    for binding in bindings:
        binding.add(binding.servicer, server)
        names.append(binding.full_name)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise InvalidSpecError(f"cannot bind {host}:{port} (in use or not permitted)", field="port")
    server.start()
    running = RunningServer(server=server, port=bound, health=health_servicer, services=tuple(names))
    running.set_serving(True)
    log.info("serving %s on %s:%d (auth %s)", ", ".join(names), host, bound, "on" if token else "off")
    return running

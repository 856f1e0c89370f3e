"""`agentforge health`: one call to the standard gRPC health service (grpc.health.v1 Health/Check).

  agentforge health [--address HOST:PORT] [--service NAME] [--timeout S]

What the images' HEALTHCHECK runs (services/*/Dockerfile). Exit 0 only when the server answers SERVING;
1 when it answers anything else, does not know the service, or cannot be reached within --timeout. Never 2:
Docker reserves that exit status of a health check. No token is needed: every server exempts the health
service from bearer-token auth (shared/rpc/auth.py), so a probe carries no secret.
"""

from __future__ import annotations

import os
import sys

EXIT_SERVING, EXIT_UNHEALTHY = 0, 1


def default_address(env=os.environ) -> str:
    """The server in this container: loopback on the port `agentforge serve` listens on."""
    return f"127.0.0.1:{env.get('AGENTFORGE_PORT') or '50051'}"


def check(address: str, service: str = "", timeout: float = 5.0) -> tuple[bool, str]:
    """(serving?, one line saying what the server answered or why it could not be asked)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return False, f"{address}: unknown service {service!r}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False, f"{address}: unreachable ({code.name}: {exc.details()})"
            return False, f"{address}: health check failed ({code.name}: {exc.details()})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    what = f"{address}{' ' + service if service else ''}: {status}"
    return reply.status == health_pb2.HealthCheckResponse.SERVING, what


def cmd_health(args) -> int:
    if args.timeout <= 0:
        print(f"error: --timeout must be > 0 seconds, got {args.timeout}", file=sys.stderr)
        return EXIT_UNHEALTHY
    serving, what = check(args.address, args.service, args.timeout)
    print(what, file=sys.stdout if serving else sys.stderr)
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


def add_health_parser(sub) -> None:
    p = sub.add_parser("health", help="check a server through the gRPC health service (exit 0 when SERVING)")
    p.add_argument("--address", default=default_address(),
                   help="HOST:PORT (default 127.0.0.1:$AGENTFORGE_PORT, or :50051)")
    p.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    p.set_defaults(func=cmd_health)

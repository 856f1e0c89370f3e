"""Bearer-token authentication for every server except the health service (so probes need no secret).

The token comes from the environment (AGENTFORGE_TOKEN). Comparison is constant-time. Compose and
Kubernetes always set a token; embedded mode and local tests may run without one.
"""

from __future__ import annotations

import hmac
import os

import grpc

from shared.errors import InvalidSpecError

TOKEN_ENV = "AGENTFORGE_TOKEN"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def token_from_env(env=os.environ) -> str | None:
    token = env.get(TOKEN_ENV, "")
    return token or None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str):
        if not token or len(token) < 16:
            raise InvalidSpecError(f"must be at least 16 characters, got {len(token or '')}", field=TOKEN_ENV)
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                break
        if presented and hmac.compare_digest(presented, self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        why = "missing bearer token" if not presented else "invalid bearer token"
        return _denying_handler(handler, f"{why}: send 'authorization: Bearer <{TOKEN_ENV}>' metadata")


def _denying_handler(handler, message: str):
    """A handler of the same kind (unary/stream request, unary/stream response) that aborts."""

    def unary(request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def stream(request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this a generator

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(stream)


class _AuthMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """A channel that sends the bearer token on every call (unchanged when token is None)."""
    return grpc.intercept_channel(channel, _AuthMetadata(token)) if token else channel

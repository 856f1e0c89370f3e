"""The one mapping from exceptions to gRPC status codes, applied to every server by an interceptor.

A servicer raises domain exceptions (shared.errors); clients get a stable status code and a message a
person can act on. Anything unexpected becomes INTERNAL with an error id that also appears in the server
log next to the traceback — the traceback itself never crosses the wire.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

import grpc

from shared import errors

log = logging.getLogger(__name__)

# Order matters: the first matching class wins (subclasses before their bases).
STATUS_FOR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidSpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.StaleLeaseError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnsafeFormatError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnavailablePhaseError, grpc.StatusCode.UNIMPLEMENTED),
    (errors.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.InsufficientStorageError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.StorageError, grpc.StatusCode.UNAVAILABLE),
    (errors.AcceleratorUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (errors.AgentForgeError, grpc.StatusCode.FAILED_PRECONDITION),
)


# The client's way back: a status code to the project's exception (callers add their own, e.g. UNAVAILABLE).
EXCEPTION_FOR_STATUS: dict[grpc.StatusCode, type[errors.AgentForgeError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidSpecError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception; unexpected ones get INTERNAL and an error id (logged)."""
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            return code, str(exc)
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error (error id %s)", error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (error id {error_id}); see the server log"


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    context.abort(code, message)


def _wrap_unary(fn: Callable) -> Callable:
    def handler(request: Any, context: grpc.ServicerContext):
        try:
            return fn(request, context)
        except Exception as exc:  # noqa: BLE001 - the RPC boundary
            if _is_abort(exc, context):
                raise
            _abort(context, exc)

    return handler


def _wrap_stream(fn: Callable) -> Callable:
    def handler(request: Any, context: grpc.ServicerContext):
        try:
            yield from fn(request, context)
        except Exception as exc:  # noqa: BLE001 - the RPC boundary
            if _is_abort(exc, context):
                raise
            _abort(context, exc)

    return handler


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """context.abort() raises a plain Exception after setting the code; let it through untouched."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and code is not grpc.StatusCode.OK and type(exc) is Exception


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Wraps every unary-unary and unary-stream handler with the exception mapping."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

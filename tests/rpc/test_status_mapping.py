"""The one exception -> status code mapping."""

import logging

import grpc
import pytest

from shared import errors
from shared.rpc.status import status_for

CASES = [
    (errors.InvalidSpecError("bad", field="spec.x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConfigError("bad", field="a.b", source="f.yaml"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError("no artifact"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError("dup"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPreconditionError("state"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StaleLeaseError("old token"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnsafeFormatError("pickle"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnavailablePhaseError("cognate", 6), grpc.StatusCode.UNIMPLEMENTED),
    (errors.AuthenticationError("token"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhaustedError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InsufficientStorageError("disk"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.IntegrityError("hash"), grpc.StatusCode.DATA_LOSS),
    (errors.StorageError("s3 down"), grpc.StatusCode.UNAVAILABLE),
    (errors.AcceleratorUnavailableError("no gpu"), grpc.StatusCode.UNAVAILABLE),
    (errors.CancelledError("stop"), grpc.StatusCode.CANCELLED),
]


@pytest.mark.parametrize("exc,code", CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_class_maps_to_one_code_and_keeps_its_message(exc, code):
    got, message = status_for(exc)
    assert got == code and message == str(exc)


def test_every_error_class_is_mapped_explicitly():
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AgentForgeError)}
    covered = {type(e) for e, _ in CASES} | {errors.AgentForgeError}
    assert classes <= covered, f"unmapped error classes: {classes - covered}"


def test_unexpected_errors_are_internal_with_an_id_and_the_traceback_only_in_the_log(caplog):
    caplog.set_level(logging.ERROR)
    code, message = status_for(ZeroDivisionError("secret detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "error id" in message and "secret detail" not in message and "ZeroDivision" not in message
    error_id = message.split("error id ")[1].split(")")[0]
    assert error_id in caplog.text and "ZeroDivisionError" in caplog.text

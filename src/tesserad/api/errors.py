"""The one table from domain errors to gRPC status codes, and the trailers some of them add."""

from __future__ import annotations

import grpc

from tesserad import errors

STATUS_BY_ERROR: dict[type[errors.TesseraError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_for(error: errors.TesseraError) -> grpc.StatusCode:
    """The status of the nearest class in the table (subclasses inherit their parent's)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


# The version a request was routed to whose signature refused it (RefusedBySignature), by number:
# a client fixes the request for that version without parsing the message, whichever alias or
# deployment chose it. A daemon from before it sends none.
REFUSING_VERSION_HEADER = "tessera-refusing-version"


def trailers_for(error: errors.TesseraError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that tells a client what `error`'s message says in words."""
    if isinstance(error, errors.RefusedBySignature) and error.version > 0:
        return ((REFUSING_VERSION_HEADER, str(error.version)),)
    return ()

"""Domain errors: what went wrong, in words a user can act on.

Domain code raises these; the API layer maps each class to one gRPC status code in one
table (`tesserad.api.errors`). Nothing here knows about gRPC. The message is sent to the
client as it is, so it must say what to fix and never carry internal detail.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

# A message travels in a response header, percent-encoded where not plain ASCII (up to 3 bytes
# a byte), and clients refuse headers over 8-16 KiB: a longer message, such as one that echoes a
# huge id, would turn the error into RESOURCE_EXHAUSTED in the client. Both ends are kept, since
# the end usually says what to do.
MAX_MESSAGE_BYTES = 2048
_HEAD_BYTES = 1280
_TAIL_BYTES = 640


def bounded_message(message: str) -> str:
    """`message`, its middle left out when it takes more than MAX_MESSAGE_BYTES in UTF-8."""
    encoded = message.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    head = encoded[:_HEAD_BYTES].decode(errors="ignore")
    tail = encoded[-_TAIL_BYTES:].decode(errors="ignore")
    return f"{head} [... {len(encoded) - _HEAD_BYTES - _TAIL_BYTES} bytes left out ...] {tail}"


# How a front end says a fix in its own words: the words the fix has (or a pattern of them, whose
# groups the new words may name as \1), and the words it says instead.
Rewording = tuple[str | re.Pattern[str], str]


def reworded_fix(message: str, rewordings: Iterable[Rewording]) -> str:
    """`message` with the fix that ends it (or ends it before a closing bracket: "(the newest is
    2; ListVersions lists them)") said in other words, by the first of `rewordings` whose words
    end it there. The same words earlier are in a name or an error the message quotes, the
    caller's or a model's own text, and stay as they are."""
    ends = (len(message), len(message) - 1) if message.endswith(")") else (len(message),)
    for said, instead in rewordings:
        pattern = said if isinstance(said, re.Pattern) else re.compile(re.escape(said))
        at_end = re.compile(rf"(?:{pattern.pattern})\Z", pattern.flags)
        for end in ends:
            found = at_end.search(message, 0, end)
            if found:
                words = found.expand(instead) if isinstance(said, re.Pattern) else instead
                return message[: found.start()] + words + message[end:]
    return message


class TesseraError(Exception):
    """Base of every error the daemon reports to a client on purpose."""

    def __init__(self, message: str) -> None:
        message = bounded_message(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(TesseraError):
    """The request itself is wrong (a bad name, shape, value); retrying it cannot help."""


class RefusedBySignature(InvalidArgument):
    """A request's inputs or outputs that the version it was routed to does not take (a name, a
    dtype, a shape its signature does not have). `version`: that version's number, which an alias
    or a deployment may have chosen; the transport tells it to the client apart from the message,
    so that a client can fix the request for that version (0: not known)."""

    def __init__(self, message: str, version: int = 0) -> None:
        super().__init__(message)
        self.version = version


class NotFound(TesseraError):
    """A named resource does not exist."""


class AlreadyExists(TesseraError):
    """A resource with that name already exists."""


class FailedPrecondition(TesseraError):
    """The request is valid but the current state forbids it (e.g. deleting a model in use)."""


class NotLoaded(FailedPrecondition):
    """A version a request needs is not loaded, and the request may not load it (autoload is off,
    or its last load failed). The Open Inference Protocol answers it as Triton answers a model
    that is not ready; tessera's own API as the FailedPrecondition it is."""


class OutOfRange(TesseraError):
    """A position past the end of what it points into (a download's offset past the file)."""


class ResourceExhausted(TesseraError):
    """A limit or quota is reached; the message names the limit and the setting that raises it."""


class NoSpace(ResourceExhausted):
    """A write found no room on the data directory's disk (full, quota, file size limit)."""


class QueueFull(ResourceExhausted):
    """A model's request queue holds its max_queue_size. tessera's own API answers it as the
    RESOURCE_EXHAUSTED it is (HTTP 429); the Open Inference Protocol as Overloaded."""


class DataLoss(TesseraError):
    """Stored or transferred bytes do not match their checksum."""


class Unauthenticated(TesseraError):
    """No valid credentials."""


class PermissionDenied(TesseraError):
    """Valid credentials whose role does not allow the call."""


class DeadlineExceeded(TesseraError):
    """The caller's deadline passed before the work was done."""


class Aborted(TesseraError):
    """The daemon ended the work for a reason of its own, such as a client too slow to keep it."""


class Cancelled(TesseraError):
    """The work was cancelled (by the caller or by shutdown)."""


class Unavailable(TesseraError):
    """Temporarily unable to serve (shutting down, not ready); the caller may retry."""


class StillLoading(Unavailable):
    """A version a request needs is still loading, and the request may not wait for it
    (autoload is off). The Open Inference Protocol answers it as Triton answers a model that is
    not ready; tessera's own API as the Unavailable it is (retry once it is ready)."""


class Overloaded(Unavailable):
    """QueueFull as the Open Inference Protocol answers it: Triton answers "Exceeds maximum queue
    size" UNAVAILABLE (HTTP 503), so retry policies written for Triton retry it; over HTTP with
    Retry-After as well."""


class Unimplemented(TesseraError):
    """A contract RPC whose feature has not been built yet."""


class Internal(TesseraError):
    """An unexpected failure, told with what it stopped; the message gives an error id under
    which the daemon's log has the details, and never the details themselves."""


def logged_internal(log: logging.Logger, where: str, exc: BaseException, **extra: Any) -> Internal:
    """The Internal error to answer for `exc`, unexpected in `where` ("a stream request"): its
    details go to `log` under a new error id, which the answer names instead of them."""
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s", where, exc_info=exc, extra={"error_id": error_id, **extra})
    return Internal(f"internal error (id {error_id}); the daemon's log has the details under that id")


def answered_message(log: logging.Logger, where: str, error: TesseraError) -> str:
    """The message a client is answered `error` with, in `where` ("tessera.v1.System/Backup").
    Data loss is the daemon's failure, not the caller's, and an alert counts it: it is logged
    under a new error id, which the answer ends with, so the operator finds the call the client
    reports. An Internal was logged where it was made, under the id its message has."""
    if not isinstance(error, DataLoss):
        return error.message
    error_id = uuid.uuid4().hex[:12]
    log.error("%s failed with data loss: %s", where, error.message, extra={"error_id": error_id})
    return bounded_message(f"{error.message} (error id {error_id} in the daemon's log)")


class Lasting:
    """Mixed into an error whose cause lasts until someone fixes it elsewhere (a serving
    replica's primary holds a damaged artifact, or refuses the replica's token): trying again
    at once cannot help, so such a failure is tried again rarely."""

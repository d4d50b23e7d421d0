"""Domain errors: what went wrong, in words a user can act on.

Domain code raises these; the API layer maps each class to one gRPC status code in one
table (`tesserad.api.errors`). Nothing here knows about gRPC. The message is sent to the
client as it is, so it must say what to fix and never carry internal detail.
"""


class TesseraError(Exception):
    """Base of every error the daemon reports to a client on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TesseraError):
    """The request itself is wrong (a bad name, shape, value); retrying it cannot help."""


class NotFound(TesseraError):
    """A named resource does not exist."""


class AlreadyExists(TesseraError):
    """A resource with that name already exists."""


class FailedPrecondition(TesseraError):
    """The request is valid but the current state forbids it (e.g. deleting a model in use)."""


class ResourceExhausted(TesseraError):
    """A limit or quota is reached; the message names the limit and the setting that raises it."""


class DataLoss(TesseraError):
    """Stored or transferred bytes do not match their checksum."""


class Unauthenticated(TesseraError):
    """No valid credentials."""


class PermissionDenied(TesseraError):
    """Valid credentials whose role does not allow the call."""


class DeadlineExceeded(TesseraError):
    """The caller's deadline passed before the work was done."""


class Cancelled(TesseraError):
    """The work was cancelled (by the caller or by shutdown)."""


class Unavailable(TesseraError):
    """Temporarily unable to serve (shutting down, not ready); the caller may retry."""


class Unimplemented(TesseraError):
    """A contract RPC whose feature has not been built yet."""

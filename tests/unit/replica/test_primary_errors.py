"""What a replica's caller is told when the primary could not answer: what failed, where, the
cause in words and a status to act on, never gRPC's own connection text."""

from __future__ import annotations

import pytest

import tessera.errors as sdk
from tesserad.api.follow import LASTING_RETRY_S, primary_error
from tesserad.errors import DataLoss, FailedPrecondition, Lasting, NotFound, TesseraError, Unavailable

WHAT = "cannot download version 2 of 'm' (blob sha256 0123456789ab)"
REFUSED = (
    "connections to all backends failing; last error: UNKNOWN: ipv4:10.0.0.1:50051: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize(
    ("error", "status", "cause"),
    [
        (sdk.Unavailable(REFUSED), Unavailable, "nothing listens there (connection refused)"),
        (
            sdk.Unavailable("DNS resolution failed for primary.svc:50051: C-ares status is not ARES_SUCCESS"),
            Unavailable,
            "its name does not resolve",
        ),
        (
            sdk.Unavailable("failed to connect to all addresses; last error: UNKNOWN: Ssl handshake failed"),
            Unavailable,
            "the TLS handshake failed (check replica.tls_ca_file and replica.tls_server_name)",
        ),
        (sdk.Unavailable("Socket closed"), Unavailable, "the connection was cut"),
        (sdk.Unavailable("something new"), Unavailable, "it cannot be reached"),
        (sdk.DeadlineExceeded("Deadline Exceeded"), Unavailable, "it did not answer in time"),
    ],
)
def test_an_unreachable_primary_is_unavailable_with_the_cause_in_words(
    error: sdk.TesseraError, status: type[TesseraError], cause: str
) -> None:
    result = primary_error(WHAT, "10.0.0.1:50051", error)
    assert type(result) is status
    assert result.message == (
        f"{WHAT} from the primary 10.0.0.1:50051: {cause}; this replica serves what it holds and "
        "fetches the rest when the primary is back"
    )
    assert "backends" not in result.message and "ipv4:" not in result.message


def test_the_primarys_own_answers_keep_its_words_with_a_status_that_fits() -> None:
    gone = primary_error(WHAT, "p:1", sdk.NotFound("model 'm' has no version 2"))
    assert isinstance(gone, NotFound)
    assert (
        gone.message
        == f"{WHAT} from the primary p:1: the primary no longer has it (model 'm' has no version 2)"
    )
    # The primary's fix stays in the daemon's words (RPCs), which the CLI and SDK each say in theirs.
    listed = primary_error(
        WHAT, "p:1", sdk.NotFound("model 'm' has no version 2 (the newest is 1; ListVersions lists them)")
    )
    assert listed.message.endswith("(model 'm' has no version 2 (the newest is 1; ListVersions lists them))")
    other = primary_error(WHAT, "p:1", sdk.Internal("disk on fire"))
    assert isinstance(other, Unavailable)
    assert other.message == f"{WHAT} from the primary p:1: the primary answered INTERNAL: disk on fire"


@pytest.mark.parametrize(
    ("error", "status", "cause"),
    [
        (
            sdk.DataLoss("blob abc is damaged on disk (its content hash no longer matches)"),
            DataLoss,
            "the primary's copy is damaged or missing (blob abc is damaged on disk (its content "
            "hash no longer matches)); restore it there",
        ),
        (
            sdk.Unauthenticated("unknown token"),
            FailedPrecondition,
            "the primary refused this replica's token (replica.token_file): unknown token",
        ),
        (
            sdk.PermissionDenied("token 'r' may not read the registry"),
            FailedPrecondition,
            "the primary refused this replica's token (replica.token_file): token 'r' may not read "
            "the registry",
        ),
        (
            sdk.InvalidArgument("unknown field"),
            FailedPrecondition,
            "the primary refused the call (INVALID_ARGUMENT: unknown field); check that it is a "
            "tesserad primary of this version",
        ),
        (
            sdk.FailedPrecondition("this tesserad is a serving replica of p:0"),
            FailedPrecondition,
            "the primary refused the call (FAILED_PRECONDITION: this tesserad is a serving replica "
            "of p:0); check that it is a tesserad primary of this version",
        ),
        (
            sdk.Unimplemented("Method not found"),
            FailedPrecondition,
            "the primary refused the call (UNIMPLEMENTED: Method not found); check that it is a "
            "tesserad primary of this version",
        ),
    ],
)
def test_a_permanent_answer_of_the_primary_is_lasting_with_its_own_status(
    error: sdk.TesseraError, status: type[TesseraError], cause: str
) -> None:
    result = primary_error(WHAT, "p:1", error)
    assert isinstance(result, status) and isinstance(result, Lasting)
    assert not isinstance(result, Unavailable)
    assert result.message == (
        f"{WHAT} from the primary p:1: {cause}; this replica tries again every "
        f"{LASTING_RETRY_S / 60:.0f} minutes, when it reconnects to the primary, and on SIGHUP"
    )


@pytest.mark.parametrize(
    "error",
    [
        sdk.Unavailable(REFUSED),
        sdk.DeadlineExceeded("Deadline Exceeded"),
        sdk.Internal("disk on fire"),
        sdk.ResourceExhausted("too many downloads"),
        sdk.Aborted("try again"),
        sdk.Unknown("?"),
    ],
)
def test_a_transient_failure_is_retried_soon(error: sdk.TesseraError) -> None:
    result = primary_error(WHAT, "p:1", error)
    assert isinstance(result, Unavailable) and not isinstance(result, Lasting)


def test_a_missing_version_is_neither_retried_nor_lasting() -> None:
    result = primary_error(WHAT, "p:1", sdk.NotFound("model 'm' has no version 2"))
    assert isinstance(result, NotFound) and not isinstance(result, Lasting)

"""How a primary asks each replica for its statistics: in the transport the replica announced,
never with a token in plaintext off the host when TLS is configured."""

from __future__ import annotations

import grpc
import pytest

from tesserad.api.cluster_stats import PLAINTEXT_OFF_HOST, Transport, is_loopback, unreachable_reason
from tesserad.replica.changes import Replica

TLS = grpc.ssl_channel_credentials()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.2.1:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("dns:///localhost:50051", True),
        ("10.0.0.1:50051", False),
        ("[2001:db8::1]:50051", False),
        ("replica-0.tessera:50051", False),
        ("localhost.evil.example:50051", False),
        ("127.0.0.1.nip.io:50051", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("uses_tls", "address", "announced", "chosen"),
    [
        # The replica's word decides, but plaintext leaves the host only without TLS anywhere.
        (True, "10.0.0.1:1", True, TLS),
        (True, "127.0.0.1:1", False, None),
        (True, "10.0.0.1:1", False, PLAINTEXT_OFF_HOST),
        (False, "10.0.0.1:1", False, None),
        (False, "10.0.0.1:1", True, TLS),
        # A replica that did not say: the primary's TLS settings decide, as before.
        (True, "127.0.0.1:1", None, TLS),
        (False, "10.0.0.1:1", None, None),
    ],
)
def test_the_transport_follows_the_replicas_word_within_the_policy(
    uses_tls: bool, address: str, announced: bool | None, chosen: object
) -> None:
    transport = Transport(TLS, uses_tls)
    assert transport.choose(Replica(address, "Bearer t", announced)) is chosen


def test_the_reason_says_what_failed_in_words() -> None:
    handshake = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Ssl handshake failed"
    )
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, handshake, tls=True).startswith(
        "the TLS handshake failed (check that it serves TLS"
    )
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    assert (
        unreachable_reason(grpc.StatusCode.UNAVAILABLE, refused, tls=False)
        == "nothing listens there (connection refused)"
    )
    assert (
        unreachable_reason(grpc.StatusCode.UNAVAILABLE, "Socket closed", tls=False)
        == "the connection was cut (asked in plaintext, as it announced: does it serve TLS?)"
    )
    assert unreachable_reason(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", tls=True) == (
        "it did not answer in time"
    )
    assert unreachable_reason(grpc.StatusCode.UNAUTHENTICATED, "no token", tls=True).startswith(
        "it refused the primary (UNAUTHENTICATED: no token)"
    )

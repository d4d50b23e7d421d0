"""Calls refused by authentication, and requests refused as they are read (over max_message_size,
not a valid message), are counted in tessera_rpc_total with their code, so an operator can alert
on them; only the daemon's own methods are labelled (an unknown method's name makes no series)."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from tesserad.security import Role, hash_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon
from tests.integration.security.conftest import Tokens, bearer
from tests.integration.security.test_auth import call


def _samples(daemon: InProcessDaemon, name: str) -> list[tuple[dict[str, str], float]]:
    """The labels and value of each sample `name` on the metrics endpoint."""
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.removeprefix(name + "{").split("} ")
            named = dict(pair.split("=", 1) for pair in labels.split(","))
            samples.append(({key: quoted.strip('"') for key, quoted in named.items()}, float(value)))
    return samples


def _rpc_totals(daemon: InProcessDaemon) -> dict[tuple[str, str], float]:
    """(method, code) -> tessera_rpc_total, for the System and Registry services' methods."""
    return {
        (labels["method"], labels["code"]): value for labels, value in _samples(daemon, "tessera_rpc_total")
    }


def _timed_calls(daemon: InProcessDaemon) -> dict[str, float]:
    """method -> tessera_rpc_duration_seconds_count: the calls with a latency sample."""
    return {
        labels["method"]: value for labels, value in _samples(daemon, "tessera_rpc_duration_seconds_count")
    }


def test_calls_refused_by_authentication_are_counted_with_their_code(
    token_daemon: InProcessDaemon, tokens: Tokens
) -> None:
    channel = token_daemon.channel()
    info = "/tessera.v1.System/GetServerInfo"
    assert call(channel, info) == grpc.StatusCode.UNAUTHENTICATED
    assert call(channel, info, bearer("not-a-token")) == grpc.StatusCode.UNAUTHENTICATED
    create = "/tessera.v1.Registry/CreateModel"
    assert call(channel, create, bearer(tokens.token[Role.READER])) == grpc.StatusCode.PERMISSION_DENIED
    # A token removed from the file (revoked) is refused as any unknown one.
    trainer = tokens.token[Role.TRAINER]
    tokens.file.write_text(format_entry("reader-holder", Role.READER, hash_token(tokens.token[Role.READER])))
    token_daemon.run(token_daemon.daemon.reload())
    assert call(channel, info, bearer(trainer)) == grpc.StatusCode.UNAUTHENTICATED
    assert call(channel, info, bearer(tokens.token[Role.READER])) == grpc.StatusCode.OK
    # A method this daemon does not serve, from anyone: gRPC answers it; it makes no series.
    assert call(channel, "/tessera.v1.System/NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED
    assert call(channel, "/attacker.Chosen/Name") == grpc.StatusCode.UNIMPLEMENTED

    totals = _rpc_totals(token_daemon)
    assert totals[("GetServerInfo", "UNAUTHENTICATED")] == 3
    assert totals[("GetServerInfo", "OK")] == 1
    assert totals[("CreateModel", "PERMISSION_DENIED")] == 1
    assert not [key for key in totals if key[0] in ("NoSuchMethod", "Name")]
    # A refusal does no work: a 0 s latency sample would drag the percentiles of the calls served
    # toward 0 under a flood of unauthenticated calls. Only the one call served was timed.
    timed = _timed_calls(token_daemon)
    assert timed["GetServerInfo"] == 1
    assert timed["CreateModel"] == 0


def test_requests_refused_for_their_size_or_encoding_are_counted_with_their_code(start_daemon) -> None:
    daemon = start_daemon(max_message_size="1KiB")
    channel = daemon.channel()
    info = "/tessera.v1.System/GetServerInfo"
    # 0xff is no valid field tag: the message does not parse.
    assert call(channel, info, payload=b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    oversized = b"\n" + b"\x80\x10" + b"m" * 2048
    assert call(channel, "/tessera.v1.Training/LogMetrics", payload=oversized) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    watch = channel.unary_stream("/tessera.v1.System/WatchSystem")
    with pytest.raises(grpc.RpcError) as err:
        list(watch(oversized, timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    # A method this daemon does not serve is answered by gRPC before any request is read.
    assert call(channel, "/attacker.Chosen/Name", payload=oversized) == grpc.StatusCode.UNIMPLEMENTED

    totals = _rpc_totals(daemon)
    assert totals[("GetServerInfo", "INVALID_ARGUMENT")] == 1
    assert totals[("LogMetrics", "RESOURCE_EXHAUSTED")] == 1
    assert totals[("WatchSystem", "RESOURCE_EXHAUSTED")] == 1
    assert not [key for key in totals if key[0] == "Name"]
    # Refused before any work, as authentication's refusals: no latency sample.
    timed = _timed_calls(daemon)
    assert timed["GetServerInfo"] == timed["LogMetrics"] == timed["WatchSystem"] == 0

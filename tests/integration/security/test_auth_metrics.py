"""Calls refused by authentication, and requests refused as they are read (over max_message_size,
not a valid message), are counted in tessera_rpc_total with their code, so an operator can alert
on them; only the daemon's own methods are labelled (an unknown method's name makes no series)."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc, system_pb2
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
    # A method never timed shows no latency series at all.
    assert timed.get("CreateModel", 0) == 0


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
    assert [timed.get(method, 0) for method in ("GetServerInfo", "LogMetrics", "WatchSystem")] == [0, 0, 0]


def _counted(daemon: InProcessDaemon, key: tuple[str, str], count: float) -> None:
    """Wait until tessera_rpc_total of `key` is `count`: a stream is counted as its task ends."""
    deadline = time.monotonic() + 60
    while _rpc_totals(daemon).get(key, 0) != count:
        assert time.monotonic() < deadline, (key, _rpc_totals(daemon))
        time.sleep(0.05)


def test_a_response_over_max_message_size_is_counted_with_the_code_the_client_gets(start_daemon) -> None:
    daemon = start_daemon(max_message_size="1KiB")
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    for i in range(12):
        registry.CreateModel(registry_pb2.CreateModelRequest(name=f"{i:02d}-" + "m" * 100))
    with pytest.raises(grpc.RpcError) as err:
        registry.ListModels(registry_pb2.ListModelsRequest())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "over max_message_size" in err.value.details()
    totals = _rpc_totals(daemon)
    assert totals[("ListModels", "RESOURCE_EXHAUSTED")] == 1
    assert totals.get(("ListModels", "OK"), 0) == 0


def test_a_stream_its_revoked_token_ends_is_counted_as_the_client_gets_it(
    token_daemon: InProcessDaemon, tokens: Tokens
) -> None:
    watch = token_daemon.channel().unary_stream(
        "/tessera.v1.System/WatchSystem", response_deserializer=system_pb2.SystemSample.FromString
    )
    request = system_pb2.WatchSystemRequest(interval_ms=100).SerializeToString()
    samples = watch(request, metadata=bearer(tokens.token[Role.READER]), timeout=120)
    assert isinstance(next(samples), system_pb2.SystemSample)
    tokens.file.write_text(format_entry("admin-holder", Role.ADMIN, hash_token(tokens.token[Role.ADMIN])))
    token_daemon.run(token_daemon.daemon.reload())
    with pytest.raises(grpc.RpcError) as err:
        list(samples)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    _counted(token_daemon, ("WatchSystem", "UNAUTHENTICATED"), 1)
    assert _rpc_totals(token_daemon).get(("WatchSystem", "CANCELLED"), 0) == 0

"""Each limit answers RESOURCE_EXHAUSTED naming it: calls and streams in flight, message size."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.v1 import system_pb2, system_pb2_grpc

INFO = "/tessera.v1.System/GetServerInfo"


def open_stream(channel: grpc.Channel):
    """A WatchSystem stream that stays open; returns it once its first sample arrived."""
    stream = system_pb2_grpc.SystemStub(channel).WatchSystem(
        system_pb2.WatchSystemRequest(interval_ms=100, max_samples=10_000), timeout=60
    )
    next(stream)
    return stream


def exhausted(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return err.value.details()


def test_streams_over_the_limit_are_refused_naming_it(start_daemon):
    daemon = start_daemon(**{"limits.max_concurrent_streams": 1})
    channel = daemon.channel()
    first = open_stream(channel)
    message = exhausted(lambda: open_stream(channel))
    assert "limits.max_concurrent_streams = 1" in message
    assert "TESSERA_LIMITS_MAX_CONCURRENT_STREAMS" in message
    # Unary calls are not streams.
    channel.unary_unary(INFO)(b"", timeout=10)
    first.cancel()
    # The slot is given back once the server sees the cancellation, which takes a moment.
    codes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            open_stream(channel).cancel()
            break
        except grpc.RpcError as exc:
            codes.append(exc.code())
            time.sleep(0.05)
    else:
        pytest.fail("the stream slot was never given back after the first stream was cancelled")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_calls_over_the_limit_are_refused_naming_it_but_health_still_answers(start_daemon):
    daemon = start_daemon(**{"limits.max_concurrent_calls": 1})
    channel = daemon.channel()
    stream = open_stream(channel)
    message = exhausted(lambda: channel.unary_unary(INFO)(b"", timeout=10))
    assert "limits.max_concurrent_calls = 1" in message
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_a_response_over_max_message_size_is_refused_naming_it(start_daemon):
    # A ServerInfo (devices, versions, services) is well over 256 bytes.
    daemon = start_daemon(max_message_size="256B")
    message = exhausted(lambda: daemon.channel().unary_unary(INFO)(b"", timeout=10))
    assert "over max_message_size = 256 B" in message
    assert "TESSERA_MAX_MESSAGE_SIZE" in message


def test_a_request_over_max_message_size_is_refused_by_grpc_with_the_sizes(start_daemon):
    """gRPC rejects it before any tesserad code runs; its message gives both sizes, not the setting name."""
    daemon = start_daemon(max_message_size="1KiB")
    payload = b"\x0a\xa0\x1f" + b"x" * 4000  # one length-delimited field of 4000 bytes
    message = exhausted(lambda: daemon.channel().unary_unary(INFO)(payload, timeout=10))
    assert "larger than max" in message and "1024" in message

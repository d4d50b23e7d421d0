"""tessera.Client and tessera.aio.Client against a real daemon: System, and errors it gives."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import tessera
import tessera.aio
from tessera.errors import error_from_rpc


def test_info_names_the_daemon_and_its_services(client, daemon):
    info = client.system.info()
    assert info.version
    assert info.devices[0].id == "cpu"
    assert "tessera.v1.System" in info.services
    assert info.pid > 0


def test_watch_streams_the_requested_number_of_samples(client):
    samples = list(client.system.watch(interval_ms=100, max_samples=2))
    assert len(samples) == 2
    assert all(0 <= s.cpu_percent <= 100 and s.memory_total_bytes > 0 for s in samples)


def test_watch_with_a_bad_interval_is_invalid_argument_with_the_daemon_message(client):
    with pytest.raises(tessera.InvalidArgument, match=r"interval_ms must be in 100\.\.60000.*got 5"):
        list(client.system.watch(interval_ms=5, max_samples=1))


def test_a_method_the_daemon_lacks_is_unimplemented(daemon):
    channel = daemon.channel()
    missing = channel.unary_unary("/tessera.v1.System/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as caught:
        missing(b"", timeout=10)
    error = error_from_rpc(caught.value)
    assert isinstance(error, tessera.Unimplemented)


def test_watch_stops_when_the_caller_stops_iterating(client):
    stream = client.system.watch(interval_ms=100)
    assert next(stream).memory_total_bytes > 0
    stream.close()
    assert client.system.info().version


def test_aio_info_and_watch(daemon):
    async def scenario():
        async with tessera.aio.Client(daemon.target) as client:
            info = await client.system.info()
            samples = [s async for s in client.system.watch(interval_ms=100, max_samples=2)]
            with pytest.raises(tessera.InvalidArgument):
                [s async for s in client.system.watch(interval_ms=1, max_samples=1)]
            return info, samples

    info, samples = asyncio.run(scenario())
    assert "tessera.v1.System" in info.services
    assert len(samples) == 2

"""A daemon that cannot be reached: the SDK's Unavailable says at which address and what to check
(a daemon started, the address, TLS at both ends), with gRPC's own words after, once. Notebook
users read it without the CLI's help."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

import tessera
import tessera.aio
from tessera.errors import CONNECT_TIMEOUT_S, reached_no_daemon


@pytest.fixture
def nobody() -> Iterator[str]:
    """A port of 127.0.0.1 that nothing listens on (bound, never listened, so refused)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{unused.getsockname()[1]}"


def assert_says_what_to_check(error: tessera.Unavailable, target: str) -> None:
    message = error.message
    assert message.startswith(f"is tesserad running at {target}? "), message
    assert "`tesserad serve`" in message and "target=" in message and "tls=" in message, message
    detail = message.split("; gRPC said: ", 1)[1]
    assert "failed to connect" in detail or "backends failing" in detail, message
    assert message.count(detail) == 1, message
    # Still known for a call that never reached a daemon, so safe to send again.
    assert reached_no_daemon(error)


def test_the_blocking_client_says_which_address_it_tried_and_what_to_check(nobody):
    with tessera.Client(nobody, timeout=5) as client, pytest.raises(tessera.Unavailable) as failed:
        client.system.info()
    assert_says_what_to_check(failed.value, nobody)


def test_the_asyncio_client_says_the_same(nobody):
    async def scenario() -> tessera.Unavailable:
        async with tessera.aio.Client(nobody, timeout=5) as client:
            with pytest.raises(tessera.Unavailable) as failed:
                await client.system.info()
            return failed.value

    assert_says_what_to_check(asyncio.run(asyncio.wait_for(scenario(), 60)), nobody)


def test_a_stream_to_no_daemon_says_it_too(nobody):
    with tessera.Client(nobody, timeout=5) as client, pytest.raises(tessera.Unavailable) as failed:
        list(client.models.list())
    assert_says_what_to_check(failed.value, nobody)


@pytest.fixture
def silent() -> Iterator[str]:
    """A port of 127.0.0.1 that takes connections (the kernel's backlog does) and never says a
    word: another service's port, or a proxy holding connections to nothing."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def assert_says_nothing_answered_grpc(error: tessera.TesseraError, target: str, within: str) -> None:
    message = error.message
    assert message.startswith(f"nothing at {target} answered gRPC {within}; is it a tesserad?"), message
    assert "target=" in message and "`tesserad serve --listen`" in message, message


def test_a_port_that_takes_the_connection_and_says_nothing_fails_the_call_at_the_connect_timeout(silent):
    # It waited gRPC's own 20 s for the connection, then said to start a daemon there.
    with tessera.Client(silent, timeout=3600) as client, pytest.raises(tessera.Unavailable) as failed:
        client.system.info()
    assert_says_nothing_answered_grpc(failed.value, silent, f"within {CONNECT_TIMEOUT_S:g} s")
    assert reached_no_daemon(failed.value)


def test_the_asyncio_client_says_so_too(silent):
    async def scenario() -> tessera.Unavailable:
        async with tessera.aio.Client(silent, timeout=3600) as client:
            with pytest.raises(tessera.Unavailable) as failed:
                await client.system.info()
            return failed.value

    error = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert_says_nothing_answered_grpc(error, silent, f"within {CONNECT_TIMEOUT_S:g} s")


def test_a_deadline_that_ends_before_the_connect_timeout_says_what_it_waited_for(silent):
    with tessera.Client(silent, timeout=1) as client, pytest.raises(tessera.DeadlineExceeded) as failed:
        client.system.info()
    assert_says_nothing_answered_grpc(failed.value, silent, "before the call's deadline")

    async def scenario() -> tessera.DeadlineExceeded:
        async with tessera.aio.Client(silent, timeout=1) as client:
            with pytest.raises(tessera.DeadlineExceeded) as failed:
                await client.system.info()
            return failed.value

    error = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert_says_nothing_answered_grpc(error, silent, "before the call's deadline")

"""Keepalive pings on the SDK's channels. A watch without deadline over a connection lost without a
word (a NAT or VPN that forgot it: no FIN, no RST, nothing passes) fails UNAVAILABLE, or connects
again and goes on, instead of waiting for ever; and the daemon takes the pings of the shortest
interval the SDK allows all through a quiet watch, without answering GOAWAY "too_many_pings"."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tessera
import tessera.aio
from tessera.transport import MIN_KEEPALIVE_S

# Far past a few keepalive periods (of MIN_KEEPALIVE_S): only a watch that never notices the
# silence runs into it, and then fails instead of hanging.
HANG_S = 30
# Long enough for gRPC's default policy to answer a quiet stream's pings with GOAWAY: it takes
# two pings in 5 minutes and closes the connection at the third (the test was seen to fail so
# against a daemon left at that policy).
QUIET_S = 6 * MIN_KEEPALIVE_S


def test_a_watch_without_deadline_over_a_connection_gone_silent_fails_unavailable(
    client, daemon, proxy_to, make_onnx
):
    client.models.push("affine", make_onnx("a1"))
    proxy = proxy_to(daemon.daemon.port)
    # One attempt: the first UNAVAILABLE ends the watch instead of connecting again. The client is
    # closed before the pool waits for its thread, which ends a watch that never noticed.
    one_attempt = tessera.RetryPolicy(attempts=1)
    with (
        ThreadPoolExecutor(1) as pool,
        tessera.Client(proxy.target, retry=one_attempt, keepalive=MIN_KEEPALIVE_S) as through_proxy,
    ):
        changes = through_proxy.models.watch_changes()
        assert next(changes).seq == 1
        proxy.black_hole()
        waiting = pool.submit(next, changes)
        with pytest.raises(tessera.Unavailable):
            waiting.result(timeout=HANG_S)


def test_a_watch_over_a_connection_gone_silent_connects_again_and_goes_on(
    client, daemon, proxy_to, make_onnx
):
    client.models.push("affine", make_onnx("a1"))
    proxy = proxy_to(daemon.daemon.port)
    with (
        ThreadPoolExecutor(1) as pool,
        tessera.Client(proxy.target, keepalive=MIN_KEEPALIVE_S) as through_proxy,
    ):
        changes = through_proxy.models.watch_changes()
        assert next(changes).seq == 1
        proxy.black_hole()
        client.models.push("affine", make_onnx("a2", scale=2.0))
        assert pool.submit(next, changes).result(timeout=HANG_S).seq == 2


def test_an_asyncio_watch_over_a_connection_gone_silent_fails_unavailable(
    client, daemon, proxy_to, make_onnx
):
    client.models.push("affine", make_onnx("a1"))
    proxy = proxy_to(daemon.daemon.port)

    async def watch() -> None:
        one_attempt = tessera.RetryPolicy(attempts=1)
        async with tessera.aio.Client(
            proxy.target, retry=one_attempt, keepalive=MIN_KEEPALIVE_S
        ) as through_proxy:
            changes = through_proxy.models.watch_changes()
            assert (await anext(changes)).seq == 1
            proxy.black_hole()
            with pytest.raises(tessera.Unavailable):
                await asyncio.wait_for(anext(changes), HANG_S)

    asyncio.run(watch())


def test_the_daemon_takes_the_pings_of_the_shortest_keepalive_through_a_quiet_watch(
    client, daemon, make_onnx
):
    client.models.push("affine", make_onnx("a1"))
    # One attempt: a GOAWAY would end the watch, not be hidden by a reconnect.
    one_attempt = tessera.RetryPolicy(attempts=1)
    with (
        ThreadPoolExecutor(1) as pool,
        tessera.Client(daemon.target, retry=one_attempt, keepalive=MIN_KEEPALIVE_S) as pinging,
    ):
        changes = pinging.models.watch_changes()
        assert next(changes).seq == 1
        waiting = pool.submit(next, changes)
        time.sleep(QUIET_S)  # nothing passes on the watch but pings meanwhile
        client.models.push("affine", make_onnx("a2", scale=2.0))
        assert waiting.result(timeout=HANG_S).seq == 2

"""A daemon that cannot be reached: the SDK's Unavailable says at which address and what to check
(a daemon started, the address, TLS at both ends), with gRPC's own words after, once. Notebook
users read it without the CLI's help."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest
from grpc import _channel as grpc_channel  # where a blocking channel's polling thread starts

import tessera
import tessera.aio
import tessera.errors
import tessera.transport
from tessera.errors import reached_no_daemon
from tessera.transport import AioConnection, Connection
from tessera.v1 import inference_pb2, system_pb2


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


# A connect timeout the test waits out in place of tessera.errors.CONNECT_TIMEOUT_S (10 s),
# longer than a connection to 127.0.0.1 takes on a busy machine.
SHORT_CONNECT_S = 2.0


def assert_says_nothing_answered_grpc(error: tessera.TesseraError, target: str, within: str) -> None:
    message = error.message
    assert message.startswith(f"nothing at {target} answered gRPC {within}; is it a tesserad?"), message
    assert "target=" in message and "`tesserad serve --listen`" in message, message


def test_a_port_that_takes_the_connection_and_says_nothing_fails_the_call_at_the_connect_timeout(
    silent, monkeypatch
):
    """The blocking client and the asyncio one alike; they wait out the connect timeout side by side,
    shortened from CONNECT_TIMEOUT_S for the test: the channel option and the message read it alike."""
    monkeypatch.setattr(tessera.transport, "CONNECT_TIMEOUT_S", SHORT_CONNECT_S)
    monkeypatch.setattr(tessera.errors, "CONNECT_TIMEOUT_S", SHORT_CONNECT_S)

    async def scenario() -> tessera.Unavailable:
        async with tessera.aio.Client(silent, timeout=3600) as client:
            with pytest.raises(tessera.Unavailable) as failed:
                await client.system.info()
            return failed.value

    with futures.ThreadPoolExecutor(1) as pool:
        asyncio_error = pool.submit(lambda: asyncio.run(asyncio.wait_for(scenario(), 120)))
        # It waited gRPC's own 20 s for the connection (now the connect timeout), then said to
        # start a daemon there.
        with tessera.Client(silent, timeout=3600) as client, pytest.raises(tessera.Unavailable) as failed:
            client.system.info()
        error = asyncio_error.result()
    assert_says_nothing_answered_grpc(failed.value, silent, f"within {SHORT_CONNECT_S:g} s")
    assert reached_no_daemon(failed.value)
    assert_says_nothing_answered_grpc(error, silent, f"within {SHORT_CONNECT_S:g} s")


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


# The daemon's own words when a request's deadline passed in its queue (serving/batcher.py).
_QUEUED_PAST_DEADLINE = "the request's deadline passed while it was queued; it was not run"


def _drain(server: grpc.Server) -> None:
    """Start `server` draining, as a daemon shutting down does: GOAWAY, and no new connections,
    while the calls in flight go on (the GOAWAY goes out first; a moment lets the client act on it)."""
    server.stop(grace=30)
    time.sleep(0.2)


@contextmanager
def draining_server() -> Iterator[str]:
    """A gRPC server that starts draining in its calls, then: GetServerInfo answers
    DEADLINE_EXCEEDED in its own words, as tesserad does for a request whose deadline passed in
    its queue; PredictStream, after one response, holds the call past the client's deadline. A
    stand-in: no tesserad RPC answers DEADLINE_EXCEEDED before the client's own deadline ends
    the call."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    stopped = threading.Event()

    def answer_deadline_exceeded(request: bytes, context: grpc.ServicerContext) -> bytes:
        _drain(server)
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _QUEUED_PAST_DEADLINE)

    def predict_then_hold(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        next(requests)
        yield inference_pb2.PredictResponse().SerializeToString()
        _drain(server)
        stopped.wait(60)

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tessera.v1.System",
                {"GetServerInfo": grpc.unary_unary_rpc_method_handler(answer_deadline_exceeded)},
            ),
            grpc.method_handlers_generic_handler(
                "tessera.v1.Inference",
                {"PredictStream": grpc.stream_stream_rpc_method_handler(predict_then_hold)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopped.set()
        server.stop(grace=None)


def test_a_deadline_exceeded_the_server_answered_keeps_its_words_after_a_goaway():
    # No connection was ready after the GOAWAY: the answer was taken for a silent port's.
    with (
        draining_server() as target,
        tessera.Client(target, timeout=30) as client,
        pytest.raises(tessera.DeadlineExceeded) as failed,
    ):
        client.system.info()
    assert failed.value.message == _QUEUED_PAST_DEADLINE, failed.value.message


def test_the_asyncio_client_keeps_the_servers_words_too():
    async def scenario(target: str) -> tessera.DeadlineExceeded:
        async with tessera.aio.Client(target, timeout=30) as client:
            with pytest.raises(tessera.DeadlineExceeded) as failed:
                await client.system.info()
            return failed.value

    with draining_server() as target:
        error = asyncio.run(asyncio.wait_for(scenario(target), 120))
    assert error.message == _QUEUED_PAST_DEADLINE, error.message


def assert_is_not_said_to_have_reached_nothing(error: BaseException) -> None:
    # Now and then gRPC's core drops the stream with the draining connection before the deadline
    # (Unavailable, saying so): either way the words are gRPC's, not the silent port's.
    assert isinstance(error, tessera.DeadlineExceeded | tessera.Unavailable), error
    assert not error.message.startswith("nothing at"), error.message


def test_a_prediction_stream_that_got_a_response_before_its_deadline_is_not_said_to_have_reached_nothing():
    async def scenario(target: str) -> BaseException:
        connection = AioConnection(target)
        try:
            async for _ in connection.bidi_stream(
                "Inference", "PredictStream", [inference_pb2.PredictRequest()], 2
            ):
                pass
        except tessera.TesseraError as error:
            return error
        finally:
            await connection.close()
        raise AssertionError("the stream ended without its deadline")

    with draining_server() as target:
        assert_is_not_said_to_have_reached_nothing(asyncio.run(asyncio.wait_for(scenario(target), 120)))


@contextmanager
def holding_server() -> Iterator[str]:
    """A gRPC server whose GetServerInfo holds every call until the server stops: a daemon that
    was reached and is slow, so calls end at the client's own deadline on a ready connection."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stopping = threading.Event()

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        stopping.wait(60)
        return b""

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tessera.v1.System", {"GetServerInfo": grpc.unary_unary_rpc_method_handler(hold)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopping.set()
        server.stop(grace=None)


@contextmanager
def stopping_server(refusal: grpc.StatusCode | None = None) -> Iterator[str]:
    """A gRPC server whose WatchSystem sends one sample, and whose GetServerInfo answers the first
    call (with the status `refusal`, where given), then, in each later one, starts draining (as a
    daemon told to stop does: GOAWAY, no new connections) and holds the call past the client's
    deadline: the client has no connection ready when its deadline ends the call."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stopping = threading.Event()
    answered = threading.Event()

    def answer_then_drain(request: bytes, context: grpc.ServicerContext) -> bytes:
        if not answered.is_set():
            answered.set()
            if refusal is not None:
                context.abort(refusal, "refused")
            return system_pb2.ServerInfo().SerializeToString()
        _drain(server)
        stopping.wait(60)
        return b""

    def one_sample(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        answered.set()
        yield system_pb2.SystemSample().SerializeToString()

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tessera.v1.System",
                {
                    "GetServerInfo": grpc.unary_unary_rpc_method_handler(answer_then_drain),
                    "WatchSystem": grpc.unary_stream_rpc_method_handler(one_sample),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopping.set()
        server.stop(grace=None)


def assert_says_the_daemon_was_reached_before(error: tessera.TesseraError, target: str) -> None:
    # It said "nothing at ... answered gRPC before the call's deadline" of a daemon that had answered.
    message = error.message
    assert isinstance(error, tessera.DeadlineExceeded), error
    reached = f"the daemon at {target} was reached before, and no connection to it was ready at the call's deadline: "
    assert message.startswith(reached), message
    assert "shutting down" in message and "check that tesserad runs there" in message, message
    assert message.endswith("; gRPC said: Deadline Exceeded"), message


@pytest.mark.parametrize("first", ["unary", "stream"])
def test_a_call_to_a_daemon_that_answered_and_then_stopped_says_the_daemon_was_reached_before(first):
    with stopping_server() as target, tessera.Client(target, timeout=30) as client:
        if first == "unary":
            client.system.info()
        else:
            assert len(list(client.system.watch(max_samples=1))) == 1
        with pytest.raises(tessera.DeadlineExceeded) as failed:
            client.system.info(timeout=2)
    assert_says_the_daemon_was_reached_before(failed.value, target)


@pytest.mark.parametrize("first", ["unary", "stream"])
def test_the_asyncio_client_says_the_daemon_was_reached_before_too(first):
    async def scenario(target: str) -> tessera.DeadlineExceeded:
        async with tessera.aio.Client(target, timeout=30) as client:
            if first == "unary":
                await client.system.info()
            else:
                assert len([sample async for sample in client.system.watch(max_samples=1)]) == 1
            with pytest.raises(tessera.DeadlineExceeded) as failed:
                await client.system.info(timeout=2)
            return failed.value

    with stopping_server() as target:
        error = asyncio.run(asyncio.wait_for(scenario(target), 120))
    assert_says_the_daemon_was_reached_before(error, target)


# Longer than the client once waited to hear its channel's state (0.5 s), well within what it waits now.
LATE_STATE_CHECK_S = 1.5


def test_a_blocking_client_whose_state_check_starts_late_keeps_grpcs_words_and_closes_cleanly(monkeypatch):
    # The state was asked of a thread started per question and given up on after half a second:
    # on a busy machine, where that thread starts late, the reached daemon was said to be silent,
    # and the thread, starting after the client closed, raised "Cannot invoke RPC: Channel closed!".
    # gRPC's own polling thread starts its first check late here, every time.
    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    pollers: list[threading.Thread] = []
    poll = grpc_channel._poll_connectivity

    def late_poll(*args: object) -> None:
        pollers.append(threading.current_thread())
        time.sleep(LATE_STATE_CHECK_S)
        poll(*args)

    monkeypatch.setattr(grpc_channel, "_poll_connectivity", late_poll)
    with holding_server() as target:
        with tessera.Client(target, timeout=0.5) as client, pytest.raises(tessera.DeadlineExceeded) as failed:
            client.system.info()
        assert pollers, "the client asked gRPC's polling thread nothing"
        for poller in pollers:
            poller.join(30)
            assert not poller.is_alive()
    assert not failed.value.message.startswith("nothing at"), failed.value.message
    assert not raised, raised


def test_a_client_dropped_unclosed_after_its_own_deadline_leaves_its_channel_to_be_collected():
    # The subscribed callback held the channel: it was never collected, and gRPC's polling
    # thread (which the channel's collection unsubscribes) went on for the life of the process.
    with holding_server() as target:
        connection = Connection(target, timeout=0.5)
        with pytest.raises(tessera.DeadlineExceeded) as failed:
            connection.unary("System", "GetServerInfo", system_pb2.GetServerInfoRequest(), None)
        assert not failed.value.message.startswith("nothing at"), failed.value.message
        channel = weakref.ref(connection.channel)
        del connection, failed
        gc.collect()
        assert channel() is None


# Statuses only a server sends: gRPC's client makes none of them, nor reads one from an HTTP status.
DAEMON_REFUSALS = [
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
]


@pytest.mark.parametrize("refusal", DAEMON_REFUSALS, ids=lambda code: code.name)
def test_a_daemon_that_only_refused_calls_and_then_stopped_was_reached_before(refusal):
    with stopping_server(refusal) as target, tessera.Client(target, timeout=30) as client:
        with pytest.raises(tessera.TesseraError, match="refused"):
            client.system.info()
        with pytest.raises(tessera.DeadlineExceeded) as failed:
            client.system.info(timeout=2)
    assert_says_the_daemon_was_reached_before(failed.value, target)


def test_the_asyncio_client_counts_a_refusal_as_the_daemon_reached_too():
    async def scenario(target: str) -> tessera.DeadlineExceeded:
        async with tessera.aio.Client(target, timeout=30) as client:
            with pytest.raises(tessera.NotFound, match="refused"):
                await client.system.info()
            with pytest.raises(tessera.DeadlineExceeded) as failed:
                await client.system.info(timeout=2)
            return failed.value

    with stopping_server(grpc.StatusCode.NOT_FOUND) as target:
        error = asyncio.run(asyncio.wait_for(scenario(target), 120))
    assert_says_the_daemon_was_reached_before(error, target)

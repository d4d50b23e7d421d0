"""The one error table and the INTERNAL path, through a real grpc.aio server and the daemon's interceptor."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc._cython import cygrpc  # channelz: what the server's gRPC core has read

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad import errors
from tesserad.api.interceptors import CallInterceptor
from tesserad.metrics import DaemonMetrics


class _ErrorServer:
    """Serves /test.Errors/Raise: raises the domain error named by the request bytes, or a bug."""

    def __init__(self) -> None:
        self.metrics = DaemonMetrics()
        # /test.Errors/RaiseWhenLetGo holds the event loop's thread between these two.
        self.holding = threading.Event()
        self.let_go = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        async def raise_named(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            name = request.decode()
            if name == "bug":
                raise KeyError("secret internal detail")
            raise getattr(errors, name)(f"{name} happened; do this to fix it")

        async def stream_bug(request: bytes, context: grpc.aio.ServicerContext):
            yield b"first"
            raise ValueError("secret stream detail")

        async def raise_when_let_go(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # A handler's last step before it fails, drawn out: gRPC's core may hear the
            # client's cancel meanwhile, but nothing on the held loop can act on it.
            self.holding.set()
            self.let_go.wait(30)
            return await raise_named(request, context)

        handler = grpc.method_handlers_generic_handler(
            "test.Errors",
            {
                "Raise": grpc.unary_unary_rpc_method_handler(raise_named),
                "StreamBug": grpc.unary_stream_rpc_method_handler(stream_bug),
                "RaiseWhenLetGo": grpc.unary_unary_rpc_method_handler(raise_when_let_go),
            },
        )
        self.server = grpc.aio.server(interceptors=[CallInterceptor(self.metrics, 4 * 2**20)])
        self.server.add_generic_rpc_handlers([handler])
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def error_server():
    server = _ErrorServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def error_channel(error_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{error_server.port}")
    yield channel
    channel.close()


# Written out, not read from the table under test, so a wrong entry there fails here.
EXPECTED_STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RefusedBySignature: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StillLoading: grpc.StatusCode.UNAVAILABLE,
    errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def test_every_domain_error_has_an_expected_status():
    declared = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.TesseraError) and cls is not errors.TesseraError
    }
    assert declared == set(EXPECTED_STATUS)


@pytest.mark.parametrize(("error", "code"), list(EXPECTED_STATUS.items()))
def test_each_domain_error_maps_to_its_status_with_its_message(error_channel, error, code):
    call = error_channel.unary_unary("/test.Errors/Raise")
    with pytest.raises(grpc.RpcError) as err:
        call(error.__name__.encode(), timeout=5)
    assert err.value.code() == code
    if error is errors.DataLoss:
        # The daemon's own failure: logged, under an id its answer names (the next test).
        assert err.value.details().startswith(f"{error.__name__} happened; do this to fix it (error id ")
    else:
        assert err.value.details() == f"{error.__name__} happened; do this to fix it"


def test_data_loss_is_logged_under_the_error_id_its_answer_names(error_channel, caplog):
    call = error_channel.unary_unary("/test.Errors/Raise")
    with (
        caplog.at_level(logging.ERROR, logger="tesserad.api.interceptors"),
        pytest.raises(grpc.RpcError) as err,
    ):
        call(b"DataLoss", timeout=5)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    error_id = re.search(r"\(error id ([0-9a-f]{12})\b", err.value.details()).group(1)
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "DataLoss happened; do this to fix it" in logged[0].getMessage()
    assert "test.Errors/Raise" in logged[0].getMessage()


def test_unexpected_error_is_internal_with_an_id_in_the_log_and_no_detail(error_channel, caplog):
    call = error_channel.unary_unary("/test.Errors/Raise")
    with (
        caplog.at_level(logging.ERROR, logger="tesserad.api.interceptors"),
        pytest.raises(grpc.RpcError) as err,
    ):
        call(b"bug", timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and "KeyError" not in err.value.details()
    error_id = re.search(r"id ([0-9a-f]{12})", err.value.details()).group(1)
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])


def test_unexpected_error_mid_stream_is_internal(error_channel):
    stream = error_channel.unary_stream("/test.Errors/StreamBug")(b"", timeout=5)
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details()


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _streams_started() -> int:
    """Calls whose headers the process's gRPC servers have read, from channelz."""
    started = 0
    for server in json.loads(cygrpc.channelz_get_servers(0)).get("server", []):
        sockets = json.loads(cygrpc.channelz_get_server_sockets(int(server["ref"]["serverId"]), 0, 0))
        for ref in sockets.get("socketRef", []):
            socket = json.loads(cygrpc.channelz_get_socket(int(ref["socketId"])))["socket"]
            started += int(socket["data"].get("streamsStarted", 0))
    return started


def _cancelled_while_held(server: _ErrorServer, channel: grpc.Channel, call: grpc.Future) -> None:
    """Cancel `call`, which the server holds, and let it go once the server's core has read the
    cancel: the handler goes on to its end not knowing of it."""
    assert server.holding.wait(10)
    started_before = _streams_started()
    call.cancel()
    # The core reads a connection's frames in order: once it has read the headers of a call
    # started after the cancel, it has read the cancel.
    after = channel.unary_unary("/test.Errors/Raise").future(b"AlreadyExists", timeout=30)
    _until(lambda: _streams_started() > started_before, "the server read no call after the cancel")
    server.let_go.set()
    assert after.exception().code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(("raised", "counted_as"), [(b"NotFound", "CANCELLED"), (b"bug", "INTERNAL")])
def test_a_call_its_client_cancelled_as_its_handler_failed_is_counted_cancelled_unless_a_bug(
    error_server, error_channel, caplog, raised, counted_as
):
    """A domain error the cancel kept from the client is the client's cancel; a handler's bug is
    INTERNAL still, so that an alert on code="INTERNAL" sees every one."""
    error_server.holding.clear()
    error_server.let_go.clear()
    recorder = error_server.metrics.rpc_recorder("test.Errors", "RaiseWhenLetGo")
    codes_before = recorder.read()[2]
    call = error_channel.unary_unary("/test.Errors/RaiseWhenLetGo").future(raised, timeout=30)
    with caplog.at_level(logging.ERROR):
        _cancelled_while_held(error_server, error_channel, call)
        _until(lambda: recorder.read()[2] != codes_before, "the cancelled call was never counted")
    codes = recorder.read()[2]
    counted = {
        code: n - codes_before.get(code, 0) for code, n in codes.items() if n != codes_before.get(code)
    }
    assert counted == {counted_as: 1}
    # A handler's own bug is logged still; a status the cancel kept from the client is no error.
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == (["unexpected error in test.Errors/RaiseWhenLetGo"] if raised == b"bug" else [])


@pytest.mark.parametrize("character", ["j", "\u00e9"])
def test_a_message_echoing_a_huge_id_keeps_its_status(channel, character):
    # 20,000 characters would make the message a header larger than clients take, and the client
    # would see RESOURCE_EXHAUSTED instead of the daemon's answer.
    training = training_pb2_grpc.TrainingStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        training.GetJob(training_pb2.GetJobRequest(job_id=character * 20_000), timeout=10)
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (
        err.value.details()
    )
    assert "bytes left out" in err.value.details()
    assert len(err.value.details().encode()) < 2 * errors.MAX_MESSAGE_BYTES


def test_a_short_message_is_kept_whole_and_a_long_one_keeps_both_ends():
    assert errors.NotFound("run 'x' not found").message == "run 'x' not found"
    message = errors.NotFound("run " + "\u00e9" * 5000 + " not found: list them with tessera runs ls").message
    assert message.startswith("run \u00e9") and message.endswith("list them with tessera runs ls")
    assert len(message.encode()) <= errors.MAX_MESSAGE_BYTES + 64

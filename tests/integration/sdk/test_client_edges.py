"""The blocking and the asyncio client alike at the edges, against a real daemon: an exception
raised while the client makes a stream's requests, and a client used after close()."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
import tessera.datasets
from tessera.datasets import parse_arrays
from tessera.transport import _Requests
from tessera.v1 import training_pb2


class UserAbort(Exception):
    """What a caller's progress callback raises to stop an upload."""


def _abort(done: int, total: int) -> None:
    raise UserAbort(f"stopped at {done} of {total} bytes")


def _items():
    yield np.ones((1, 4), np.float32)
    yield np.array([object()], dtype=object)


BIG = np.zeros((200_000, 4), np.float32)


def test_an_exception_raised_making_an_uploads_requests_reaches_the_caller(client):
    with pytest.raises(UserAbort, match="stopped at"):
        client.datasets.push("clips", x=BIG, progress=_abort, chunk_size=65536)
    with pytest.raises(tessera.NotFound):
        client.datasets.get("clips")


def test_aio_an_exception_raised_making_an_uploads_requests_reaches_the_caller(daemon):
    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(UserAbort, match="stopped at"):
                await client.datasets.push("clips", x=BIG, progress=_abort, chunk_size=65536)
            with pytest.raises(tessera.NotFound):
                await client.datasets.get("clips")

    asyncio.run(asyncio.wait_for(scenario(), 60))


# Ctrl-C in a notebook while an upload's progress callback runs in gRPC's sending thread: the
# signal is raised in the waiting caller, and the thread sends the next chunk a moment later.
CTRL_C_MID_UPLOAD = """
import os, signal, sys, time
import numpy as np
import tessera

raised = False

def interrupt(signum, frame):
    global raised
    raised = True
    signal.default_int_handler(signum, frame)

# As a terminal's Ctrl-C, also where the test runs in the background (SIGINT ignored).
signal.signal(signal.SIGINT, interrupt)
calls = 0

def progress(done, total):
    global calls
    calls += 1
    if calls == 2:
        os.kill(os.getpid(), signal.SIGINT)
    if calls >= 2 and not raised:
        # Each chunk waits while the interrupt is not raised yet, so that the upload cannot end
        # first on a busy machine; chunks still go meanwhile (the thread that sends must not block).
        time.sleep(0.2)

with tessera.Client(sys.argv[1]) as client:
    for _ in range(5):  # several, as the abort was a race
        calls = 0
        raised = False
        try:
            # 16 chunks: the abort needed chunks left to send.
            client.datasets.push("clips", x=np.zeros(1 << 22, np.float32), progress=progress, chunk_size=1 << 20)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        time.sleep(0.3)
"""


def test_ctrl_c_mid_upload_raises_keyboard_interrupt_and_stores_nothing(client, daemon):
    """The blocking upload's own completion queue went with the KeyboardInterrupt while gRPC's
    thread still sent on it: the process aborted (SIGABRT) in most runs."""
    run = subprocess.run(
        [sys.executable, "-c", CTRL_C_MID_UPLOAD, daemon.target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and run.stdout.split() == ["interrupted"] * 5, run.stderr[-2000:]
    with pytest.raises(tessera.NotFound):
        client.datasets.get("clips")


def test_a_stream_whose_requests_stop_before_its_call_is_handed_back_is_cancelled(client, caplog):
    """A KeyboardInterrupt just after gRPC started an upload, before the call was handed back,
    leaves only its requests to stop: their end half-closed the stream, and the daemon stored
    the chunks sent so far as the whole artifact."""
    run_id = client.training.create_run("cut", create_experiment=True).run_id
    waiting, stopped = threading.Event(), threading.Event()

    def requests():
        header = training_pb2.UploadRunArtifactHeader(run_id=run_id, path="notes.md")
        yield training_pb2.UploadRunArtifactRequest(header=header)
        yield training_pb2.UploadRunArtifactRequest(chunk=b"first")
        waiting.set()
        stopped.wait(30)
        yield training_pb2.UploadRunArtifactRequest(chunk=b"second")
        yield training_pb2.UploadRunArtifactRequest(chunk=b"never sent")

    conn = client._conn
    feed = _Requests(requests())
    call = conn.method("Training", "UploadRunArtifact").future(feed, timeout=30, metadata=conn.metadata)
    assert waiting.wait(30)
    feed.stop()
    stopped.set()
    assert call.exception(30).code() == grpc.StatusCode.UNKNOWN
    assert list(client.training.list_artifacts(run_id)) == []
    # Cut short on purpose: gRPC's log record of it, with its traceback, is left out.
    assert "Exception iterating requests" not in caplog.text


def test_a_stream_item_that_cannot_be_sent_raises_its_value_error(client):
    with pytest.raises(ValueError, match="dtype object cannot be sent"):
        list(client.inference.predict_stream("affine", _items()))


def test_aio_a_stream_item_that_cannot_be_sent_raises_its_value_error(daemon):
    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(ValueError, match="dtype object cannot be sent"):
                async for _ in client.inference.predict_stream("affine", _items()):
                    pass

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_closed_client_refuses_calls_and_cuts_the_calls_in_flight(daemon, onnx_file):
    client = tessera.Client(daemon.target)
    client.models.push("m", onnx_file)
    changes = client.models.watch_changes()
    next(changes)
    client.close()
    with pytest.raises(tessera.Cancelled, match="closed while the call was in flight"):
        next(changes)
    with pytest.raises(ValueError, match="is closed; make a new one"):
        client.system.info()
    with pytest.raises(ValueError, match="is closed; make a new one"):
        list(client.models.list())
    client.close()


def test_aio_a_closed_client_refuses_calls_and_cuts_the_calls_in_flight(daemon, onnx_file):
    async def scenario() -> None:
        client = tessera.aio.Client(daemon.target)
        await client.models.push("m", onnx_file)
        changes = client.models.watch_changes()
        await anext(changes)
        await client.close()
        with pytest.raises(tessera.Cancelled, match="closed while the call was in flight"):
            await anext(changes)
        with pytest.raises(ValueError, match="is closed; make a new one"):
            await client.system.info()
        with pytest.raises(ValueError, match="is closed; make a new one"):
            async for _ in client.models.list():
                pass
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


BAD_TIMEOUTS = [-1.0, float("nan"), float("inf"), 1e12]


@pytest.mark.parametrize("seconds", BAD_TIMEOUTS)
def test_a_calls_timeout_outside_what_grpc_can_keep_is_refused_before_sending(client, seconds):
    x = np.ones((1, 4), np.float32)
    with pytest.raises(ValueError, match="timeout must be seconds above 0"):
        client.inference.predict("affine", x, timeout=seconds)
    with pytest.raises(ValueError, match="timeout must be seconds above 0"):
        list(client.models.watch_changes(follow=False, timeout=seconds))
    with pytest.raises(ValueError, match="timeouts must be a finite number of seconds above 0"):
        tessera.Client(client.target, timeout=seconds)


@pytest.mark.parametrize("seconds", BAD_TIMEOUTS)
def test_aio_a_calls_timeout_outside_what_grpc_can_keep_is_refused_before_sending(daemon, seconds):
    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as client:
            with pytest.raises(ValueError, match="timeout must be seconds above 0"):
                await client.inference.predict("affine", np.ones((1, 4), np.float32), timeout=seconds)
            with pytest.raises(ValueError, match="timeout must be seconds above 0"):
                async for _ in client.models.watch_changes(follow=False, timeout=seconds):
                    pass

    asyncio.run(scenario())


def test_aio_load_checks_and_parses_a_dataset_off_the_event_loop(daemon, monkeypatch):
    parsed_on: list[threading.Thread] = []

    def parse(header, data):
        parsed_on.append(threading.current_thread())
        return parse_arrays(header, data)

    monkeypatch.setattr(tessera.datasets, "parse_arrays", parse)

    async def scenario() -> threading.Thread:
        async with tessera.aio.Client(daemon.target) as client:
            await client.datasets.push("clips", x=np.arange(12.0).reshape(3, 4))
            arrays = await client.datasets.load("clips")
            np.testing.assert_array_equal(arrays["x"], np.arange(12.0).reshape(3, 4))
            return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert parsed_on and parsed_on[0] is not loop_thread


def test_push_with_a_format_it_does_not_know_names_the_formats(client, onnx_file):
    with pytest.raises(ValueError, match="format 'pt' is not one of ensemble, onnx, safetensors"):
        client.models.push("affine", onnx_file, format="pt")
    with pytest.raises(tessera.NotFound):
        client.models.get("affine")


def test_a_dataset_download_onto_a_directory_writes_the_clis_default_name_there_sync_and_aio(
    client, tmp_path
):
    """A dataset's download, as a model's (test_models), writes into a directory the file that
    `tessera datasets download` names: it was refused (IsADirectoryError), though the CLI wrote
    into one."""
    client.datasets.push("clips", x=np.zeros((10, 4), np.float32))
    target = tmp_path / "out"
    target.mkdir()
    assert client.datasets.download("clips", target).version == 1
    written = (target / "clips-v1.npz").read_bytes()
    client.datasets.push("clips", x=np.ones((10, 4), np.float32))

    async def scenario() -> int:
        async with tessera.aio.Client(client.target) as aio_client:
            return (await aio_client.datasets.download("clips", f"{tmp_path}/aio/")).version

    assert asyncio.run(scenario()) == 2
    assert (tmp_path / "aio" / "clips-v2.npz").read_bytes() != written
    assert not list(tmp_path.glob("**/.*.partial"))


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_an_upload_chunk_size_below_1_is_refused_before_sending(client, onnx_file, tmp_path, chunk_size):
    np.save(tmp_path / "x.npy", np.zeros((10, 4), np.float32))
    with pytest.raises(ValueError, match=f"chunk_size must be at least 1 byte, got {chunk_size}"):
        client.datasets.push("clips", tmp_path / "x.npy", chunk_size=chunk_size)
    with pytest.raises(ValueError, match=f"chunk_size must be at least 1 byte, got {chunk_size}"):
        client.datasets.push("clips", x=np.zeros((3, 3)), chunk_size=chunk_size)
    with pytest.raises(ValueError, match=f"chunk_size must be at least 1 byte, got {chunk_size}"):
        client.models.push("affine", onnx_file, chunk_size=chunk_size)
    with pytest.raises(tessera.NotFound):
        client.datasets.get("clips")
    with pytest.raises(tessera.NotFound):
        client.models.get("affine")


def test_aio_client_made_outside_its_event_loop_says_where_to_make_it(daemon):
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        tessera.aio.Client(daemon.target)

    async def make() -> tessera.aio.Client:
        return tessera.aio.Client(daemon.target)

    client = asyncio.run(make())

    async def info() -> None:
        await client.system.info()

    with pytest.raises(
        RuntimeError, match="used in the event loop it was made in; make one client per event loop"
    ):
        asyncio.run(info())

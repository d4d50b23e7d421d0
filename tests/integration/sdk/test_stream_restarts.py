"""The system's samples (`client.system.watch`) and a stream of predictions
(`client.inference.predict_stream`) go on across a daemon restart on the same address and data:
both ended with UNAVAILABLE. A watch goes on with the next sample (samples are not kept); a
prediction stream sends the items not yet sent on a new stream, and gives back the one sent
and not answered as failed, not sending it twice, unless the daemon's graceful stop ended the
stream saying that it did not run it."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tessera
import tessera.aio
from tessera.inference import Prediction
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.affine import affine_onnx
from tests.integration.sdk.test_registry_changes import reachable

RETRY = tessera.RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.5)
X = np.ones((1, 4), np.float32)


# Refused at once (a row of 3 values where the model takes 4): once it is answered, the daemon has
# read the item sent before it, which is then in flight there.
PROBE = ("probe", np.ones((1, 3), np.float32))


def assert_probe_answered(result: Prediction | BaseException) -> None:
    assert isinstance(result, Prediction), result
    assert result.request_id == "probe" and isinstance(result.error, tessera.InvalidArgument), result


def restarted(first: InProcessDaemon, data_dir: Path, grace: float = 0) -> InProcessDaemon:
    """`first` stopped (at once, or letting calls in flight finish within `grace` seconds), and
    a daemon started in its place (same port, same data)."""
    port = first.daemon.port
    first.stop(grace)
    return InProcessDaemon(daemon_settings(data_dir, listen=f"127.0.0.1:{port}")).start()


def wait_reachable(client: tessera.Client) -> None:
    # Channels to one address share their connection, which backs off after the restart's
    # refusals: the calls that are not retried wait until it is up again.
    deadline = time.monotonic() + 60
    while not reachable(client) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize("max_samples", [0, 3], ids=["unbounded", "bounded"])
def test_a_system_watch_goes_on_with_the_next_sample_after_a_restart(tmp_path, max_samples):
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    arrived: queue.Queue[float | BaseException] = queue.Queue()
    restarted_at: list[float] = []

    with tessera.Client(first.target, retry=RETRY) as client:

        def watch() -> None:
            try:
                for sample in client.system.watch(interval_ms=500, max_samples=max_samples):
                    taken = sample.time.ToDatetime().timestamp()
                    arrived.put(taken)
                    if restarted_at and taken > restarted_at[0] and not max_samples:
                        return
            except BaseException as error:
                arrived.put(error)

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert isinstance(arrived.get(timeout=30), float)
        restarted_at.append(time.time())
        second = restarted(first, data_dir)
        try:
            watcher.join(60)
            assert not watcher.is_alive()
        finally:
            second.stop()
    after = list(arrived.queue)
    assert all(isinstance(taken, float) for taken in after), after
    assert after and after[-1] > restarted_at[0]  # taken by the second daemon
    if max_samples:
        assert len(after) == max_samples - 1  # the one before the restart, then the rest


def test_a_prediction_stream_goes_on_after_a_restart_failing_the_item_in_flight(tmp_path):
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    later: queue.Queue[tuple[str, np.ndarray] | None] = queue.Queue()

    def items() -> Iterator[tuple[str, np.ndarray]]:
        yield "in-flight", X
        yield PROBE
        while (item := later.get()) is not None:
            yield item

    results: queue.Queue[Prediction | BaseException] = queue.Queue()
    with tessera.Client(first.target, retry=RETRY) as client:
        client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
        # A lone request waits 10 s for more rows: the restart comes while it is in flight.
        client.inference.load("affine", max_batch_size=8, max_queue_delay_us=10_000_000)

        def predict() -> None:
            try:
                for prediction in client.inference.predict_stream("affine", items()):
                    results.put(prediction)
            except BaseException as error:
                results.put(error)

        predictor = threading.Thread(target=predict)
        predictor.start()
        assert_probe_answered(results.get(timeout=30))
        second = restarted(first, data_dir)
        try:
            failed = results.get(timeout=60)
            assert isinstance(failed, Prediction), failed
            assert failed.request_id == "in-flight" and isinstance(failed.error, tessera.Unavailable)
            assert "was sent, but the stream broke before its answer came" in failed.error.message
            wait_reachable(client)
            client.inference.load("affine", max_queue_delay_us=0)
            later.put(("after", X))
            answered = results.get(timeout=60)
            assert isinstance(answered, Prediction), answered
            assert answered.request_id == "after" and answered.error is None
            np.testing.assert_allclose(answered["output"], X * 2 + 1)
            later.put(None)
            predictor.join(60)
            assert not predictor.is_alive()
        finally:
            later.put(None)
            second.stop()
    assert results.empty()


def test_an_asyncio_prediction_stream_fails_the_item_in_flight_and_ends_after_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    with tessera.Client(first.target) as client:
        client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
        client.inference.load("affine", max_batch_size=8, max_queue_delay_us=10_000_000)

    def items() -> Iterator[tuple[str, np.ndarray]]:
        yield "in-flight", X
        yield PROBE

    async def scenario() -> tuple[Prediction, list[Prediction]]:
        loop = asyncio.get_running_loop()
        # Not asyncio's own threads: stopping a daemon checks that no thread it does not know
        # of outlives it, and a pool's threads are the test's by their name.
        with ThreadPoolExecutor() as pool:
            async with tessera.aio.Client(first.target, retry=RETRY) as aio_client:
                predictions = aio_client.inference.predict_stream("affine", items())
                assert_probe_answered(await anext(predictions))
                second = await loop.run_in_executor(pool, restarted, first, data_dir)
                try:
                    # The stream made again has nothing left to send: it ends.
                    return await anext(predictions), [p async for p in predictions]
                finally:
                    await loop.run_in_executor(pool, second.stop)

    failed, rest = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert failed.request_id == "in-flight" and isinstance(failed.error, tessera.Unavailable)
    assert "it was not sent again" in failed.error.message
    assert rest == []


def test_a_prediction_stream_a_graceful_stop_ends_sends_what_the_daemon_did_not_run_again(tmp_path):
    """The stop answers the items the stream has read and ends it saying that it ran no other:
    the item sent after it stopped reading goes to the next daemon, not back failed."""
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    later: queue.Queue[tuple[str, np.ndarray] | None] = queue.Queue()
    sent = threading.Event()

    def items() -> Iterator[tuple[str, np.ndarray]]:
        yield "read", X
        sent.set()
        while (item := later.get()) is not None:
            yield item

    results: queue.Queue[Prediction | BaseException] = queue.Queue()
    health_channel = grpc.insecure_channel(first.target)
    with tessera.Client(first.target, retry=RETRY) as client, ThreadPoolExecutor(1) as pool:
        client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
        # A lone request waits 2 s for more rows: the stop comes while it is in flight.
        client.inference.load("affine", max_batch_size=8, max_queue_delay_us=2_000_000)

        def predict() -> None:
            try:
                for prediction in client.inference.predict_stream("affine", items()):
                    results.put(prediction)
            except BaseException as error:
                results.put(error)

        predictor = threading.Thread(target=predict)
        predictor.start()
        health = health_pb2_grpc.HealthStub(health_channel).Watch(health_pb2.HealthCheckRequest())
        try:
            assert next(health).status == health_pb2.HealthCheckResponse.SERVING
            assert sent.wait(30)
            restarting = pool.submit(restarted, first, data_dir, 60)
            # Said once the daemon stops, by then no longer reading the stream's items.
            assert next(health).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert list(health) == []  # the watch ends with the stop instead of holding its grace
            later.put(("unread", X))
            second = restarting.result(120)
            try:
                answered = [results.get(timeout=60) for _ in range(2)]
                assert all(isinstance(p, Prediction) and p.error is None for p in answered), answered
                assert [p.request_id for p in answered] == ["read", "unread"]
                later.put(None)
                predictor.join(60)
                assert not predictor.is_alive()
            finally:
                later.put(None)
                second.stop()
        finally:
            health.cancel()
            health_channel.close()
    assert results.empty()

"""client.training.log_metrics_stream against a real daemon: a failed batch raises saying which
points are stored (exactly those before it), and a stream whose connection is cut is sent again
from the first batch not known to be stored, ending with every point stored once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

import tessera
import tessera.aio


def _steps(count: int, bad_at: int = -1) -> Iterator[tuple[int, dict[str, float]]]:
    for step in range(count):
        yield step, {"" if step == bad_at else "loss": 1.0 / (step + 1)}


def _stored_steps(client: tessera.Client, run_id: str) -> list[int]:
    return [point.step for point in client.training.metric_history(run_id, "loss").points]


def test_a_failed_batch_raises_saying_which_points_are_stored(client) -> None:
    run_id = client.training.create_run("sdk-streams", create_experiment=True).run_id
    with pytest.raises(tessera.InvalidArgument) as info:
        client.training.log_metrics_stream(run_id, _steps(60, bad_at=25), batch_points=10)
    message = info.value.message
    assert message.startswith(
        "20 points are stored, up to step 19 (in the order sent), and none after them; resend from there"
    ), message
    assert "points[5].key" in message
    assert info.value.trailers["tessera-stored-batches"] == "2"
    assert _stored_steps(client, run_id) == list(range(20))


def test_a_failed_stream_that_stored_one_point_says_so_in_the_singular(client) -> None:
    # It said "1 points are stored".
    run_id = client.training.create_run("sdk-streams", create_experiment=True).run_id
    with pytest.raises(tessera.InvalidArgument) as info:
        client.training.log_metrics_stream(run_id, _steps(3, bad_at=1), batch_points=1)
    assert info.value.message.startswith(
        "1 point is stored, up to step 0 (in the order sent), and none after them; resend from there"
    ), info.value.message


def test_the_asyncio_client_says_the_same(daemon) -> None:
    async def log() -> tuple[str, tessera.InvalidArgument]:
        async with tessera.aio.Client(daemon.target, timeout=30) as aio:
            run_id = (await aio.training.create_run("sdk-streams", create_experiment=True)).run_id
            with pytest.raises(tessera.InvalidArgument) as info:
                await aio.training.log_metrics_stream(run_id, _steps(30, bad_at=3), batch_points=10)
            return run_id, info.value

    run_id, error = asyncio.run(log())
    assert error.message.startswith("no point of the stream is stored; resend from there"), error.message
    assert error.trailers["tessera-stored-batches"] == "0"
    with tessera.Client(daemon.target, timeout=30) as client:
        assert _stored_steps(client, run_id) == []


def test_a_cut_stream_is_sent_again_and_every_point_is_stored_once(daemon, proxy_to) -> None:
    proxy = proxy_to(daemon.daemon.port)
    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        run_id = client.training.create_run("sdk-streams", create_experiment=True).run_id

        def steps() -> Iterator[tuple[int, dict[str, float]]]:
            for step, metrics in _steps(100):
                if step == 55 and not proxy.cuts:
                    proxy.cut()
                yield step, metrics

        assert client.training.log_metrics_stream(run_id, steps(), batch_points=10) == 100
        assert proxy.cuts == 1
        assert _stored_steps(client, run_id) == list(range(100))
        (summary,) = client.training.run(run_id).metrics
        assert summary.count == 100


def test_a_stream_cut_more_often_than_it_may_resend_says_how_many_resends_it_made(daemon, proxy_to) -> None:
    # It said only which points are stored and gRPC's words for the cut, not that it had resent.
    proxy = proxy_to(daemon.daemon.port)
    retry = tessera.RetryPolicy(attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        run_id = client.training.create_run("sdk-streams", create_experiment=True).run_id

        def steps() -> Iterator[tuple[int, dict[str, float]]]:
            for step, metrics in _steps(100):
                if step in (55, 75) and proxy.cuts < (1 if step == 55 else 2):
                    proxy.cut()
                yield step, metrics

        with pytest.raises(tessera.Unavailable) as gave_up:
            client.training.log_metrics_stream(run_id, steps(), batch_points=10)
    assert proxy.cuts == 2
    message = gave_up.value.message
    assert message.startswith("at least "), message
    assert "(gave up logging metrics to run " in message, message
    assert "after 1 resend, the last failing UNAVAILABLE)" in message, message


def test_batches_over_the_daemons_limit_are_refused_before_sending(client) -> None:
    run_id = client.training.create_run("sdk-streams", create_experiment=True).run_id
    with pytest.raises(ValueError, match=re.escape("batch_points must be in 1..10000, got 10001")):
        client.training.log_metrics_stream(run_id, _steps(3), batch_points=10_001)
    assert client.training.log_metrics_stream(run_id, _steps(3), batch_points=10_000) == 3

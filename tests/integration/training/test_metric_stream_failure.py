"""A LogMetricsStream whose k-th batch fails stores exactly the batches before it, and says so in
its message and trailing metadata, so that a client knows where to resend from: through a real
daemon, for a batch refused on arrival and for one refused where it is stored."""

from __future__ import annotations

import re

import grpc
import lmdb
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.training import tracking as tracking_module

S = training_pb2
POINTS = 10  # per batch, one key, consecutive steps


def _batch(run_id: str, index: int, key: str = "loss") -> S.LogMetricsRequest:
    points = [S.MetricPoint(key=key, value=1.0, step=index * POINTS + i) for i in range(POINTS)]
    return S.LogMetricsRequest(run_id=run_id, points=points)


def _steps(stub: training_pb2_grpc.TrainingStub, run_id: str) -> list[int]:
    history = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss"))
    return [point.step for point in history.points]


@pytest.mark.parametrize(
    ("batches", "bad_at", "bad", "code"),
    [
        # An empty key is refused on arrival; a batch for a run that does not exist where it is
        # stored, after the batches queued behind it were sent.
        (6, 3, "no-key", grpc.StatusCode.INVALID_ARGUMENT),
        (6, 3, "no-run", grpc.StatusCode.NOT_FOUND),
        # Past the batches the daemon keeps waiting for their commit at once.
        (150, 100, "no-run", grpc.StatusCode.NOT_FOUND),
        (5, 0, "no-run", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_a_failed_batch_leaves_the_batches_before_it_stored_and_says_where_to_resume(
    channel, batches: int, bad_at: int, bad: str, code: grpc.StatusCode
) -> None:
    stub = training_pb2_grpc.TrainingStub(channel)
    run_id = stub.CreateRun(S.CreateRunRequest(experiment="streams")).run_id
    requests = [_batch(run_id, i) for i in range(batches)]
    requests[bad_at] = _batch(run_id, bad_at, "") if bad == "no-key" else _batch("no-such-run", bad_at)
    with pytest.raises(grpc.RpcError) as info:
        stub.LogMetricsStream(iter(requests))
    error = info.value
    assert error.code() == code, error.details()
    trailers = dict(error.trailing_metadata())
    assert trailers["tessera-stored-batches"] == str(bad_at)
    assert trailers["tessera-stored-points"] == str(bad_at * POINTS)
    if bad_at:
        assert (
            f"batch {bad_at} of the stream (counting from 0) failed; batches 0 to {bad_at - 1} "
            f"({bad_at * POINTS:,} points) are stored and nothing after them; resend from batch {bad_at}"
        ) in error.details(), error.details()
    else:
        assert "nothing of the stream is stored" in error.details(), error.details()
    # The batch's own reason follows.
    assert ("points[0].key" if bad == "no-key" else "no-such-run") in error.details()
    assert _steps(stub, run_id) == list(range(bad_at * POINTS))

    # Resending from the failed batch with it mended completes the run's points.
    requests[bad_at] = _batch(run_id, bad_at)
    assert stub.LogMetricsStream(iter(requests[bad_at:])).accepted == (batches - bad_at) * POINTS
    assert _steps(stub, run_id) == list(range(batches * POINTS))


def test_a_stream_that_stored_one_batch_of_one_point_says_so_in_the_singular(channel) -> None:
    # It said "batches 0 to 0 (1 points) are stored and nothing after them".
    stub = training_pb2_grpc.TrainingStub(channel)
    run_id = stub.CreateRun(S.CreateRunRequest(experiment="streams")).run_id
    point = S.LogMetricsRequest(run_id=run_id, points=[S.MetricPoint(key="loss", value=1.0, step=0)])
    with pytest.raises(grpc.RpcError) as info:
        stub.LogMetricsStream(iter([point, _batch(run_id, 1, "")]))
    assert info.value.details().startswith(
        "batch 1 of the stream (counting from 0) failed; batch 0 (1 point) is stored and nothing after "
        "it; resend from batch 1"
    ), info.value.details()


def test_an_unexpected_database_error_ends_the_stream_saying_what_it_stored(
    channel, monkeypatch, caplog
) -> None:
    # A database error the store does not map (a damaged page) while storing batch 2: the stream
    # ends INTERNAL, but as every failed stream does, with what it stored and where to resend.
    write_points = tracking_module.write_points

    def damaged(txn, experiment, run_id, points, now) -> int:
        if points[0].step == 2 * POINTS:
            raise lmdb.CorruptedError("mdb_put: MDB_CORRUPTED: Located page was wrong type")
        return write_points(txn, experiment, run_id, points, now)

    monkeypatch.setattr(tracking_module, "write_points", damaged)
    stub = training_pb2_grpc.TrainingStub(channel)
    run_id = stub.CreateRun(S.CreateRunRequest(experiment="streams")).run_id
    with pytest.raises(grpc.RpcError) as info:
        stub.LogMetricsStream(iter([_batch(run_id, i) for i in range(5)]))
    error = info.value
    assert error.code() == grpc.StatusCode.INTERNAL, error.details()
    trailers = dict(error.trailing_metadata())
    assert trailers["tessera-stored-batches"] == "2"
    assert trailers["tessera-stored-points"] == str(2 * POINTS)
    assert error.details().startswith(
        f"batch 2 of the stream (counting from 0) failed; batches 0 to 1 ({2 * POINTS} points) are "
        "stored and nothing after them; resend from batch 2"
    ), error.details()
    found = re.search(
        r"resend from batch 2 \(.*\): internal error \(id (\w+)\); the daemon's log has the details",
        error.details(),
    )
    assert found and "MDB_CORRUPTED" not in error.details(), error.details()
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == found.group(1)]
    assert logged and isinstance(logged[0].exc_info[1], lmdb.CorruptedError)
    assert _steps(stub, run_id) == list(range(2 * POINTS))

"""A LogMetricsStream whose k-th batch fails stores exactly the batches before it, and says so in
its message and trailing metadata, so that a client knows where to resend from: through a real
daemon, for a batch refused on arrival and for one refused where it is stored."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc

S = training_pb2
POINTS = 10  # per batch, one key, consecutive steps


def _batch(run_id: str, index: int, value: float = 1.0) -> S.LogMetricsRequest:
    points = [S.MetricPoint(key="loss", value=value, step=index * POINTS + i) for i in range(POINTS)]
    return S.LogMetricsRequest(run_id=run_id, points=points)


def _steps(stub: training_pb2_grpc.TrainingStub, run_id: str) -> list[int]:
    history = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss"))
    return [point.step for point in history.points]


@pytest.mark.parametrize(
    ("batches", "bad_at", "bad", "code"),
    [
        # NaN is refused on arrival; a batch for a run that does not exist where it is stored,
        # after the batches queued behind it were sent.
        (6, 3, "nan", grpc.StatusCode.INVALID_ARGUMENT),
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
    requests[bad_at] = _batch(run_id, bad_at, float("nan")) if bad == "nan" else _batch("no-such-run", bad_at)
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
    assert ("not a finite number" if bad == "nan" else "no-such-run") in error.details()
    assert _steps(stub, run_id) == list(range(bad_at * POINTS))

    # Resending from the failed batch with it mended completes the run's points.
    requests[bad_at] = _batch(run_id, bad_at)
    assert stub.LogMetricsStream(iter(requests[bad_at:])).accepted == (batches - bad_at) * POINTS
    assert _steps(stub, run_id) == list(range(batches * POINTS))

"""GetMetricHistory over long, irregular metrics: downsampled answers keep the curve's shape,
long answers come in pages that join into exactly the stored points, bad tokens are refused."""

from __future__ import annotations

import random

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc

S = training_pb2


@pytest.fixture(scope="module")
def tracker(training_daemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(training_daemon.channel())


def _log_batches(tracker, run_id: str, points: list[tuple[int, float]], batch: int = 500) -> None:
    requests = [
        S.LogMetricsRequest(
            run_id=run_id,
            points=[S.MetricPoint(key="loss", value=v, step=s) for s, v in points[i : i + batch]],
        )
        for i in range(0, len(points), batch)
    ]
    assert tracker.LogMetricsStream(iter(requests)).accepted == len(points)


def _pages(tracker, **fields) -> list[S.MetricHistory]:
    pages = [tracker.GetMetricHistory(S.GetMetricHistoryRequest(**fields))]
    while pages[-1].next_page_token:
        pages.append(
            tracker.GetMetricHistory(
                S.GetMetricHistoryRequest(**fields, page_token=pages[-1].next_page_token)
            )
        )
    return pages


def _irregular_run(tracker, name: str) -> tuple[str, dict[int, float], list[int], list[int]]:
    """A run whose steps are sparse (every 100th), then dense, logged out of order, with planted
    spikes far apart and one step written twice; returns the stored points and the spikes."""
    rng = random.Random(7)
    run_id = tracker.CreateRun(S.CreateRunRequest(experiment="history", name=name)).run_id
    stored = {step: 1.0 + 0.1 * rng.random() for step in range(0, 200_000, 100)}
    stored.update({step: 0.5 + 0.1 * rng.random() for step in range(200_000, 215_000)})
    highs = list(range(10_000, 200_000, 40_000))
    lows = list(range(30_000, 200_000, 40_000))
    stored.update({step: 50.0 + i for i, step in enumerate(highs)})
    stored.update({step: -50.0 - i for i, step in enumerate(lows)})
    points = list(stored.items())
    rng.shuffle(points)
    _log_batches(tracker, run_id, [(150_000, 1000.0)])  # rewritten below: the last write wins
    _log_batches(tracker, run_id, points)
    return run_id, stored, highs, lows


def test_downsampled_history_keeps_each_regions_extremes_over_irregular_steps(tracker) -> None:
    run_id, stored, highs, lows = _irregular_run(tracker, "irregular")
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=100))
    steps = [p.step for p in history.points]
    assert history.downsampled and history.total_points == len(stored) and not history.next_page_token
    assert len(steps) <= 100 and steps == sorted(set(steps))
    assert all(stored[p.step] == p.value for p in history.points)  # real points, latest values
    assert {min(stored), max(stored), *highs, *lows} <= set(steps)
    summary = next(m for m in tracker.GetRun(S.GetRunRequest(run_id=run_id)).metrics if m.key == "loss")
    assert (summary.count, summary.max, summary.min) == (
        len(stored),
        max(stored.values()),
        min(stored.values()),
    )

    ranged = tracker.GetMetricHistory(
        S.GetMetricHistoryRequest(
            run_id=run_id, key="loss", max_points=20, start_step=25_001, end_step=120_000
        )
    )
    inside = {s: v for s, v in stored.items() if 25_001 <= s <= 120_000}
    assert ranged.downsampled and ranged.total_points == len(inside) and len(ranged.points) <= 20
    assert {p.step for p in ranged.points} >= {
        min(inside),
        max(inside),
        *(s for s in highs + lows if s in inside),
    }
    assert all(inside[p.step] == p.value for p in ranged.points)


def test_every_point_comes_in_pages_that_join_into_the_stored_points(tracker) -> None:
    run_id, stored, _, _ = _irregular_run(tracker, "paged")
    pages = _pages(tracker, run_id=run_id, key="loss", page_size=1000)
    assert all(len(page.points) <= 1000 for page in pages) and len(pages) == -(-len(stored) // 1000)
    assert all(page.total_points == len(stored) and not page.downsampled for page in pages)
    assert [(p.step, p.value) for page in pages for p in page.points] == sorted(stored.items())

    default = _pages(tracker, run_id=run_id, key="loss")
    assert [len(page.points) for page in default] == [10_000, len(stored) - 10_000]

    ranged = _pages(tracker, run_id=run_id, key="loss", start_step=199_950, end_step=200_999, page_size=300)
    expected = sorted((s, v) for s, v in stored.items() if 199_950 <= s <= 200_999)
    assert [(p.step, p.value) for page in ranged for p in page.points] == expected
    assert [len(page.points) for page in ranged] == [300, 300, 300, 100]


def test_downsampled_pages_join_into_the_one_page_answer(tracker) -> None:
    run_id, _, _, _ = _irregular_run(tracker, "paged-downsampled")
    whole = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=400))
    pages = _pages(tracker, run_id=run_id, key="loss", max_points=400, page_size=40)
    assert len(pages) > 5 and all(len(page.points) <= 40 and page.downsampled for page in pages)
    assert [p for page in pages for p in page.points] == list(whole.points)


def test_a_downsampled_answer_over_sparse_steps_holds_max_points(tracker) -> None:
    run_id = tracker.CreateRun(S.CreateRunRequest(experiment="history")).run_id
    stored = {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, 1_000_000: 0.5}
    _log_batches(tracker, run_id, list(stored.items()))
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=4))
    assert history.downsampled and history.total_points == 6
    # The one group's extremes are the first and last point: the two more come from between.
    assert [(p.step, p.value) for p in history.points] == [(0, 5.0), (2, 3.0), (4, 1.0), (1_000_000, 0.5)]


def test_history_page_tokens_and_sizes_are_checked(tracker) -> None:
    run_id = tracker.CreateRun(S.CreateRunRequest(experiment="history")).run_id
    _log_batches(tracker, run_id, [(step, float(step)) for step in range(50)])
    first = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss", page_size=10))
    assert first.next_page_token

    def refused(**fields) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="loss", **fields))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return info.value

    assert "page_token" in refused(page_token="not-a-token").details()
    assert "page_token" in refused(page_token=first.next_page_token[:-4]).details()
    assert "different query" in refused(page_token=first.next_page_token, max_points=20).details()
    assert "different query" in refused(page_token=first.next_page_token, start_step=5).details()
    # Step 0 alone is another query than every step, which an unset end_step reads.
    assert "different query" in refused(page_token=first.next_page_token, end_step=0).details()
    assert "page_size" in refused(page_size=-1).details()

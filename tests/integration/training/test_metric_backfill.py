"""A store written before metric history summaries existed: the daemon builds them once at start,
logs it, and answers history reads as if the points had been logged through it."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store, encode_metric_point, encode_record
from tesserad.training.spec import default_mode
from tesserad.training.tracking import MAX_BATCH_POINTS, Tracking
from tests.conftest import InProcessDaemon, daemon_settings

S = training_pb2
LOGGER = "tesserad.training.tracking"


def _write_with_the_old_layout(data_dir: Path, metrics: dict[str, dict[int, float]], now: float) -> str:
    """A run with points and summaries stored as tesserad wrote them before buckets: no bucket
    table, no mark in `meta`."""
    old_tables = [t for t in STORE_TABLES if t != "metric_buckets"]
    store = Store.open(data_dir / "store", map_size=2**30, tables=old_tables)
    try:
        run_id = Tracking(store).create_run("old").run_id
        with store.write() as txn:
            for key, points in metrics.items():
                for step, value in points.items():
                    txn.put("metrics", (run_id, key, step), encode_metric_point(value, now + step))
                low, high = min(points.values()), max(points.values())
                summary = {
                    "key": key,
                    "last": points[max(points)],
                    "min": low,
                    "max": high,
                    "best": low if default_mode(key) == "min" else high,
                    "count": len(points),
                    "last_step": max(points),
                }
                txn.put("metric_summaries", (run_id, key), encode_record("metric_summary", 1, summary))
    finally:
        store.close()
    return run_id


def _history(stub, run_id: str, key: str, max_points: int) -> list[tuple[int, float, float]]:
    points = []
    request = S.GetMetricHistoryRequest(run_id=run_id, key=key, max_points=max_points)
    while True:
        page = stub.GetMetricHistory(request)
        points += [(p.step, p.value, p.time.ToNanoseconds() / 1e9) for p in page.points]
        if not page.next_page_token:
            return points
        request.page_token = page.next_page_token


def test_a_store_from_before_summaries_is_backfilled_once_at_start(data_dir: Path, caplog) -> None:
    rng = random.Random(3)
    now = float(int(time.time()))
    metrics = {
        "loss": {step: rng.uniform(0, 1) for step in rng.sample(range(300_000), 20_000)},
        "acc": {step: step / 10 for step in range(10)},
    }
    run_id = _write_with_the_old_layout(data_dir, metrics, now)

    caplog.set_level(logging.INFO, logger=LOGGER)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        built = [r for r in caplog.records if r.getMessage() == "built metric history summaries"]
        assert len(built) == 1 and (built[0].metrics, built[0].points) == (2, 20_010)
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        # The same points logged through today's write path give the same answers.
        fresh = stub.CreateRun(S.CreateRunRequest(experiment="new")).run_id
        for key, points in metrics.items():
            batch = [S.MetricPoint(key=key, value=v, step=s) for s, v in points.items()]
            for point in batch:
                point.time.FromNanoseconds(int((now + point.step) * 1e9))
            # In requests of at most MAX_BATCH_POINTS, the most one may hold.
            for start in range(0, len(batch), MAX_BATCH_POINTS):
                stub.LogMetrics(
                    S.LogMetricsRequest(run_id=fresh, points=batch[start : start + MAX_BATCH_POINTS])
                )
            for max_points in (0, 10, 1000):
                assert _history(stub, run_id, key, max_points) == _history(stub, fresh, key, max_points)
            assert _history(stub, run_id, key, 0) == [
                (s, metrics[key][s], now + s) for s in sorted(metrics[key])
            ]
        summaries = [
            {
                m.key: (m.count, m.min, m.max, m.last, m.last_step)
                for m in stub.GetRun(S.GetRunRequest(run_id=r)).metrics
            }
            for r in (run_id, fresh)
        ]
        assert summaries[0] == summaries[1]
    finally:
        daemon.stop()

    caplog.clear()
    again = InProcessDaemon(daemon_settings(data_dir)).start()
    again.stop()
    assert not [r for r in caplog.records if "metric history summaries" in r.getMessage()]

"""A store where jobs stored NaN or infinite metric points (before tracking refused them), their
buckets extended as if NaN compared like a number: the daemon keeps the points and rebuilds those
metrics' buckets and summaries once at start, so extremes, history and leaderboards skip NaN as
for points logged today."""

from __future__ import annotations

import logging
import math
from operator import attrgetter
from pathlib import Path

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store, encode_metric_point, pack_int
from tesserad.training import metric_buckets
from tesserad.training.metric_buckets import Sample, metric_prefix
from tesserad.training.tracking import NONFINITE_PURGED, _refresh_summary
from tests.conftest import InProcessDaemon, daemon_settings

S = training_pb2
LOGGER = "tesserad.training.tracking"
NAN, INF = math.nan, math.inf


def _old_bucket(samples: list[Sample]) -> metric_buckets.Bucket:
    """A bucket as an old daemon's min() and max() made it: NaN first in the list wins both."""
    value = attrgetter("value")
    return metric_buckets.Bucket(len(samples), min(samples, key=value), max(samples, key=value))


def _write_as_an_old_daemon(data_dir: Path, points: dict[str, dict[int, float]], now: float) -> None:
    """Each run's val_loss points stored, buckets and summary included, as a daemon before
    non-finite points were kept out of runs wrote a job's metrics (a NaN first in a bucket
    its extremes); such a daemon left no mark in `meta`."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.delete("meta", NONFINITE_PURGED)
            for run_id, values in points.items():
                metric = metric_prefix(run_id, "val_loss")
                for step, value in values.items():
                    txn.put("metrics", (run_id, "val_loss", step), encode_metric_point(value, now + step))
                samples = sorted(Sample(step, value, now + step) for step, value in values.items())
                metric_buckets.add(txn, metric, samples, ())
                for level in range(1, metric_buckets.LEVELS + 1):
                    # One bucket per level holds every point here (steps below 16).
                    key = metric + pack_int(level) + pack_int(0)
                    txn.put_packed(
                        metric_buckets.TABLE, key, metric_buckets.encode_bucket(_old_bucket(samples))
                    )
                _refresh_summary(txn, "old", run_id, "val_loss")
    finally:
        store.close()


def test_metrics_holding_nonfinite_points_a_job_stored_are_rebuilt_once_at_start(
    data_dir: Path, caplog
) -> None:
    now = 1_700_000_000.0
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        runs = [stub.CreateRun(S.CreateRunRequest(experiment="old")).run_id for _ in range(4)]
        stub.LogMetrics(
            S.LogMetricsRequest(
                run_id=runs[3], points=[S.MetricPoint(key="val_loss", value=0.4, step=s) for s in range(3)]
            )
        )
    finally:
        daemon.stop()
    old = {
        runs[0]: {0: NAN, 1: 0.9, 2: 0.2, 3: NAN},
        runs[1]: {0: 0.5, 1: INF, 2: -INF, 3: 0.6},
        runs[2]: {0: NAN, 1: NAN},
    }
    _write_as_an_old_daemon(data_dir, old, now)
    # As the old daemon left it: NaN, first, was run 0's min and max.
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            before = metric_buckets.totals(txn, metric_prefix(runs[0], "val_loss"))
            assert before is not None and math.isnan(before.low.value)
    finally:
        store.close()

    caplog.set_level(logging.INFO, logger=LOGGER)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        rebuilt = [r for r in caplog.records if r.getMessage().startswith("rebuilt the summaries")]
        assert len(rebuilt) == 1 and rebuilt[0].metrics == 3
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        for run_id, values in old.items():
            page = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="val_loss"))
            assert [p.step for p in page.points] == sorted(values)
        listed = stub.ListRuns(S.ListRunsRequest(experiment="old")).runs
        summaries = {run.run_id: {m.key: m for m in run.metrics}["val_loss"] for run in listed}
        assert (summaries[runs[0]].min, summaries[runs[0]].max) == (0.2, 0.9)
        assert math.isnan(summaries[runs[0]].last)
        assert (summaries[runs[1]].min, summaries[runs[1]].max, summaries[runs[1]].last) == (-INF, INF, 0.6)
        assert math.isnan(summaries[runs[2]].min) and summaries[runs[2]].count == 2
        board = stub.Leaderboard(S.LeaderboardRequest(experiment="old", metric="val_loss"))
        assert [(e.run.run_id, e.value) for e in board.entries] == [
            (runs[1], -INF),
            (runs[0], 0.2),
            (runs[3], 0.4),
        ]
    finally:
        daemon.stop()

    caplog.clear()
    again = InProcessDaemon(daemon_settings(data_dir)).start()
    again.stop()
    assert not [r for r in caplog.records if "non-finite" in r.getMessage()]

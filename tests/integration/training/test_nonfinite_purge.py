"""A store where jobs stored NaN or infinite metric points (before tracking kept them out of
runs): the daemon drops them once at start, so downsampled history, summaries and leaderboards
read as if only the finite points had been logged."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store, encode_metric_point
from tesserad.training import metric_buckets
from tesserad.training.metric_buckets import Sample, metric_prefix
from tesserad.training.tracking import NONFINITE_PURGED, _refresh_summary
from tests.conftest import InProcessDaemon, daemon_settings

S = training_pb2
LOGGER = "tesserad.training.tracking"
NAN, INF = math.nan, math.inf


def _write_as_an_old_daemon(data_dir: Path, points: dict[str, dict[int, float]], now: float) -> None:
    """Each run's val_loss points stored, buckets and summary included, as a daemon before
    non-finite points were kept out of runs wrote a job's metrics; such a daemon left no mark
    of a purge in `meta`."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.delete("meta", NONFINITE_PURGED)
            for run_id, values in points.items():
                metric = metric_prefix(run_id, "val_loss")
                for step, value in values.items():
                    txn.put("metrics", (run_id, "val_loss", step), encode_metric_point(value, now + step))
                samples = [Sample(step, value, now + step) for step, value in values.items()]
                metric_buckets.add(txn, metric, samples, ())
                _refresh_summary(txn, "old", run_id, "val_loss")
    finally:
        store.close()


def test_nonfinite_points_a_job_stored_are_dropped_once_at_start(data_dir: Path, caplog) -> None:
    now = 1_700_000_000.0
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        runs = [stub.CreateRun(S.CreateRunRequest(experiment="old")).run_id for _ in range(5)]
        # A run with only finite points, logged through today's write path.
        stub.LogMetrics(
            S.LogMetricsRequest(
                run_id=runs[3], points=[S.MetricPoint(key="val_loss", value=0.4, step=s) for s in range(3)]
            )
        )
    finally:
        daemon.stop()
    diverged = {step: 1.0 - step / 1000 for step in range(300)} | {step: NAN for step in range(300, 310)}
    spikes = {step: 0.5 + step / 1000 for step in range(200)} | {7: INF, 50: -INF}
    late_best = {0: NAN} | {step: 0.1 + step / 1000 for step in range(1, 40)}
    old = {runs[0]: diverged, runs[1]: spikes, runs[2]: late_best, runs[4]: {0: NAN, 1: NAN}}
    _write_as_an_old_daemon(data_dir, old, now)

    caplog.set_level(logging.INFO, logger=LOGGER)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        purged = [r for r in caplog.records if r.getMessage() == "dropped non-finite metric points"]
        assert len(purged) == 1 and (purged[0].metrics, purged[0].points) == (4, 15)
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        for run_id, values in old.items():
            finite = sorted((s, v) for s, v in values.items() if math.isfinite(v))
            for max_points in (0, 4, 50):
                page = stub.GetMetricHistory(
                    S.GetMetricHistoryRequest(run_id=run_id, key="val_loss", max_points=max_points)
                )
                assert page.total_points == len(finite)
                assert all(math.isfinite(p.value) for p in page.points)
            everything = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run_id, key="val_loss"))
            assert [(p.step, p.value) for p in everything.points] == finite
        listed = stub.ListRuns(S.ListRunsRequest(experiment="old")).runs
        summaries = {run.run_id: {m.key: m for m in run.metrics} for run in listed}
        assert set(summaries) == set(runs)
        for run_id in runs[:3]:
            finite = {s: v for s, v in old[run_id].items() if math.isfinite(v)}
            summary = summaries[run_id]["val_loss"]
            last_step = max(finite)
            assert (summary.count, summary.last_step, summary.last) == (
                len(finite),
                last_step,
                finite[last_step],
            )
            assert (summary.min, summary.max) == (min(finite.values()), max(finite.values()))
        assert "val_loss" not in summaries[runs[4]]
        board = stub.Leaderboard(S.LeaderboardRequest(experiment="old", metric="val_loss"))
        assert [(e.run.run_id, e.value) for e in board.entries] == [
            (runs[2], late_best[1]),
            (runs[3], 0.4),
            (runs[1], spikes[0]),
            (runs[0], diverged[299]),
        ]
    finally:
        daemon.stop()

    caplog.clear()
    again = InProcessDaemon(daemon_settings(data_dir)).start()
    again.stop()
    assert not [r for r in caplog.records if "non-finite" in r.getMessage()]

"""A run holds at most MAX_RUN_METRICS distinct metric keys, and an answer carries the first
MAX_ANSWERED_METRICS of them, so that one answer within gRPC's default receive limit (4 MiB) always
carries a run, whatever its params and tags: through a real daemon, and after a restart that
counts the keys of a store written without the counts."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training import tracking
from tesserad.training.tracking import MAX_ANSWERED_METRICS, MAX_RUN_METRICS, METRIC_COUNTS, METRICS_COUNTED
from tests.conftest import InProcessDaemon, daemon_settings

S = training_pb2
RECEIVE_LIMIT = 4 * 2**20
BATCH = 1000


def _key(i: int) -> str:
    """The longest key there may be: 250 characters, 400 bytes of UTF-8."""
    return f"{i:05d}" + "é" * 150 + "k" * 95


KEYS = [_key(i) for i in range(MAX_RUN_METRICS)]


def _log(stub: training_pb2_grpc.TrainingStub, run_id: str, keys: list[str], value: float, step: int) -> int:
    accepted = 0
    for at in range(0, len(keys), BATCH):
        points = [S.MetricPoint(key=key, value=value, step=step) for key in keys[at : at + BATCH]]
        accepted += stub.LogMetrics(S.LogMetricsRequest(run_id=run_id, points=points)).accepted
    return accepted


def _refused(stub: training_pb2_grpc.TrainingStub, run_id: str, keys: list[str]) -> grpc.RpcError:
    points = [S.MetricPoint(key=key, value=9.0, step=7) for key in keys]
    with pytest.raises(grpc.RpcError) as info:
        stub.LogMetrics(S.LogMetricsRequest(run_id=run_id, points=points))
    error = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"at most {MAX_RUN_METRICS:,} distinct metric keys" in error.details(), error.details()
    assert "another run" in error.details(), error.details()
    return error


def _listed(
    stub: training_pb2_grpc.TrainingStub, run_id: str, page_size: int = 0
) -> tuple[list[S.MetricSummary], int]:
    """Every summary ListRunMetrics pages out for the run, and the pages they took."""
    summaries: list[S.MetricSummary] = []
    token, pages = "", 0
    while True:
        request = S.ListRunMetricsRequest(run_id=run_id, page_size=page_size, page_token=token)
        page = stub.ListRunMetrics(request)
        assert page.ByteSize() < RECEIVE_LIMIT
        summaries += page.metrics
        pages += 1
        token = page.next_page_token
        if not token:
            return summaries, pages


def _forget_counts(data_dir) -> None:
    """Leave the store as a tesserad from before the runs' counts of metric keys did."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(METRIC_COUNTS, ()) > 0
            assert txn.delete("meta", METRICS_COUNTED)
    finally:
        store.close()


def test_a_run_at_the_metric_key_cap_stays_readable_and_refuses_one_more_key(tmp_path) -> None:
    settings = daemon_settings(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        # Params and tags near their 2 MiB, and the longest keys: the largest run there may be.
        tags = {f"t{i}": "v" * 8000 for i in range(261)}
        full = stub.CreateRun(S.CreateRunRequest(experiment="keys", tags=tags)).run_id
        lean = stub.CreateRun(S.CreateRunRequest(experiment="keys")).run_id
        small = stub.CreateRun(S.CreateRunRequest(experiment="keys")).run_id
        assert _log(stub, full, KEYS, 0.0, 0) == MAX_RUN_METRICS
        assert _log(stub, lean, KEYS, 1.0, 0) == MAX_RUN_METRICS
        assert _log(stub, small, KEYS[:1], 2.0, 0) == 1

        left_out = MAX_RUN_METRICS - MAX_ANSWERED_METRICS
        got = stub.GetRun(S.GetRunRequest(run_id=full))
        assert [summary.key for summary in got.metrics] == KEYS[:MAX_ANSWERED_METRICS]
        assert got.metrics_left_out == left_out and len(got.tags) == 261
        assert got.ByteSize() < RECEIVE_LIMIT
        seen, token = [], ""
        while True:
            page = stub.ListRuns(S.ListRunsRequest(experiment="keys", page_token=token))
            assert page.ByteSize() < RECEIVE_LIMIT
            seen += [run.run_id for run in page.runs]
            assert {run.metrics_left_out for run in page.runs} <= {0, left_out}
            token = page.next_page_token
            if not token:
                break
        assert seen == [small, lean, full]
        # A key past the answered ones filters, ranks and reads like any other.
        last = KEYS[-1]
        over = S.MetricFilter(key=last, field=S.SUMMARY_FIELD_LAST, op=S.COMPARISON_LT, value=0.5)
        filtered = stub.ListRuns(S.ListRunsRequest(experiment="keys", metrics=[over]))
        assert [run.run_id for run in filtered.runs] == [full]
        board = stub.Leaderboard(
            S.LeaderboardRequest(experiment="keys", metric=last, mode=job_spec_pb2.OPTIMIZE_MODE_MIN, limit=1)
        )
        assert [(entry.run.run_id, entry.value) for entry in board.entries] == [(full, 0.0)]
        assert len(board.entries[0].run.metrics) == MAX_ANSWERED_METRICS
        history = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=lean, key=last))
        assert [(point.step, point.value) for point in history.points] == [(0, 1.0)]
        compared = stub.CompareRuns(S.CompareRunsRequest(run_ids=[lean, small]))
        assert len(compared.metrics) == MAX_ANSWERED_METRICS and compared.ByteSize() < RECEIVE_LIMIT
        assert compared.metrics_left_out == left_out
        # Every key of the largest run pages out, each page within one answer.
        listed, pages = _listed(stub, full, page_size=1000)
        assert [summary.key for summary in listed] == KEYS and pages == MAX_RUN_METRICS // 1000
        # A comparison carries each run twice: the largest run fits none, and says what to do.
        with pytest.raises(grpc.RpcError) as info:
            stub.CompareRuns(S.CompareRunsRequest(run_ids=[full, small]))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "read each with GetRun" in info.value.details(), info.value.details()

        # One more key is refused, with the batch it came in: nothing of it is stored.
        _refused(stub, full, [KEYS[0], "one-more"])
        _refused(stub, lean, ["one-more"])
        got = stub.GetRun(S.GetRunRequest(run_id=full))
        assert len(got.metrics) == MAX_ANSWERED_METRICS and got.metrics_left_out == left_out
        assert {summary.count for summary in got.metrics} == {1}
        # The keys a run has take points as before.
        assert _log(stub, full, KEYS, 3.0, 1) == MAX_RUN_METRICS
        got = stub.GetRun(S.GetRunRequest(run_id=full))
        assert {(summary.count, summary.last) for summary in got.metrics} == {(2, 3.0)}
        assert got.metrics_left_out == left_out
    finally:
        daemon.stop()

    _forget_counts(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        _refused(stub, full, ["one-more"])
        _refused(stub, lean, [KEYS[0], "one-more"])
        assert _log(stub, lean, KEYS[:BATCH], 4.0, 1) == BATCH
        assert _log(stub, small, KEYS[1:BATCH], 5.0, 1) == BATCH - 1
        assert len(stub.GetRun(S.GetRunRequest(run_id=small)).metrics) == BATCH
    finally:
        daemon.stop()


def test_a_run_takes_per_class_metrics_of_a_thousand_classes(daemon) -> None:
    stub = training_pb2_grpc.TrainingStub(daemon.channel())
    run_id = stub.CreateRun(S.CreateRunRequest(experiment="classes")).run_id
    keys = [f"{name}/class_{c:04d}" for c in range(1000) for name in ("precision", "recall", "f1")]
    assert _log(stub, run_id, keys, 0.5, 0) == 3000
    got = stub.GetRun(S.GetRunRequest(run_id=run_id))
    assert [summary.key for summary in got.metrics] == sorted(keys)[:MAX_ANSWERED_METRICS]
    assert got.metrics_left_out == 3000 - MAX_ANSWERED_METRICS


def test_a_run_an_older_store_gave_more_keys_answers_the_first_by_key_and_says_how_many_are_left_out(
    tmp_path, monkeypatch
) -> None:
    more = MAX_RUN_METRICS + 3
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        tags = {f"t{i}": "v" * 8000 for i in range(261)}
        big = stub.CreateRun(S.CreateRunRequest(experiment="old", tags=tags)).run_id
        # A tesserad from before the cap took every key it was sent.
        monkeypatch.setattr(tracking, "MAX_RUN_METRICS", more)
        keys = [_key(i) for i in range(more)]
        assert _log(stub, big, keys[::-1], 1.0, 3) == more
        monkeypatch.undo()

        got = stub.GetRun(S.GetRunRequest(run_id=big))
        assert got.ByteSize() < RECEIVE_LIMIT
        assert [summary.key for summary in got.metrics] == keys[:MAX_ANSWERED_METRICS]
        assert got.metrics_left_out == more - MAX_ANSWERED_METRICS
        (listed,) = stub.ListRuns(S.ListRunsRequest(experiment="old")).runs
        assert listed.metrics == got.metrics and listed.metrics_left_out == got.metrics_left_out
        # A key left out of the run is still ranked by, and read through its history.
        last = keys[-1]
        (ordered,) = stub.ListRuns(S.ListRunsRequest(experiment="old", order_by=S.RunOrder(metric=last))).runs
        assert ordered.run_id == big and ordered.metrics_left_out == more - MAX_ANSWERED_METRICS
        board = stub.Leaderboard(S.LeaderboardRequest(experiment="old", metric=last, limit=1))
        assert [(entry.run.run_id, entry.value) for entry in board.entries] == [(big, 1.0)]
        history = stub.GetMetricHistory(S.GetMetricHistoryRequest(run_id=big, key=last))
        assert [(point.step, point.value) for point in history.points] == [(3, 1.0)]
    finally:
        daemon.stop()


def test_every_metric_key_of_a_run_pages_out_past_those_its_answers_carry(daemon) -> None:
    stub = training_pb2_grpc.TrainingStub(daemon.channel())
    run_id = stub.CreateRun(S.CreateRunRequest(experiment="listed")).run_id
    other = stub.CreateRun(S.CreateRunRequest(experiment="listed")).run_id
    keys = [f"{name}/class_{c:04d}" for c in range(1000) for name in ("precision", "recall", "f1")]
    assert _log(stub, run_id, keys, 0.5, 0) == 3000
    assert _log(stub, run_id, keys[-1:], 0.25, 1) == 1
    assert _log(stub, other, keys[:1], 0.5, 0) == 1

    listed, pages = _listed(stub, run_id, page_size=1000)
    assert [summary.key for summary in listed] == sorted(keys) and pages == 3
    (latest,) = [summary for summary in listed if summary.key == keys[-1]]
    assert (latest.last, latest.min, latest.count, latest.last_step) == (0.25, 0.25, 2, 1)
    got = stub.GetRun(S.GetRunRequest(run_id=run_id))
    assert list(got.metrics) == listed[:MAX_ANSWERED_METRICS]
    # page_size 0 is the default page of 100; one past the maximum is capped to it.
    assert _listed(stub, run_id) == (listed, 30)
    assert _listed(stub, run_id, page_size=1001) == (listed, 3)
    # A deleted run's keys list as its GetRun answers it.
    stub.DeleteRun(S.DeleteRunRequest(run_id=run_id))
    assert _listed(stub, run_id, page_size=1000) == (listed, 3)

    def refused(request: S.ListRunMetricsRequest, code: grpc.StatusCode, says: str) -> None:
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRunMetrics(request)
        assert info.value.code() == code, info.value.details()
        assert says in info.value.details(), info.value.details()

    refused(S.ListRunMetricsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
    refused(S.ListRunMetricsRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND, "ListRuns lists them")
    refused(S.ListRunMetricsRequest(run_id=run_id, page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, ">= 0")
    token = stub.ListRunMetrics(S.ListRunMetricsRequest(run_id=run_id, page_size=1)).next_page_token
    refused(
        S.ListRunMetricsRequest(run_id=other, page_token=token),
        grpc.StatusCode.INVALID_ARGUMENT,
        "different query",
    )


def test_compare_runs_compares_the_first_keys_of_the_runs_together_and_counts_the_rest(daemon) -> None:
    stub = training_pb2_grpc.TrainingStub(daemon.channel())
    many = stub.CreateRun(S.CreateRunRequest(experiment="compared")).run_id
    few = stub.CreateRun(S.CreateRunRequest(experiment="compared")).run_id
    keys = [f"m{i:04d}" for i in range(3000)]
    assert _log(stub, many, keys, 1.0, 0) == 3000
    # A key past those `many` answers, and keys before and after all of its own.
    assert _log(stub, few, ["a", "m2500", "z"], 2.0, 0) == 3

    compared = stub.CompareRuns(S.CompareRunsRequest(run_ids=[many, few]))
    assert [metric.key for metric in compared.metrics] == ["a", *keys[: MAX_ANSWERED_METRICS - 1]]
    first = compared.metrics[0]
    assert (list(first.present), list(first.values)) == ([False, True], [0.0, 2.0])
    assert {(tuple(metric.present), tuple(metric.values)) for metric in compared.metrics[1:]} == {
        ((True, False), (1.0, 0.0))
    }
    # m1999 to m2999, and z: no comparison says a run lacks a key it has.
    assert compared.metrics_left_out == 3002 - MAX_ANSWERED_METRICS

    # Runs whose keys together fit one comparison leave none out.
    small = stub.CreateRun(S.CreateRunRequest(experiment="compared")).run_id
    assert _log(stub, small, ["a", "b"], 3.0, 0) == 2
    compared = stub.CompareRuns(S.CompareRunsRequest(run_ids=[few, small]))
    assert [metric.key for metric in compared.metrics] == ["a", "b", "m2500", "z"]
    assert compared.metrics_left_out == 0

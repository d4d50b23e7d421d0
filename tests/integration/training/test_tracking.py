"""Experiment tracking over gRPC, as an external training script would use it."""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import math
import time

import grpc
import numpy as np
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, job_spec_pb2, training_pb2, training_pb2_grpc
from tests.integration.training.conftest import follow, job_spec, of_kind, submit

S = training_pb2


@pytest.fixture(scope="module")
def tracker(training_daemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(training_daemon.channel())


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _run(tracker, experiment: str, name: str = "", **params: str) -> S.Run:
    return tracker.CreateRun(S.CreateRunRequest(experiment=experiment, name=name, params=params))


def _log(tracker, run_id: str, key: str, values: list[float], first_step: int = 0) -> int:
    points = [S.MetricPoint(key=key, value=v, step=first_step + i) for i, v in enumerate(values)]
    return tracker.LogMetrics(S.LogMetricsRequest(run_id=run_id, points=points)).accepted


def test_experiments_are_created_listed_and_counted(tracker) -> None:
    tracker.CreateExperiment(S.CreateExperimentRequest(name="exp-a", description="first", tags={"team": "x"}))
    assert _error(lambda: tracker.CreateExperiment(S.CreateExperimentRequest(name="exp-a"))).code() == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    _run(tracker, "exp-a")
    got = tracker.GetExperiment(S.GetExperimentRequest(name="exp-a"))
    assert got.description == "first" and got.tags == {"team": "x"} and got.run_count == 1
    _run(tracker, "exp-b")  # created on first use
    listed = tracker.ListExperiments(S.ListExperimentsRequest(name_prefix="exp-", page_size=1))
    assert [e.name for e in listed.experiments] == ["exp-a"] and listed.next_page_token
    rest = tracker.ListExperiments(
        S.ListExperimentsRequest(name_prefix="exp-", page_token=listed.next_page_token)
    )
    assert [e.name for e in rest.experiments] == ["exp-b"] and not rest.next_page_token
    missing = _error(lambda: tracker.GetExperiment(S.GetExperimentRequest(name="exp-zz")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "exp-zz" in missing.details()
    bad = _error(lambda: tracker.CreateExperiment(S.CreateExperimentRequest(name="Bad")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "name 'Bad'" in bad.details()


def test_metrics_summaries_and_history(tracker) -> None:
    run = _run(tracker, "hist", lr="0.1")
    assert _log(tracker, run.run_id, "loss", [5.0, 3.0, 4.0, 1.0, 2.0]) == 5
    requests = [
        S.LogMetricsRequest(run_id=run.run_id, points=[S.MetricPoint(key="acc", value=i / 10, step=i)])
        for i in range(10)
    ]
    assert tracker.LogMetricsStream(iter(requests)).accepted == 10
    got = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    loss = next(m for m in got.metrics if m.key == "loss")
    assert (loss.last, loss.min, loss.max, loss.count, loss.last_step) == (2.0, 1.0, 5.0, 5, 4)
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run.run_id, key="loss"))
    assert [(p.step, p.value) for p in history.points] == [(0, 5.0), (1, 3.0), (2, 4.0), (3, 1.0), (4, 2.0)]
    assert all(p.time.seconds > 0 for p in history.points)
    ranged = tracker.GetMetricHistory(
        S.GetMetricHistoryRequest(run_id=run.run_id, key="loss", start_step=1, end_step=3)
    )
    assert [p.step for p in ranged.points] == [1, 2, 3] and ranged.total_points == 3


def test_a_history_range_can_end_at_step_0_and_an_unset_end_reads_to_the_last_step(tracker) -> None:
    run = _run(tracker, "hist-0")
    _log(tracker, run.run_id, "loss", [5.0, 3.0, 4.0])

    def steps(**range_: int) -> list[int]:
        request = S.GetMetricHistoryRequest(run_id=run.run_id, key="loss", **range_)
        return [p.step for p in tracker.GetMetricHistory(request).points]

    assert steps(start_step=0, end_step=0) == [0]
    assert steps(end_step=1) == [0, 1]
    # A client from before end_step was optional sends nothing for 0: every step, as it did.
    assert steps(start_step=0) == steps() == [0, 1, 2]
    assert steps(start_step=1) == [1, 2]
    backwards = _error(
        lambda: tracker.GetMetricHistory(
            S.GetMetricHistoryRequest(run_id=run.run_id, key="loss", start_step=2, end_step=0)
        )
    )
    assert backwards.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_step <= end_step (end_step unset for every step from start_step on)" in backwards.details()


def test_a_stream_of_batches_for_an_unknown_run_is_not_found_and_logs_nothing(tracker, caplog) -> None:
    requests = [
        S.LogMetricsRequest(run_id="no-such-run", points=[S.MetricPoint(key="loss", value=1.0, step=i)])
        for i in range(20)
    ]
    with caplog.at_level(logging.WARNING):
        error = _error(lambda: tracker.LogMetricsStream(iter(requests)))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-run" in error.details()
        # An unread failed future is reported when it is collected: let the call's objects go.
        tracker.ListExperiments(S.ListExperimentsRequest())
        time.sleep(0.3)
        gc.collect()
    # A rejected batch is the client's mistake, answered with a status: no error or traceback
    # in the daemon's log (asyncio reports futures whose exception nobody read).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_history_downsampling_keeps_first_last_and_extremes(tracker) -> None:
    run = _run(tracker, "hist")
    values = [float((i * 37) % 101) for i in range(1000)]
    values[500], values[777] = -50.0, 500.0
    _log(tracker, run.run_id, "loss", values)
    history = tracker.GetMetricHistory(
        S.GetMetricHistoryRequest(run_id=run.run_id, key="loss", max_points=20)
    )
    steps = [p.step for p in history.points]
    assert history.downsampled and history.total_points == 1000 and len(steps) <= 20
    assert {0, 999, 500, 777} <= set(steps) and steps == sorted(steps)
    small = _error(
        lambda: tracker.GetMetricHistory(
            S.GetMetricHistoryRequest(run_id=run.run_id, key="loss", max_points=3)
        )
    )
    assert small.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_points" in small.details()


def test_bad_metrics_and_params_are_refused(tracker) -> None:
    run = _run(tracker, "bad", lr="0.1")
    cases = [
        ([S.MetricPoint(key="", value=1)], "points[0].key"),
        (
            [S.MetricPoint(key="b", value=2), S.MetricPoint(key="a", value=1, step=2, next_step=True)],
            "points[1]: step is 2 and next_step is set; set the step, or next_step alone for the step "
            "after the key's last",
        ),
        ([S.MetricPoint(key="a", value=1, step=-1)], "points[0].step must be >= 0"),
        (
            # Bounded only by the message size, a million points held the daemon for seconds.
            [S.MetricPoint(key="a", value=1, step=step) for step in range(10_001)],
            "a LogMetrics request holds at most 10000 points, this one 10001: send them in several "
            "calls (or LogMetricsStream batches), none of these is stored",
        ),
    ]
    for points, words in cases:
        error = _error(lambda p=points: tracker.LogMetrics(S.LogMetricsRequest(run_id=run.run_id, points=p)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    assert not tracker.GetRun(S.GetRunRequest(run_id=run.run_id)).metrics  # a refused batch stores nothing
    missing = _error(lambda: _log(tracker, "run-missing", "a", [1.0]))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "run-missing" in missing.details()
    changed = _error(lambda: tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"lr": "0.2"})))
    assert (
        changed.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "already has lr = '0.1'" in changed.details()
    )
    tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"lr": "0.1", "batch": "8"}))
    assert tracker.GetRun(S.GetRunRequest(run_id=run.run_id)).params == {"lr": "0.1", "batch": "8"}
    ended = tracker.UpdateRun(
        S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED, set_tags={"k": "v"})
    )
    assert ended.status == S.RUN_STATUS_SUCCEEDED and ended.end_time.seconds > 0 and ended.tags == {"k": "v"}
    again = _error(
        lambda: tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_FAILED))
    )
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_list_runs_filters_leaderboard_and_compare(tracker) -> None:
    runs = []
    for i, (lr, best) in enumerate([("0.1", 0.5), ("0.01", 0.2), ("0.1", 0.9)]):
        run = _run(tracker, "board", name=f"r{i}", lr=lr, seed=str(i))
        _log(tracker, run.run_id, "val_loss", [1.0, best])
        runs.append(run)
    tracker.UpdateRun(S.UpdateRunRequest(run_id=runs[2].run_id, status=S.RUN_STATUS_FAILED))

    listed = tracker.ListRuns(S.ListRunsRequest(experiment="board"))
    assert [r.name for r in listed.runs] == ["r2", "r1", "r0"]  # newest first
    by_param = tracker.ListRuns(
        S.ListRunsRequest(experiment="board", params=[S.ParamFilter(key="lr", value="0.1")])
    )
    assert [r.name for r in by_param.runs] == ["r2", "r0"]
    both = tracker.ListRuns(
        S.ListRunsRequest(
            experiment="board",
            statuses=[S.RUN_STATUS_RUNNING],
            params=[S.ParamFilter(key="lr", value="0.1")],
            metrics=[
                S.MetricFilter(key="val_loss", field=S.SUMMARY_FIELD_MIN, op=S.COMPARISON_LT, value=0.6)
            ],
        )
    )
    assert [r.name for r in both.runs] == ["r0"]
    page = tracker.ListRuns(S.ListRunsRequest(experiment="board", page_size=2))
    rest = tracker.ListRuns(
        S.ListRunsRequest(experiment="board", page_size=2, page_token=page.next_page_token)
    )
    assert [r.name for r in page.runs] == ["r2", "r1"] and [r.name for r in rest.runs] == ["r0"]
    no_op = _error(lambda: tracker.ListRuns(S.ListRunsRequest(metrics=[S.MetricFilter(key="val_loss")])))
    assert no_op.code() == grpc.StatusCode.INVALID_ARGUMENT and "metrics[0].op" in no_op.details()

    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="board", metric="val_loss", limit=2))
    assert [(e.rank, e.run.name, e.value) for e in board.entries] == [(1, "r1", 0.2), (2, "r0", 0.5)]
    worst = tracker.Leaderboard(
        S.LeaderboardRequest(experiment="board", metric="val_loss", mode=job_spec_pb2.OPTIMIZE_MODE_MAX)
    )
    assert [e.run.name for e in worst.entries] == ["r0", "r1", "r2"]  # max of each run: 1.0 ties, stable

    compared = tracker.CompareRuns(S.CompareRunsRequest(run_ids=[runs[0].run_id, runs[1].run_id]))
    params = {p.key: p for p in compared.params}
    assert params["lr"].values == ["0.1", "0.01"] and params["lr"].differs
    assert list(compared.metrics[0].values) == [0.5, 0.2]
    one = _error(lambda: tracker.CompareRuns(S.CompareRunsRequest(run_ids=[runs[0].run_id])))
    assert one.code() == grpc.StatusCode.INVALID_ARGUMENT and "two or more" in one.details()


def test_list_runs_not_equal_skips_the_value_and_the_runs_without_the_metric(tracker) -> None:
    for name, best in (("half", 0.5), ("other", 0.25)):
        _log(tracker, _run(tracker, "not-equal", name=name).run_id, "val_loss", [1.0, best])
    _run(tracker, "not-equal", name="unlogged")

    def listed(field: S.SummaryField.ValueType, value: float) -> list[str]:
        ne = S.MetricFilter(key="val_loss", field=field, op=S.COMPARISON_NE, value=value)
        return [
            r.name for r in tracker.ListRuns(S.ListRunsRequest(experiment="not-equal", metrics=[ne])).runs
        ]

    assert listed(S.SUMMARY_FIELD_LAST, 0.5) == ["other"]
    assert listed(S.SUMMARY_FIELD_MIN, 0.25) == ["half"]
    assert listed(S.SUMMARY_FIELD_MAX, 1.0) == []
    unknown = _error(
        lambda: tracker.ListRuns(S.ListRunsRequest(metrics=[S.MetricFilter(key="val_loss", op=7)]))
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.details() == "metrics[0].op: set a comparison (LT, LE, GT, GE, EQ or NE)"


def test_out_of_range_point_time_is_invalid(tracker) -> None:
    run = _run(tracker, "times")
    point = S.MetricPoint(key="a", value=1.0)
    point.time.seconds = -62135596801
    error = _error(lambda: tracker.LogMetrics(S.LogMetricsRequest(run_id=run.run_id, points=[point])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "points[0].time" in error.details()
    missing = _error(lambda: tracker.LogMetrics(S.LogMetricsRequest(points=[S.MetricPoint(key="a")])))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and "run_id is required" in missing.details()


def _tampered(token: str) -> str:
    """`token` with the key it resumes after replaced by bytes no listing ever wrote (its query
    fingerprint, which anyone can compute, left as it was)."""
    decoded = json.loads(base64.urlsafe_b64decode(token))
    return base64.urlsafe_b64encode(json.dumps({**decoded, "a": "ff00"}).encode()).decode()


def test_a_tampered_page_token_is_invalid_not_internal(tracker) -> None:
    for i in range(2):
        _run(tracker, "tampered", name=f"r{i}")
    _run(tracker, "tampered-too")  # a second experiment, so that a first page has a next token
    runs = tracker.ListRuns(S.ListRunsRequest(experiment="tampered", page_size=1))
    experiments = tracker.ListExperiments(S.ListExperimentsRequest(page_size=1))
    calls = [
        lambda: tracker.ListRuns(
            S.ListRunsRequest(experiment="tampered", page_size=1, page_token=_tampered(runs.next_page_token))
        ),
        lambda: tracker.ListExperiments(
            S.ListExperimentsRequest(page_size=1, page_token=_tampered(experiments.next_page_token))
        ),
    ]
    for call in calls:
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "not one this server issued" in error.details()


def test_a_metric_key_of_many_bytes_is_refused_naming_the_field(tracker) -> None:
    run = _run(tracker, "wide-keys")
    fits, too_wide = "é" * 200, "é" * 250  # 400 and 500 bytes in UTF-8, both within 250 characters
    assert _log(tracker, run.run_id, fits, [1.0, 2.0]) == 2
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run.run_id, key=fits))
    assert [p.value for p in history.points] == [1.0, 2.0]
    calls = {
        "points[0].key": lambda: _log(tracker, run.run_id, too_wide, [1.0]),
        "key": lambda: tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run.run_id, key=too_wide)),
        "metric": lambda: tracker.Leaderboard(S.LeaderboardRequest(experiment="wide-keys", metric=too_wide)),
    }
    for field, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}: metric key") and "400 bytes" in error.details()


def test_tags_and_param_keys_are_checked_like_metric_keys(tracker) -> None:
    run = _run(tracker, "tag-limits", name="tagged")
    long_key, long_value = "k" * 251, "v" * 8001
    cases = [
        (
            lambda: tracker.CreateExperiment(S.CreateExperimentRequest(name="tag-x", tags={"": "v"})),
            "tags: key ''",
        ),
        (
            lambda: tracker.CreateRun(S.CreateRunRequest(experiment="tag-limits", tags={long_key: "v"})),
            "tags: key 'kkk",
        ),
        (
            lambda: tracker.CreateRun(S.CreateRunRequest(experiment="tag-limits", tags={"k": long_value})),
            "tags['k']: value is longer than 8000 characters",
        ),
        (
            lambda: tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, set_tags={"a\nb": "v"})),
            "set_tags: key 'a\\nb'",
        ),
        (
            lambda: tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"a\x00b": "v"})),
            "params: key 'a\\x00b'",
        ),
    ]
    for call, words in cases:
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    assert "without NUL or newlines" in error.details()
    kept = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert kept.tags == {} and kept.params == {}
    with pytest.raises(grpc.RpcError):
        tracker.GetExperiment(S.GetExperimentRequest(name="tag-x"))
    ok = tracker.UpdateRun(
        S.UpdateRunRequest(run_id=run.run_id, set_tags={"note": "v" * 8000, "k" * 250: "v"})
    )
    assert len(ok.tags["note"]) == 8000


def test_an_experiment_description_and_tags_are_kept_to_16_kib_together(tracker) -> None:
    limit = 16 * 2**10
    error = _error(
        lambda: tracker.CreateExperiment(
            S.CreateExperimentRequest(name="long-text", description="d" * (limit - 5), tags={"a": "bcdef"})
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "an experiment's description and tags take at most 16 KiB together, these take 16 KiB "
        "(16385 bytes); keep longer documentation elsewhere and link to it"
    )
    with pytest.raises(grpc.RpcError):
        tracker.GetExperiment(S.GetExperimentRequest(name="long-text"))
    tracker.CreateExperiment(
        S.CreateExperimentRequest(name="long-text", description="d" * (limit - 6), tags={"a": "bcdef"})
    )
    assert len(tracker.GetExperiment(S.GetExperimentRequest(name="long-text")).description) == limit - 6
    # UpdateExperiment holds what it leaves to the same limit.
    error = _error(
        lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="long-text", set_tags={"b": "c"}))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("an experiment's description and tags take at most 16 KiB together")
    assert dict(tracker.GetExperiment(S.GetExperimentRequest(name="long-text")).tags) == {"a": "bcdef"}
    updated = tracker.UpdateExperiment(
        S.UpdateExperimentRequest(name="long-text", description="short", set_tags={"b": "c"})
    )
    assert (updated.description, dict(updated.tags)) == ("short", {"a": "bcdef", "b": "c"})


def test_nan_and_inf_points_are_kept_and_listings_filters_and_boards_place_them(tracker) -> None:
    """As MLflow stores them: a summary's min and max skip NaN (NaN where every point is), an
    order puts NaN after every number in either direction and before runs without the metric,
    a comparison is false for NaN (but != true), and a Leaderboard never ranks NaN."""
    nan, inf = math.nan, math.inf
    logged = {"a": [0.5, 0.3], "b": [0.4, nan], "c": [nan, nan], "d": [inf], "e": []}
    runs = {}
    for name, values in logged.items():
        runs[name] = _run(tracker, "diverged", name=name).run_id
        _log(tracker, runs[name], "loss" if values else "acc", values or [1.0])
    by_id = {run_id: name for name, run_id in runs.items()}

    def listed(**asked) -> list[str]:
        return [
            by_id[r.run_id] for r in tracker.ListRuns(S.ListRunsRequest(experiment="diverged", **asked)).runs
        ]

    loss = tracker.GetRun(S.GetRunRequest(run_id=runs["c"])).metrics
    assert [(m.key, math.isnan(m.last), math.isnan(m.min), math.isnan(m.max), m.count) for m in loss] == [
        ("loss", True, True, True, 2)
    ]
    b = tracker.GetRun(S.GetRunRequest(run_id=runs["b"])).metrics[0]
    assert (b.min, b.max, math.isnan(b.last), b.last_step) == (0.4, 0.4, True, 1)
    up = S.RunOrder(metric="loss", field=S.SUMMARY_FIELD_LAST, direction=S.SORT_DIRECTION_ASCENDING)
    down = S.RunOrder(metric="loss", field=S.SUMMARY_FIELD_LAST, direction=S.SORT_DIRECTION_DESCENDING)
    # Of equal places (NaN, or no metric), newest first.
    assert listed(order_by=up) == ["a", "d", "c", "b", "e"]
    assert listed(order_by=down) == ["d", "a", "c", "b", "e"]
    pages, token = [], ""
    while True:
        page = tracker.ListRuns(
            S.ListRunsRequest(experiment="diverged", order_by=up, page_size=1, page_token=token)
        )
        pages += [by_id[r.run_id] for r in page.runs]
        if not (token := page.next_page_token):
            break
    assert pages == ["a", "d", "c", "b", "e"]
    # Several keys sort every run: NaN after numbers, before no value, ties by the next key.
    start = S.RunOrder(attribute="start_time", direction=S.SORT_DIRECTION_ASCENDING)
    assert listed(order_keys=[up, start]) == ["a", "d", "b", "c", "e"]
    assert listed(order_keys=[down, start]) == ["d", "a", "b", "c", "e"]
    below = S.MetricFilter(key="loss", op=S.COMPARISON_LT, value=1.0)
    assert listed(metrics=[below]) == ["a"]
    assert listed(
        metrics=[S.MetricFilter(key="loss", field=S.SUMMARY_FIELD_MIN, op=S.COMPARISON_LT, value=1.0)]
    ) == [
        "b",
        "a",
    ]
    assert listed(metrics=[S.MetricFilter(key="loss", op=S.COMPARISON_NE, value=0.3)]) == ["d", "c", "b"]
    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="diverged", metric="loss"))
    assert [(by_id[e.run.run_id], e.value) for e in board.entries] == [("a", 0.3), ("b", 0.4), ("d", inf)]
    last = tracker.Leaderboard(
        S.LeaderboardRequest(experiment="diverged", metric="loss", field=S.SUMMARY_FIELD_LAST)
    )
    assert [by_id[e.run.run_id] for e in last.entries] == ["a", "d"]

    # A history downsampled over NaN keeps its first and last points and each group's finite extremes.
    spiky = _run(tracker, "diverged-history").run_id
    values = [1.0 / (step + 1) if step % 7 else nan for step in range(500)]
    _log(tracker, spiky, "loss", values)
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=spiky, key="loss", max_points=20))
    assert history.downsampled and history.total_points == 500 and len(history.points) == 20
    kept = {p.step: p.value for p in history.points}
    assert math.isnan(kept[0]) and kept[499] == values[499] and kept[1] == 0.5
    assert sum(math.isnan(v) for v in kept.values()) == 1


def test_run_filters_that_match_nothing_by_construction_are_refused(tracker) -> None:
    run = _run(tracker, "filters", lr="0.1")
    _log(tracker, run.run_id, "loss", [1.0])
    cases = {
        "metrics[0].value": S.ListRunsRequest(
            metrics=[S.MetricFilter(key="loss", op=S.COMPARISON_LT, value=float("nan"))]
        ),
        "params[1].key": S.ListRunsRequest(
            params=[S.ParamFilter(key="lr", value="0.1"), S.ParamFilter(key="", value="0.1")]
        ),
    }
    for field, request in cases.items():
        error = _error(lambda r=request: tracker.ListRuns(r))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), (
            error.details()
        )
    infinite = S.MetricFilter(key="loss", op=S.COMPARISON_LT, value=float("inf"))
    assert [
        r.run_id for r in tracker.ListRuns(S.ListRunsRequest(experiment="filters", metrics=[infinite])).runs
    ] == [run.run_id]


@pytest.mark.parametrize("field", ["params", "tags"])
@pytest.mark.parametrize("key", ["k" * 251, "l\nr", "l\x00r"])
def test_a_param_or_tag_filter_key_no_run_can_have_is_refused(tracker, field: str, key: str) -> None:
    # It matched nothing, as a key of no run does: a misspelt filter read as no run having it.
    _run(tracker, "filter-keys", lr="0.1")
    pairs = {"params": S.ParamFilter, "tags": S.TagFilter}[field]
    request = S.ListRunsRequest(
        experiment="filter-keys", **{field: [pairs(key="lr", value="0.1"), pairs(key=key)]}
    )
    error = _error(lambda: tracker.ListRuns(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"{field}[1].key {key[:80]!r} is no {field[:-1]} key: keys are 1 to 250 characters without NUL or "
        "newlines"
    )


def test_an_ended_run_takes_new_metrics_and_params_but_no_changed_param(tracker) -> None:
    """As in MLflow, where a test-set score is logged to the run once training has ended."""
    run = _run(tracker, "ended-params", lr="0.1")
    _log(tracker, run.run_id, "val_f1", [0.25, 0.5])
    tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))
    assert _log(tracker, run.run_id, "test_f1", [0.75], first_step=1) == 1
    assert _log(tracker, run.run_id, "val_f1", [0.875], first_step=2) == 1
    tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"seed": "1", "lr": "0.1"}))
    changed = _error(lambda: tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"lr": "0.2"})))
    assert changed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has lr = '0.1'" in changed.details()
    ended = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert ended.status == S.RUN_STATUS_SUCCEEDED and ended.params == {"lr": "0.1", "seed": "1"}
    summaries = {m.key: (m.last, m.max, m.count) for m in ended.metrics}
    assert summaries == {"test_f1": (0.75, 0.75, 1), "val_f1": (0.875, 0.875, 3)}
    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="ended-params", metric="test_f1"))
    assert [(e.run.run_id, e.value) for e in board.entries] == [(run.run_id, 0.75)]
    tagged = tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, set_tags={"reviewed": "yes"}))
    assert tagged.tags == {"reviewed": "yes"}  # tags annotate a run, ended or not


def test_a_deleted_run_still_takes_no_metrics_nor_params(tracker) -> None:
    run = _run(tracker, "deleted-late")
    tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))
    tracker.DeleteRun(S.DeleteRunRequest(run_id=run.run_id))
    for call in (
        lambda: _log(tracker, run.run_id, "test_f1", [0.5]),
        lambda: tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={"seed": "1"})),
    ):
        assert _error(call).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not tracker.GetRun(S.GetRunRequest(run_id=run.run_id)).metrics


def test_a_jobs_ended_run_takes_the_users_metrics_and_names_the_job_for_a_param_it_set(tracker) -> None:
    job = submit(tracker, job_spec("mlp", experiment="job-late", epochs=1))
    follow(tracker, job.job_id)
    run_id = tracker.GetJob(S.GetJobRequest(job_id=job.job_id)).run_id
    assert _log(tracker, run_id, "test_f1", [0.5], first_step=4) == 1
    taken = _error(lambda: tracker.LogParams(S.LogParamsRequest(run_id=run_id, params={"seed": "1"})))
    assert taken.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert taken.details() == (
        f"params['seed']: run {run_id!r} already has seed = '7', which its job {job.job_id} set from "
        "its spec; a logged param cannot change: log yours under another key, such as 'user.seed'"
    )
    tracker.LogParams(S.LogParamsRequest(run_id=run_id, params={"user.seed": "1"}))
    run = tracker.GetRun(S.GetRunRequest(run_id=run_id))
    assert run.params["user.seed"] == "1" and run.params["seed"] == "7"
    assert {m.key: m.last for m in run.metrics}["test_f1"] == 0.5


def test_an_empty_run_id_is_invalid_in_every_run_call(tracker) -> None:
    calls = {
        "GetRun": lambda: tracker.GetRun(S.GetRunRequest()),
        "UpdateRun": lambda: tracker.UpdateRun(S.UpdateRunRequest(set_tags={"k": "v"})),
        "LogParams": lambda: tracker.LogParams(S.LogParamsRequest(params={"k": "v"})),
        "GetMetricHistory": lambda: tracker.GetMetricHistory(S.GetMetricHistoryRequest(key="loss")),
    }
    for name, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error.details() == "run_id is required", name


def test_a_jobs_nan_validation_metric_is_kept_in_its_run_and_never_ranked(training_daemon, tracker) -> None:
    """A job's validation split may hold NaN (a dataset can allow it): its NaN val_loss is stored
    in its run as in its events, as MLflow keeps it; the run's summaries and downsampled history
    stay readable, and a Leaderboard by it ranks no run."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    x[40] = np.nan  # a validation row
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x[:, 0] > 0).astype(np.int64))
    header = datasets_pb2.UploadDatasetHeader(
        name="flat-nan-val", format=datasets_pb2.DATASET_FORMAT_NPZ, allow_nonfinite=True
    )
    header.splits.indices.splits.extend(
        [
            datasets_pb2.SplitIndices(name="train", indices=list(range(36))),
            datasets_pb2.SplitIndices(name="val", indices=list(range(36, 48))),
        ]
    )
    datasets_pb2_grpc.DatasetsStub(training_daemon.channel()).UploadDataset(
        iter(
            [
                datasets_pb2.UploadDatasetRequest(header=header),
                datasets_pb2.UploadDatasetRequest(chunk=buffer.getvalue()),
            ]
        )
    )
    spec = job_spec("mlp", experiment="nan-val", epochs=5)
    spec.data.dataset.name = "flat-nan-val"
    job = submit(tracker, spec)
    epochs = of_kind(follow(tracker, job.job_id), "epoch")
    assert len(epochs) == 5 and all(math.isnan(e.metrics["val_loss"]) for e in epochs)
    run = tracker.GetRun(S.GetRunRequest(run_id=tracker.GetJob(S.GetJobRequest(job_id=job.job_id)).run_id))
    summaries = {m.key: m for m in run.metrics}
    val_loss = summaries["val_loss"]
    assert val_loss.count == 5 and all(math.isnan(v) for v in (val_loss.last, val_loss.min, val_loss.max))
    assert summaries["val_accuracy"].count == 5
    history = tracker.GetMetricHistory(
        S.GetMetricHistoryRequest(run_id=run.run_id, key="val_loss", max_points=4)
    )
    assert len(history.points) == 4 and history.total_points == 5
    assert all(math.isnan(p.value) for p in history.points)
    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="nan-val", metric="val_accuracy"))
    assert [e.run.run_id for e in board.entries] == [run.run_id]
    assert not tracker.Leaderboard(S.LeaderboardRequest(experiment="nan-val", metric="val_loss")).entries


def test_error_metrics_a_regression_job_logs_rank_lowest_first_by_default(tracker) -> None:
    """val_mae and val_rmse (what a regression job reports) are errors: lower is better."""
    for name, values in (("good", [0.9, 0.1]), ("poor", [0.9, 0.8])):
        run = _run(tracker, "regression-board", name=name)
        _log(tracker, run.run_id, "val_mae", values)
        _log(tracker, run.run_id, "val_rmse", values)
    for metric in ("val_mae", "val_rmse"):
        board = tracker.Leaderboard(S.LeaderboardRequest(experiment="regression-board", metric=metric))
        assert [(e.run.name, e.value) for e in board.entries] == [("good", 0.1), ("poor", 0.8)], metric


def test_ending_a_run_again_with_its_status_is_a_repeat_not_an_error(tracker) -> None:
    """The SDK retries UpdateRun when the daemon is unavailable; a retry of an end that took
    effect must not fail."""
    run = _run(tracker, "end-twice")
    ended = tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))
    again = tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))
    assert again.status == S.RUN_STATUS_SUCCEEDED and again.end_time == ended.end_time
    other = _error(
        lambda: tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_FAILED))
    )
    assert (
        other.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended (succeeded)" in other.details()
    )


def test_a_page_of_runs_with_long_params_stays_under_the_default_receive_limit(tracker) -> None:
    # Each run takes 900 KB of params within the per-param limit; a default page of six used to
    # exceed gRPC's default receive limit (4 MiB), so no client could list the experiment.
    params = {f"p{i}": "v" * 6000 for i in range(150)}
    made = [
        tracker.CreateRun(S.CreateRunRequest(experiment="wide-runs", params=params)).run_id for _ in range(6)
    ]
    seen, token = [], ""
    while True:
        page = tracker.ListRuns(S.ListRunsRequest(experiment="wide-runs", page_token=token))
        assert 0 < page.ByteSize() < 4 * 2**20
        seen += [run.run_id for run in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == made[::-1]


def test_a_leaderboard_or_comparison_too_large_for_one_answer_is_refused_saying_what_fits(tracker) -> None:
    # Each run takes 120 KB of params: forty of them are more than one answer can carry (gRPC's
    # default receive limit is 4 MiB), which a client used to learn as its own receive error.
    params = {f"p{i}": "v" * 6000 for i in range(20)}
    made = [
        tracker.CreateRun(S.CreateRunRequest(experiment="wide-board", params=params)).run_id
        for _ in range(40)
    ]
    for i, run_id in enumerate(made):
        _log(tracker, run_id, "val_loss", [float(i)])
    board = lambda limit: tracker.Leaderboard(  # noqa: E731
        S.LeaderboardRequest(experiment="wide-board", metric="val_loss", limit=limit)
    )
    error = _error(lambda: board(40))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in error.details() and "ListRuns" in error.details(), error.details()
    assert [entry.run.run_id for entry in board(10).entries] == made[:10]
    error = _error(lambda: tracker.CompareRuns(S.CompareRunsRequest(run_ids=made)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fewer runs" in error.details(), error.details()
    compared = tracker.CompareRuns(S.CompareRunsRequest(run_ids=made[:5]))
    assert compared.ByteSize() < 4 * 2**20 and len(compared.params) == 20


def test_a_runs_params_and_tags_are_kept_to_2_mib_together(tracker) -> None:
    # Each call is within the per-value limits; together they used to grow a run past what GetRun
    # can answer in 4 MiB, so the run could no longer be read at all.
    tags = {f"t{i}": "v" * 8000 for i in range(200)}
    run = tracker.CreateRun(S.CreateRunRequest(experiment="wide-run", tags=tags))
    tracker.UpdateRun(
        S.UpdateRunRequest(run_id=run.run_id, set_tags={f"u{i}": "v" * 8000 for i in range(50)})
    )
    error = _error(
        lambda: tracker.UpdateRun(
            S.UpdateRunRequest(run_id=run.run_id, set_tags={f"w{i}": "v" * 8000 for i in range(50)})
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params and tags take at most 2 MiB together" in error.details(), error.details()
    error = _error(
        lambda: tracker.LogParams(
            S.LogParamsRequest(run_id=run.run_id, params={f"p{i}": "v" * 6000 for i in range(100)})
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 MiB" in error.details()
    error = _error(
        lambda: tracker.CreateRun(
            S.CreateRunRequest(experiment="wide-run", params={f"p{i}": "v" * 6000 for i in range(400)})
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 MiB" in error.details()
    got = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert len(got.tags) == 250 and not got.params


def test_a_runs_many_short_tags_are_kept_to_what_fits_one_answer(tracker) -> None:
    # Entries of a few bytes take twice their text and more on the wire (each has field tags and
    # lengths): 2 MiB of them used to make a run GetRun could not answer within 4 MiB.
    digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def key(n: int) -> str:
        return "".join(digits[n // len(digits) ** i % len(digits)] for i in range(4))

    run = tracker.CreateRun(S.CreateRunRequest(experiment="short-tags")).run_id
    refused = []
    for batch in range(6):
        tags = {key(n): "" for n in range(batch * 100_000, (batch + 1) * 100_000)}
        try:
            tracker.UpdateRun(S.UpdateRunRequest(run_id=run, set_tags=tags))
        except grpc.RpcError as error:
            refused.append(error)
            break
    assert refused and refused[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params and tags take at most 2 MiB together" in refused[0].details(), refused[0].details()
    got = tracker.GetRun(S.GetRunRequest(run_id=run))
    assert got.tags and got.ByteSize() < 4 * 2**20
    page = tracker.ListRuns(S.ListRunsRequest(experiment="short-tags"))
    assert [r.run_id for r in page.runs] == [run] and page.ByteSize() < 4 * 2**20


def test_an_unknown_run_id_of_any_length_is_not_found_with_an_answer_a_client_can_read(tracker) -> None:
    # The whole id went into the message: past 16 KiB the client could not read the status and
    # saw its own RESOURCE_EXHAUSTED about metadata instead of NOT_FOUND.
    run_id = "run-" + "x" * 20_000
    calls = {
        "GetRun": lambda: tracker.GetRun(S.GetRunRequest(run_id=run_id)),
        "DeleteRun": lambda: tracker.DeleteRun(S.DeleteRunRequest(run_id=run_id)),
        "LogMetrics": lambda: tracker.LogMetrics(
            S.LogMetricsRequest(run_id=run_id, points=[S.MetricPoint(key="loss", value=1.0)])
        ),
        "ListRunArtifacts": lambda: tracker.ListRunArtifacts(S.ListRunArtifactsRequest(run_id=run_id)),
    }
    for name, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (name, error.details()[:200])
        assert error.details().startswith("run 'run-xxx") and len(error.details()) < 300, name


def test_a_comparison_with_an_empty_run_id_names_its_place(tracker) -> None:
    run = _run(tracker, "compare-empty")
    error = _error(lambda: tracker.CompareRuns(S.CompareRunsRequest(run_ids=[run.run_id, ""])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "run_ids[1] is empty: give the id of each run to compare (see ListRuns)"


def test_a_comparison_naming_a_run_twice_says_which_and_where(tracker) -> None:
    first, second = _run(tracker, "compare-twice"), _run(tracker, "compare-twice")
    run_ids = [first.run_id, second.run_id, first.run_id]
    error = _error(lambda: tracker.CompareRuns(S.CompareRunsRequest(run_ids=run_ids)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"run_ids[2]: run {first.run_id!r} is listed twice (run_ids[0] names it too); list each run once"
    )


@pytest.mark.parametrize(
    ("field", "words"),
    [
        (
            "params",
            "params: a listing filters on at most 1,000 params, got 1,001; filter on the ones that tell runs apart",
        ),
        (
            "tags",
            "tags: a listing filters on at most 1,000 tags, got 1,001; filter on the ones that tell runs apart",
        ),
        (
            "metrics",
            "metrics: a listing filters on at most 1,000 metric conditions, got 1,001; filter on the ones that "
            "tell runs apart",
        ),
    ],
)
def test_a_listing_with_more_than_a_thousand_filters_of_a_kind_is_refused(
    tracker, field: str, words: str
) -> None:
    # Each run listed is checked against every filter: their number bounds a listing's work.
    experiment = f"many-{field}-filters"
    run = _run(tracker, experiment, **{f"p{i}": "1" for i in range(1000)})
    filters = {
        "params": [S.ParamFilter(key=f"p{i}", value="1") for i in range(1001)],
        "tags": [S.TagFilter(key=f"t{i}", value="1") for i in range(1001)],
        "metrics": [S.MetricFilter(key=f"m{i}", op=S.COMPARISON_GT, value=0) for i in range(1001)],
    }[field]
    error = _error(lambda: tracker.ListRuns(S.ListRunsRequest(experiment=experiment, **{field: filters})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == words
    listed = tracker.ListRuns(
        S.ListRunsRequest(
            experiment=experiment, params=[S.ParamFilter(key=f"p{i}", value="1") for i in range(1000)]
        )
    )
    assert [r.run_id for r in listed.runs] == [run.run_id]


def _like(pattern: str) -> S.TextFilter:
    return S.TextFilter(entity=S.TEXT_ENTITY_TAG, key="t", match=S.TEXT_MATCH_LIKE, values=[pattern])


@pytest.mark.parametrize(
    ("texts", "words"),
    [
        (
            [_like("%a%")] * 21,
            "texts: a listing takes at most 20 LIKE or ILIKE conditions, got 21; match the rest with = or IN",
        ),
        (
            [_like("%" + "_" * 398 + "b%")] * 5,
            "texts: a listing's LIKE and ILIKE patterns hold at most 2,000 characters together, these hold "
            "2,005; shorten them",
        ),
    ],
)
def test_a_listing_whose_like_patterns_cost_too_much_per_run_is_refused(
    tracker, texts: list[S.TextFilter], words: str
) -> None:
    # Each run listed is matched against every pattern, at up to value x pattern steps each.
    _run(tracker, "many-likes")
    error = _error(lambda: tracker.ListRuns(S.ListRunsRequest(experiment="many-likes", texts=texts)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == words
    tracker.ListRuns(S.ListRunsRequest(experiment="many-likes", texts=texts[:4]))


def test_a_listing_ordered_by_more_than_ten_keys_is_refused(tracker) -> None:
    # A page token carries each key's value for the last run listed.
    run = _run(tracker, "many-orders", p="1")
    keys = [S.RunOrder(param="p")] * 11
    error = _error(lambda: tracker.ListRuns(S.ListRunsRequest(experiment="many-orders", order_keys=keys)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "order_keys: a listing orders by at most 10 keys, got 11; order by the ones that tell runs apart"
    )
    listed = tracker.ListRuns(S.ListRunsRequest(experiment="many-orders", order_keys=keys[:10]))
    assert [r.run_id for r in listed.runs] == [run.run_id]


def test_an_unknown_status_or_summary_field_says_which_to_use(tracker) -> None:
    # A client built from a newer .proto may send numbers this daemon does not know.
    run = _run(tracker, "unknown-enums")
    fields = "unknown summary field 7; use LAST, MIN or MAX"
    statuses = "unknown run status 9; use RUNNING, SUCCEEDED, FAILED, CANCELLED or INTERRUPTED"
    calls = {
        f"metrics[0].field: {fields}": lambda: tracker.ListRuns(
            S.ListRunsRequest(metrics=[S.MetricFilter(key="a", op=S.COMPARISON_LT, field=7)])
        ),
        f"order_by.field: {fields}": lambda: tracker.ListRuns(
            S.ListRunsRequest(order_by=S.RunOrder(metric="a", field=7))
        ),
        f"field: {fields}": lambda: tracker.Leaderboard(
            S.LeaderboardRequest(experiment="unknown-enums", metric="a", field=7)
        ),
        f"statuses: {statuses}": lambda: tracker.ListRuns(S.ListRunsRequest(statuses=[9])),
        # It listed INTERRUPTED too, which UpdateRun refuses.
        "status: unknown run status 9; a run can be ended as SUCCEEDED, FAILED or CANCELLED, or reopened "
        "as RUNNING": lambda: tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=9)),
    }
    for message, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message, (
            error.details()
        )


def test_a_point_logged_at_the_epoch_keeps_its_time(tracker) -> None:
    # Time 0 is a time a caller gave (1970-01-01), not "none": only an unset time is the server's.
    run = _run(tracker, "epoch-time")
    given = S.MetricPoint(key="a", value=1.0, step=0)
    given.time.seconds = 0
    unset = S.MetricPoint(key="a", value=2.0, step=1)
    tracker.LogMetrics(S.LogMetricsRequest(run_id=run.run_id, points=[given, unset]))
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run.run_id, key="a"))
    epoch, now = history.points
    assert epoch.HasField("time") and (epoch.time.seconds, epoch.time.nanos) == (0, 0)
    assert now.time.seconds > 0


def _ended_runs(tracker, experiment: str) -> None:
    """Two ended runs that logged val_loss and param batch_size, and nothing running."""
    for size, loss in (("16", 0.5), ("32", 0.2)):
        run = _run(tracker, experiment, batch_size=size)
        _log(tracker, run.run_id, "val_loss", [1.0, loss])
        tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))


def test_a_filter_or_order_key_no_run_has_logged_is_not_found_naming_the_nearest(tracker) -> None:
    # An empty answer would read as no run meeting the condition: a misspelt key, silently.
    _ended_runs(tracker, "typos")
    cases = {
        "metric 'val_los'": S.ListRunsRequest(
            experiment="typos", metrics=[S.MetricFilter(key="val_los", op=S.COMPARISON_LT, value=0.01)]
        ),
        "param 'batchsize'": S.ListRunsRequest(
            experiment="typos", params=[S.ParamFilter(key="batchsize", value="16")]
        ),
        "metric 'val_los' to order by": S.ListRunsRequest(
            experiment="typos", order_by=S.RunOrder(metric="val_los")
        ),
    }
    for what, request in cases.items():
        error = _error(lambda r=request: tracker.ListRuns(r))
        assert error.code() == grpc.StatusCode.NOT_FOUND, what
        assert f"no run of experiment 'typos' has logged {what.split(' to ')[0]}" in error.details(), (
            error.details()
        )
        assert (
            "did you mean 'val_loss'?" in error.details() or "did you mean 'batch_size'?" in error.details()
        )
    # A key some run has, that no run meets, is an empty answer.
    none_meet = tracker.ListRuns(
        S.ListRunsRequest(
            experiment="typos", metrics=[S.MetricFilter(key="val_loss", op=S.COMPARISON_LT, value=0.01)]
        )
    )
    assert list(none_meet.runs) == []
    assert (
        list(
            tracker.ListRuns(
                S.ListRunsRequest(experiment="typos", params=[S.ParamFilter(key="batch_size", value="64")])
            ).runs
        )
        == []
    )


def test_a_key_no_run_has_logged_yet_is_an_empty_answer_while_a_run_may_log_it(tracker) -> None:
    # As a leaderboard: a running run may log it yet.
    _ended_runs(tracker, "typos-running")
    _run(tracker, "typos-running")
    request = S.ListRunsRequest(
        experiment="typos-running", metrics=[S.MetricFilter(key="val_los", op=S.COMPARISON_LT, value=0.01)]
    )
    assert list(tracker.ListRuns(request).runs) == []
    ordered = tracker.ListRuns(
        S.ListRunsRequest(experiment="typos-running", order_by=S.RunOrder(metric="acc"))
    )
    assert len(ordered.runs) == 3


def test_a_key_only_runs_outside_the_view_logged_says_so_and_names_keys_of_runs_in_it(tracker) -> None:
    # The keys named came from deleted runs too: a deleted run's val_f1 answered "did you mean 'val_f1'?".
    kept = _run(tracker, "typos-view", batch_size="16")
    _log(tracker, kept.run_id, "val_loss", [0.5])
    tracker.UpdateRun(S.UpdateRunRequest(run_id=kept.run_id, status=S.RUN_STATUS_SUCCEEDED))
    gone = _run(tracker, "typos-view", lr="0.1")
    _log(tracker, gone.run_id, "val_f1", [0.9])
    tracker.UpdateRun(S.UpdateRunRequest(run_id=gone.run_id, status=S.RUN_STATUS_SUCCEEDED))
    tracker.DeleteRun(S.DeleteRunRequest(run_id=gone.run_id))
    f1 = [S.MetricFilter(key="val_f1", op=S.COMPARISON_LT, value=1.0)]
    loss = [S.MetricFilter(key="val_loss", op=S.COMPARISON_LT, value=1.0)]
    cases = {
        ("deleted", "metric 'val_f1'"): S.ListRunsRequest(experiment="typos-view", metrics=f1),
        ("deleted", "param 'lr'"): S.ListRunsRequest(
            experiment="typos-view", params=[S.ParamFilter(key="lr", value="0.1")]
        ),
        ("deleted", "metric 'val_f1' to order by"): S.ListRunsRequest(
            experiment="typos-view", order_by=S.RunOrder(metric="val_f1")
        ),
        ("active", "metric 'val_loss'"): S.ListRunsRequest(
            experiment="typos-view", metrics=loss, view=S.LIFECYCLE_VIEW_DELETED_ONLY
        ),
        ("active", "param 'batch_size'"): S.ListRunsRequest(
            experiment="typos-view",
            params=[S.ParamFilter(key="batch_size", value="16")],
            view=S.LIFECYCLE_VIEW_DELETED_ONLY,
        ),
    }
    for (others, what), request in cases.items():
        error = _error(lambda r=request: tracker.ListRuns(r))
        assert error.code() == grpc.StatusCode.NOT_FOUND, what
        assert f"only {others} runs of experiment 'typos-view' have logged {what}" in error.details(), (
            error.details()
        )
        assert f"view {others} or all" in error.details() and "did you mean" not in error.details()
    # A misspelt key is named against the keys of the runs in the view only.
    misspelt = _error(
        lambda: tracker.ListRuns(
            S.ListRunsRequest(
                experiment="typos-view",
                metrics=[S.MetricFilter(key="accuracy", op=S.COMPARISON_LT, value=1.0)],
            )
        )
    )
    assert misspelt.details().endswith("they have logged val_loss"), misspelt.details()
    listed = tracker.ListRuns(
        S.ListRunsRequest(experiment="typos-view", metrics=f1, view=S.LIFECYCLE_VIEW_ALL)
    )
    assert [r.run_id for r in listed.runs] == [gone.run_id]


def test_a_deleted_experiment_lists_no_runs_whatever_key_is_asked(tracker) -> None:
    # Its runs went with it, which the CLI says with how to restore it; "no run has logged
    # val_loss; did you mean 'val_loss'?" hid that.
    _ended_runs(tracker, "typos-gone")
    tracker.DeleteExperiment(S.DeleteExperimentRequest(name="typos-gone"))
    for request in (
        S.ListRunsRequest(experiment="typos-gone", order_by=S.RunOrder(metric="val_loss")),
        S.ListRunsRequest(
            experiment="typos-gone", metrics=[S.MetricFilter(key="val_loss", op=S.COMPARISON_LT, value=1.0)]
        ),
        S.ListRunsRequest(experiment="typos-gone", params=[S.ParamFilter(key="batch_size", value="16")]),
    ):
        assert list(tracker.ListRuns(request).runs) == []


def test_a_key_asked_of_runs_that_have_logged_none_is_an_empty_answer(tracker) -> None:
    # As the leaderboard: nothing logged yet leaves no key to doubt.
    tracker.CreateExperiment(S.CreateExperimentRequest(name="typos-none"))
    metric = [S.MetricFilter(key="val_loss", op=S.COMPARISON_LT, value=1.0)]
    param = [S.ParamFilter(key="batch_size", value="16")]
    order = S.RunOrder(metric="val_loss")
    for request in (
        S.ListRunsRequest(experiment="typos-none", metrics=metric),
        S.ListRunsRequest(experiment="typos-none", params=param),
        S.ListRunsRequest(experiment="typos-none", order_by=order),
    ):
        assert list(tracker.ListRuns(request).runs) == []
    run = _run(tracker, "typos-none")
    tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED))
    assert list(tracker.ListRuns(S.ListRunsRequest(experiment="typos-none", metrics=metric)).runs) == []
    assert list(tracker.ListRuns(S.ListRunsRequest(experiment="typos-none", params=param)).runs) == []
    ordered = tracker.ListRuns(S.ListRunsRequest(experiment="typos-none", order_by=order))
    assert [r.run_id for r in ordered.runs] == [run.run_id]


def test_an_ordered_listing_pages_on_when_the_runs_with_the_metric_are_deleted_between_pages(tracker) -> None:
    # The key is checked on the first page: a later one failed NOT_FOUND midway through a listing.
    _ended_runs(tracker, "typos-pages")
    other = _run(tracker, "typos-pages")
    _log(tracker, other.run_id, "train_loss", [1.0])
    tracker.UpdateRun(S.UpdateRunRequest(run_id=other.run_id, status=S.RUN_STATUS_SUCCEEDED))
    request = S.ListRunsRequest(experiment="typos-pages", order_by=S.RunOrder(metric="val_loss"), page_size=1)
    first = tracker.ListRuns(request)
    for run in tracker.ListRuns(S.ListRunsRequest(experiment="typos-pages")).runs:
        if run.run_id != other.run_id:
            tracker.DeleteRun(S.DeleteRunRequest(run_id=run.run_id))
    request.page_token = first.next_page_token
    assert [r.run_id for r in tracker.ListRuns(request).runs] == [other.run_id]


def test_an_unknown_experiment_names_the_nearest(tracker) -> None:
    _run(tracker, "clips")
    for call in (
        lambda: tracker.ListRuns(S.ListRunsRequest(experiment="clipz")),
        lambda: tracker.GetExperiment(S.GetExperimentRequest(name="clipz")),
        lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="clipz", description="x")),
    ):
        error = _error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details().startswith("experiment 'clipz' does not exist; did you mean 'clips'?"), (
            error.details()
        )


def test_a_jobs_bool_params_are_stored_as_toml_writes_them(tracker) -> None:
    spec = job_spec("mlp", experiment="bool-params", epochs=1)
    spec.optimizer.name, spec.optimizer.nesterov, spec.optimizer.momentum = "sgd", True, 0.9
    job = submit(tracker, spec)
    follow(tracker, job.job_id)
    run = tracker.GetRun(S.GetRunRequest(run_id=tracker.GetJob(S.GetJobRequest(job_id=job.job_id)).run_id))
    assert run.params["optimizer.nesterov"] == "true"
    assert "True" not in run.params.values() and "False" not in run.params.values()


def test_a_param_filter_compares_numbers_as_numbers_and_bool_words_in_any_case(tracker) -> None:
    def matches(key: str, value: str) -> list[str]:
        request = S.ListRunsRequest(experiment="param-match", params=[S.ParamFilter(key=key, value=value)])
        return sorted(r.name for r in tracker.ListRuns(request).runs)

    # "False" and "True" as a job's run stored them before they were spelt as in TOML and JSON,
    # and as the SDK writes Python's bools.
    _run(tracker, "param-match", "old", lr="0.003", nesterov="False", tag="v1")
    _run(tracker, "param-match", "new", lr="3e-3", nesterov="false", tag="1")
    _run(tracker, "param-match", "other", lr="0.03", nesterov="True", tag="1.0")
    assert matches("lr", "3e-3") == matches("lr", "0.003") == matches("lr", "0.0030") == ["new", "old"]
    assert matches("nesterov", "false") == matches("nesterov", "FALSE") == ["new", "old"]
    assert matches("nesterov", "true") == ["other"]
    # Text that is no number is matched exactly; "1" and "1.0" are one number.
    assert matches("tag", "v1") == ["old"] and matches("tag", "1") == ["new", "other"]
    assert matches("lr", "nan") == [] and matches("tag", "V1") == []


@pytest.mark.parametrize(
    ("field", "pairs", "limit"), [("params", S.ParamFilter, 6000), ("tags", S.TagFilter, 8000)]
)
def test_a_filter_value_longer_than_a_stored_one_can_be_is_refused(
    tracker, field: str, pairs, limit: int
) -> None:
    _run(tracker, "filter-values", lr="0.1")
    request = S.ListRunsRequest(
        experiment="filter-values",
        **{field: [pairs(key="lr", value="0.1"), pairs(key="k", value="1" * (limit + 1))]},
    )
    error = _error(lambda: tracker.ListRuns(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"{field}[1].value is {limit + 1} characters long; a run's {field[:-1]} value is at most {limit}, so it "
        "would match no run"
    )


def test_compare_marks_as_differing_only_params_a_filter_tells_apart(tracker) -> None:
    # A filter matched lr=3e-3 to 0.003 while the comparison showed them as differing.
    first = _run(tracker, "compare-values", lr="3e-3", nesterov="True", seed="007", n="9007199254740993")
    second = _run(tracker, "compare-values", lr="0.003", nesterov="true", seed="7", n="9007199254740992")
    compared = tracker.CompareRuns(S.CompareRunsRequest(run_ids=[first.run_id, second.run_id]))
    assert {p.key: p.differs for p in compared.params} == {
        "lr": False,
        "nesterov": False,
        "seed": True,
        "n": True,
    }
    matched = tracker.ListRuns(
        S.ListRunsRequest(
            experiment="compare-values", params=[S.ParamFilter(key="n", value="9007199254740992")]
        )
    )
    assert [r.run_id for r in matched.runs] == [second.run_id]

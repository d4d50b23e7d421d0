"""Metric, param and tag keys holding a character a listing or a terminal would not show as it is
(a C0 or C1 control, a tab, a bidi override or isolate, a zero-width space) are refused where they
are stored, naming the field and the code point; keys stored before the rule still read, list and
filter."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad import text
from tesserad.training import tracking

S = training_pb2
HIDDEN = ["\u202e", "\u2066", "\u2069", "\x1b", "\x85", "\t", "\u200b"]


@pytest.fixture(scope="module")
def tracker(training_daemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(training_daemon.channel())


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _points(key: str) -> list[S.MetricPoint]:
    return [S.MetricPoint(key=key, value=1.0, step=0)]


@pytest.mark.parametrize("character", HIDDEN, ids=[f"U+{ord(c):04X}" for c in HIDDEN])
def test_a_key_holding_a_control_or_format_character_is_refused_naming_field_and_code_point(
    tracker, character: str
) -> None:
    run = tracker.CreateRun(S.CreateRunRequest(experiment="hidden-keys"))
    key = f"lo{character}ss"
    calls = {
        "points[0].key": lambda: tracker.LogMetrics(
            S.LogMetricsRequest(run_id=run.run_id, points=_points(key))
        ),
        "params: key": lambda: tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={key: "1"})),
        "set_tags: key": lambda: tracker.UpdateRun(
            S.UpdateRunRequest(run_id=run.run_id, set_tags={key: "v"})
        ),
        "tags: key": lambda: tracker.CreateRun(S.CreateRunRequest(experiment="hidden-keys", tags={key: "v"})),
    }
    for field, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert error.details().startswith(field), error.details()
        assert f"U+{ord(character):04X}" in error.details(), error.details()
    kept = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert (dict(kept.tags), dict(kept.params), list(kept.metrics)) == ({}, {}, [])
    # Names were refused such characters already, as their rule takes a-z, 0-9, '.', '_' and '-'.
    for name in (f"exp{character}", "ex\u202dp"):
        with pytest.raises(grpc.RpcError) as refused:
            tracker.CreateExperiment(S.CreateExperimentRequest(name=name))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_joiners_that_spelling_needs_are_kept(tracker) -> None:
    run = tracker.CreateRun(S.CreateRunRequest(experiment="joined-keys"))
    key = "می\u200cخواهم"
    tracker.LogMetrics(S.LogMetricsRequest(run_id=run.run_id, points=_points(key)))
    tracker.LogParams(S.LogParamsRequest(run_id=run.run_id, params={key: "1"}))
    kept = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert [m.key for m in kept.metrics] == [key] and dict(kept.params) == {key: "1"}


def test_keys_an_older_daemon_stored_still_read_list_and_filter(
    tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "lo\u202ess"
    # As an older daemon, which took them.
    with monkeypatch.context() as older:
        older.setattr(text, "hidden_character_problem", lambda value: "")
        older.setattr(tracking, "hidden_character_problem", lambda value: "")
        run = tracker.CreateRun(
            S.CreateRunRequest(experiment="older-keys", params={key: "1"}, tags={key: "v"})
        )
        tracker.LogMetrics(S.LogMetricsRequest(run_id=run.run_id, points=_points(key)))
    kept = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert (dict(kept.params), dict(kept.tags), [m.key for m in kept.metrics]) == (
        {key: "1"},
        {key: "v"},
        [key],
    )
    listed = tracker.ListRuns(
        S.ListRunsRequest(experiment="older-keys", params=[S.ParamFilter(key=key, value="1")])
    )
    assert [r.run_id for r in listed.runs] == [run.run_id]
    history = tracker.GetMetricHistory(S.GetMetricHistoryRequest(run_id=run.run_id, key=key))
    assert [p.value for p in history.points] == [1.0]
    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="older-keys", metric=key))
    assert [e.run.run_id for e in board.entries] == [run.run_id]
    tracker.UpdateRun(S.UpdateRunRequest(run_id=run.run_id, set_tags={"note": "kept"}, remove_tags=[key]))
    assert dict(tracker.GetRun(S.GetRunRequest(run_id=run.run_id)).tags) == {"note": "kept"}

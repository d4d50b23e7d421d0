"""Experiment updates, soft delete and restore of runs and experiments, and ListRuns by tag and
by a metric, over gRPC against a real daemon."""

from __future__ import annotations

import base64
import json
import math
import struct

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store, pack, unpack
from tesserad.training import run_order
from tesserad.training.tracking import ORDER_INDEXED
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import follow, job_spec, submit, sweep_values, wait_sweep

S = training_pb2
ALL = S.LIFECYCLE_VIEW_ALL
DELETED = S.LIFECYCLE_VIEW_DELETED_ONLY


@pytest.fixture(scope="module")
def tracker(training_daemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(training_daemon.channel())


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _run(
    tracker, experiment: str, name: str = "", tags: dict[str, str] | None = None, **params: str
) -> S.Run:
    return tracker.CreateRun(S.CreateRunRequest(experiment=experiment, name=name, params=params, tags=tags))


def _log(tracker, run_id: str, key: str, value: float, step: int = 0) -> None:
    tracker.LogMetrics(
        S.LogMetricsRequest(run_id=run_id, points=[S.MetricPoint(key=key, value=value, step=step)])
    )


def _ids(tracker, **request) -> list[str]:
    return [r.run_id for r in tracker.ListRuns(S.ListRunsRequest(**request)).runs]


def _all_pages(tracker, page_size: int, **request) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = tracker.ListRuns(S.ListRunsRequest(page_size=page_size, page_token=token, **request))
        ids += [r.run_id for r in page.runs]
        token = page.next_page_token
        if not token:
            return ids


def test_an_experiment_a_job_created_gets_a_description_and_tags(tracker) -> None:
    _run(tracker, "upd-auto")  # created on first use, without a description
    got = tracker.UpdateExperiment(
        S.UpdateExperimentRequest(
            name="upd-auto", description="clips, 4-D CNN", set_tags={"team": "a", "x": "1"}
        )
    )
    assert got.description == "clips, 4-D CNN" and got.tags == {"team": "a", "x": "1"} and got.run_count == 1
    # Unset description is left alone; remove_tags drops keys, a missing one is no error.
    got = tracker.UpdateExperiment(
        S.UpdateExperimentRequest(name="upd-auto", set_tags={"team": "b"}, remove_tags=["x", "absent"])
    )
    assert got.description == "clips, 4-D CNN" and got.tags == {"team": "b"}
    assert tracker.GetExperiment(S.GetExperimentRequest(name="upd-auto")).tags == {"team": "b"}
    cleared = tracker.UpdateExperiment(S.UpdateExperimentRequest(name="upd-auto", description=""))
    assert cleared.description == "" and cleared.tags == {"team": "b"}


def test_update_experiment_checks_fields_as_create_does(tracker) -> None:
    tracker.CreateExperiment(S.CreateExperimentRequest(name="upd-checks"))
    bad_name = _error(lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="Bad Name")))
    assert bad_name.code() == grpc.StatusCode.INVALID_ARGUMENT and "name 'Bad Name'" in bad_name.details()
    missing = _error(lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="upd-none")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "upd-none" in missing.details()
    bad_tag = _error(
        lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="upd-checks", set_tags={"a\nb": "v"}))
    )
    assert bad_tag.code() == grpc.StatusCode.INVALID_ARGUMENT and "set_tags" in bad_tag.details()
    long_tag = _error(
        lambda: tracker.UpdateExperiment(
            S.UpdateExperimentRequest(name="upd-checks", set_tags={"k": "v" * 8001})
        )
    )
    assert long_tag.code() == grpc.StatusCode.INVALID_ARGUMENT and "8000" in long_tag.details()
    both = _error(
        lambda: tracker.UpdateExperiment(
            S.UpdateExperimentRequest(name="upd-checks", set_tags={"k": "v"}, remove_tags=["k"])
        )
    )
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT and "'k'" in both.details()


def test_update_run_removes_tags_as_update_experiment_does(tracker) -> None:
    run = _run(tracker, "upd-run-tags", tags={"team": "a", "x": "1"})
    # remove_tags drops keys, a missing one is no error; set_tags applies alongside.
    got = tracker.UpdateRun(
        S.UpdateRunRequest(run_id=run.run_id, set_tags={"team": "b"}, remove_tags=["x", "absent"])
    )
    assert got.tags == {"team": "b"}
    assert tracker.GetRun(S.GetRunRequest(run_id=run.run_id)).tags == {"team": "b"}
    assert _ids(tracker, experiment="upd-run-tags", tags=[S.TagFilter(key="x", value="1")]) == []
    both = _error(
        lambda: tracker.UpdateRun(
            S.UpdateRunRequest(
                run_id=run.run_id, status=S.RUN_STATUS_SUCCEEDED, set_tags={"k": "v"}, remove_tags=["k"]
            )
        )
    )
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT and "'k'" in both.details()
    unchanged = tracker.GetRun(S.GetRunRequest(run_id=run.run_id))
    assert unchanged.tags == {"team": "b"} and unchanged.status == S.RUN_STATUS_RUNNING


def test_a_deleted_run_is_hidden_refuses_changes_keeps_its_data_and_comes_back(tracker) -> None:
    kept = _run(tracker, "del-run", lr="0.1")
    doomed = _run(tracker, "del-run", name="doomed", lr="0.2")
    _log(tracker, doomed.run_id, "loss", 0.5)
    deleted = tracker.DeleteRun(S.DeleteRunRequest(run_id=doomed.run_id))
    assert deleted.deleted and deleted.deleted_at.seconds > 0
    again = tracker.DeleteRun(S.DeleteRunRequest(run_id=doomed.run_id))  # a repeat changes nothing
    assert again.deleted_at == deleted.deleted_at

    assert _ids(tracker, experiment="del-run") == [kept.run_id]
    assert _ids(tracker, experiment="del-run", view=DELETED) == [doomed.run_id]
    assert _ids(tracker, experiment="del-run", view=ALL) == [doomed.run_id, kept.run_id]
    assert tracker.GetExperiment(S.GetExperimentRequest(name="del-run")).run_count == 1
    board = tracker.Leaderboard(S.LeaderboardRequest(experiment="del-run", metric="loss"))
    assert not board.entries

    for call in (
        lambda: _log(tracker, doomed.run_id, "loss", 0.4, 1),
        lambda: tracker.LogParams(S.LogParamsRequest(run_id=doomed.run_id, params={"wd": "0"})),
        lambda: tracker.UpdateRun(S.UpdateRunRequest(run_id=doomed.run_id, set_tags={"a": "b"})),
    ):
        refused = _error(call)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is deleted" in refused.details() and "RestoreRun" in refused.details()
    name_taken = _error(lambda: _run(tracker, "del-run", name="doomed"))
    assert name_taken.code() == grpc.StatusCode.ALREADY_EXISTS and "deleted run" in name_taken.details()

    read = tracker.GetRun(S.GetRunRequest(run_id=doomed.run_id))  # still readable by id
    assert read.deleted and read.params == {"lr": "0.2"} and read.metrics[0].last == 0.5
    restored = tracker.RestoreRun(S.RestoreRunRequest(run_id=doomed.run_id))
    assert not restored.deleted and not restored.HasField("deleted_at") and restored.metrics[0].last == 0.5
    assert tracker.RestoreRun(S.RestoreRunRequest(run_id=doomed.run_id)) == restored
    _log(tracker, doomed.run_id, "loss", 0.4, 1)
    assert _ids(tracker, experiment="del-run") == [doomed.run_id, kept.run_id]
    assert tracker.GetExperiment(S.GetExperimentRequest(name="del-run")).run_count == 2


def test_deleting_an_experiment_deletes_its_runs_and_restoring_brings_back_those_only(tracker) -> None:
    tracker.CreateExperiment(S.CreateExperimentRequest(name="del-exp", description="d"))
    alone = _run(tracker, "del-exp", name="deleted-alone")
    tracker.DeleteRun(S.DeleteRunRequest(run_id=alone.run_id))
    first, second = _run(tracker, "del-exp"), _run(tracker, "del-exp")
    gone = tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-exp"))
    assert gone.deleted and gone.run_count == 0 and gone.description == "d"

    def names(view: int = 0) -> list[str]:
        request = S.ListExperimentsRequest(name_prefix="del-exp", view=view)
        return [e.name for e in tracker.ListExperiments(request).experiments]

    assert names() == [] and names(DELETED) == ["del-exp"] and names(ALL) == ["del-exp"]
    assert _ids(tracker, experiment="del-exp") == []
    assert set(_ids(tracker, experiment="del-exp", view=DELETED)) == {
        alone.run_id,
        first.run_id,
        second.run_id,
    }

    new_run = _error(lambda: _run(tracker, "del-exp"))
    assert new_run.code() == grpc.StatusCode.FAILED_PRECONDITION and "RestoreExperiment" in new_run.details()
    logged = _error(lambda: _log(tracker, first.run_id, "loss", 1.0))
    assert logged.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "deleted with its experiment 'del-exp'" in logged.details()
    one = _error(lambda: tracker.RestoreRun(S.RestoreRunRequest(run_id=first.run_id)))
    assert one.code() == grpc.StatusCode.FAILED_PRECONDITION and "RestoreExperiment" in one.details()
    update = _error(
        lambda: tracker.UpdateExperiment(S.UpdateExperimentRequest(name="del-exp", description="x"))
    )
    assert update.code() == grpc.StatusCode.FAILED_PRECONDITION and "is deleted" in update.details()
    job = _error(lambda: submit(tracker, job_spec("mlp", experiment="del-exp")))
    assert job.code() == grpc.StatusCode.FAILED_PRECONDITION and "del-exp" in job.details()
    # As MLflow's: the name stays the deleted experiment's, and the answer says so and what to do.
    again = _error(lambda: tracker.CreateExperiment(S.CreateExperimentRequest(name="del-exp")))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "is deleted" in again.details() and "RestoreExperiment" in again.details(), again.details()

    back = tracker.RestoreExperiment(S.RestoreExperimentRequest(name="del-exp"))
    assert not back.deleted and back.run_count == 2
    assert _ids(tracker, experiment="del-exp") == [second.run_id, first.run_id]
    assert _ids(tracker, experiment="del-exp", view=DELETED) == [alone.run_id]
    _log(tracker, first.run_id, "loss", 1.0)


def test_a_deleted_experiments_leaderboard_says_it_is_deleted_and_how_to_restore_it(tracker) -> None:
    # It answered an empty board, which reads as no run having logged the metric.
    run = _run(tracker, "del-board")
    _log(tracker, run.run_id, "val_loss", 0.3)
    tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-board"))
    board = S.LeaderboardRequest(experiment="del-board", metric="val_loss")
    refused = _error(lambda: tracker.Leaderboard(board))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        refused.details()
        == "experiment 'del-board' is deleted; restore it with RestoreExperiment to rank its runs"
    )
    missing = _error(
        lambda: tracker.Leaderboard(S.LeaderboardRequest(experiment="del-board-never", metric="a"))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    tracker.RestoreExperiment(S.RestoreExperimentRequest(name="del-board"))
    assert [e.run.run_id for e in tracker.Leaderboard(board).entries] == [run.run_id]


def test_a_jobs_run_is_deleted_only_once_the_job_has_ended(tracker) -> None:
    job = submit(tracker, job_spec("mlp", experiment="del-job", epochs=500))
    refused = _error(lambda: tracker.DeleteRun(S.DeleteRunRequest(run_id=job.run_id)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert job.job_id in refused.details() and "CancelJob" in refused.details()
    whole = _error(lambda: tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-job")))
    assert whole.code() == grpc.StatusCode.FAILED_PRECONDITION and job.job_id in whole.details()
    assert not tracker.GetExperiment(S.GetExperimentRequest(name="del-job")).deleted
    tracker.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    follow(tracker, job.job_id)
    assert tracker.DeleteRun(S.DeleteRunRequest(run_id=job.run_id)).deleted
    assert tracker.GetJob(S.GetJobRequest(job_id=job.job_id)).run_id == job.run_id


def test_an_experiment_is_deleted_only_once_its_running_sweeps_have_ended(tracker) -> None:
    # Between two trials no job of the sweep runs: a deletion then went through, and each later
    # trial was refused at submit until the sweep failed. The sweep, not its trial's job, is named.
    spec = S.SweepSpec(
        base=job_spec("mlp", experiment="del-running-sweep", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2")],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep_id = tracker.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    refused = _error(lambda: tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-running-sweep")))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"running sweep {sweep_id}" in refused.details()
    assert f"`tessera sweeps cancel {sweep_id}`" in refused.details(), refused.details()
    assert not tracker.GetExperiment(S.GetExperimentRequest(name="del-running-sweep")).deleted
    tracker.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
    ended = wait_sweep(tracker, sweep_id)
    assert ended.state == S.SWEEP_STATE_CANCELLED
    for trial in ended.trials:
        if trial.job_id:
            follow(tracker, trial.job_id)
    assert tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-running-sweep")).deleted


def test_a_sweep_into_a_deleted_experiment_is_refused_and_stores_nothing(tracker) -> None:
    # It was stored and started, each trial refused at submit, until it failed.
    tracker.CreateExperiment(S.CreateExperimentRequest(name="del-sweep-into"))
    tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-sweep-into"))
    spec = S.SweepSpec(
        base=job_spec("mlp", experiment="del-sweep-into", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.001", "0.05")],
        metric="val_loss",
    )
    before = len(tracker.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps)
    refused = _error(lambda: tracker.SubmitSweep(S.SubmitSweepRequest(spec=spec)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        refused.details() == "experiment 'del-sweep-into' is deleted; restore it with RestoreExperiment first"
    )
    assert len(tracker.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps) == before


def test_an_ended_sweep_trials_run_can_be_deleted_and_the_sweep_keeps_its_record(tracker) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", experiment="del-sweep", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.001", "0.05")],
        max_concurrent=2,
        metric="val_loss",
    )
    sweep = wait_sweep(tracker, tracker.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    trial_run = tracker.GetJob(S.GetJobRequest(job_id=sweep.trials[0].job_id)).run_id
    assert tracker.DeleteRun(S.DeleteRunRequest(run_id=trial_run)).deleted
    again = tracker.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    assert again.trials == sweep.trials and again.best_job_id == sweep.best_job_id
    assert trial_run not in _ids(tracker, experiment="del-sweep")
    assert tracker.DeleteExperiment(S.DeleteExperimentRequest(name="del-sweep")).deleted
    assert tracker.RestoreExperiment(S.RestoreExperimentRequest(name="del-sweep")).run_count == 1


def test_runs_are_filtered_by_tag(tracker) -> None:
    a = _run(tracker, "tagged", tags={"team": "a", "phase": "1"})
    b = _run(tracker, "tagged", tags={"team": "b", "phase": "1"})
    _run(tracker, "tagged")
    tag = S.TagFilter
    assert _ids(tracker, experiment="tagged", tags=[tag(key="team", value="a")]) == [a.run_id]
    assert _ids(tracker, experiment="tagged", tags=[tag(key="phase", value="1")]) == [b.run_id, a.run_id]
    assert _ids(
        tracker, experiment="tagged", tags=[tag(key="phase", value="1"), tag(key="team", value="b")]
    ) == [b.run_id]
    no_key = _error(lambda: _ids(tracker, tags=[tag(key="", value="a")]))
    assert no_key.code() == grpc.StatusCode.INVALID_ARGUMENT and "tags[0].key" in no_key.details()
    twice = _error(lambda: _ids(tracker, tags=[tag(key="t", value="a"), tag(key="t", value="b")]))
    assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT and "tags[1]" in twice.details()


def test_runs_ordered_by_a_metric_page_stably_with_its_direction_by_default(tracker) -> None:
    values = [0.5, 0.2, 0.9, 0.2, 0.7, 0.2]
    runs = [_run(tracker, "ordered") for _ in values]
    for run, value in zip(runs, values, strict=True):
        _log(tracker, run.run_id, "val_loss", value)
        _log(tracker, run.run_id, "val_accuracy", 1 - value)
    bare = _run(tracker, "ordered")  # no metric: last
    # Equal values: newest first.
    by_loss = [runs[5].run_id, runs[3].run_id, runs[1].run_id]
    by_loss += [runs[0].run_id, runs[4].run_id, runs[2].run_id, bare.run_id]
    order = S.RunOrder(metric="val_loss")
    assert _ids(tracker, experiment="ordered", order_by=order) == by_loss
    for size in (1, 2, 4):
        assert _all_pages(tracker, size, experiment="ordered", order_by=order) == by_loss
    # val_accuracy is a higher-is-better metric by name: highest first.
    accuracy = S.RunOrder(metric="val_accuracy")
    assert _ids(tracker, experiment="ordered", order_by=accuracy) == by_loss
    desc = S.RunOrder(metric="val_loss", direction=S.SORT_DIRECTION_DESCENDING)
    expected = [runs[2].run_id, runs[4].run_id, runs[0].run_id, *by_loss[:3], bare.run_id]
    assert _all_pages(tracker, 2, experiment="ordered", order_by=desc) == expected

    # A page resumes after the last run it showed, though values change between pages.
    first = tracker.ListRuns(S.ListRunsRequest(experiment="ordered", order_by=order, page_size=3))
    _log(tracker, runs[2].run_id, "val_loss", 0.1, 1)  # moves the worst run to the front
    rest = tracker.ListRuns(
        S.ListRunsRequest(
            experiment="ordered", order_by=order, page_size=10, page_token=first.next_page_token
        )
    )
    assert [r.run_id for r in rest.runs] == [runs[0].run_id, runs[4].run_id, bare.run_id]

    no_metric = _error(lambda: _ids(tracker, order_by=S.RunOrder()))
    assert no_metric.code() == grpc.StatusCode.INVALID_ARGUMENT and "order_by.metric" in no_metric.details()
    other_query = _error(
        lambda: tracker.ListRuns(
            S.ListRunsRequest(experiment="ordered", order_by=desc, page_token=first.next_page_token)
        )
    )
    assert other_query.code() == grpc.StatusCode.INVALID_ARGUMENT


# Per run: (experiment, first value, second value), None for a run without the metric; 0.0 and
# -0.0 are a tie, as are the repeated values.
_ORDERED = [
    ("ord-a", 0.5, 1.5),
    ("ord-a", -0.0, -2.0),
    ("ord-b", 0.0, 0.0),
    ("ord-a", -3.0, 0.5),
    ("ord-a", 0.5, 1.5),
    ("ord-b", 2.0, -3.0),
    ("ord-a", None, None),
    ("ord-b", 0.5, 1.5),
    ("ord-b", None, None),
]
_FIELDS = {S.SUMMARY_FIELD_LAST: lambda a, b: b, S.SUMMARY_FIELD_MIN: min, S.SUMMARY_FIELD_MAX: max}


def _expected_order(runs: list[tuple[str, tuple | None]], field: int, descending: bool) -> list[str]:
    """The run ids by the summary field, ties and runs without the metric newest first."""
    newest = sorted(runs, key=lambda run: run[0], reverse=True)

    def rank(run: tuple[str, tuple | None]) -> tuple[int, float]:
        if run[1] is None:
            return 1, 0.0
        value = _FIELDS[field](*run[1])
        return 0, -value if descending else value

    return [run_id for run_id, _ in sorted(newest, key=rank)]


def test_runs_ordered_by_a_metric_are_every_kept_run_sorted_in_any_direction_field_and_view(tracker) -> None:
    runs: dict[str, tuple[str, tuple | None]] = {}
    for experiment, first, second in _ORDERED:
        run_id = _run(tracker, experiment).run_id
        if first is not None:
            _log(tracker, run_id, "order_prop", first, 0)
            _log(tracker, run_id, "order_prop", second, 1)
        runs[run_id] = (experiment, None if first is None else (first, second))
    ids = list(runs)
    tracker.DeleteRun(S.DeleteRunRequest(run_id=ids[4]))
    tracker.UpdateRun(S.UpdateRunRequest(run_id=ids[1], status=S.RUN_STATUS_SUCCEEDED))
    tracker.UpdateRun(S.UpdateRunRequest(run_id=ids[5], status=S.RUN_STATUS_SUCCEEDED))

    def expect(
        experiment: str, field: int, descending: bool, keep=lambda run_id: run_id != ids[4]
    ) -> list[str]:
        chosen = [(r, v) for r, (e, v) in runs.items() if e == experiment and keep(r)]
        return _expected_order(chosen, field, descending)

    for field in _FIELDS:
        for direction, descending in (
            (S.SORT_DIRECTION_ASCENDING, False),
            (S.SORT_DIRECTION_DESCENDING, True),
        ):
            order = S.RunOrder(metric="order_prop", field=field, direction=direction)
            for experiment in ("ord-a", "ord-b"):
                wanted = expect(experiment, field, descending)
                for size in (1, 2, 100):
                    assert _all_pages(tracker, size, experiment=experiment, order_by=order) == wanted
            # Across experiments the two merge into one order; runs of other tests (without the
            # metric) follow, newest first.
            both = [(r, v) for r, (_, v) in runs.items() if r != ids[4]]
            with_metric = [r for r in _expected_order(both, field, descending) if runs[r][1] is not None]
            listed = _all_pages(tracker, 1, order_by=order)
            assert listed[: len(with_metric)] == with_metric
            newest = [r for r in _all_pages(tracker, 100) if r not in with_metric]
            assert listed[len(with_metric) :] == newest

    order = S.RunOrder(metric="order_prop", direction=S.SORT_DIRECTION_ASCENDING)
    last = S.SUMMARY_FIELD_LAST
    assert _all_pages(tracker, 1, experiment="ord-a", order_by=order, view=DELETED) == [ids[4]]
    everything = expect("ord-a", last, False, keep=lambda _: True)
    assert _all_pages(tracker, 2, experiment="ord-a", order_by=order, view=ALL) == everything
    succeeded = [S.RUN_STATUS_SUCCEEDED]
    listed = _all_pages(tracker, 1, order_by=order, statuses=succeeded)
    assert listed[:2] == [ids[5], ids[1]] and not set(listed[2:]) & set(runs)
    at_least = [S.MetricFilter(key="order_prop", field=S.SUMMARY_FIELD_MAX, op=S.COMPARISON_GE, value=1.5)]
    assert _all_pages(tracker, 1, experiment="ord-a", order_by=order, metrics=at_least) == [ids[0]]


def test_an_ordered_page_token_with_a_value_no_listing_issues_is_refused(tracker) -> None:
    order = S.RunOrder(metric="val_loss")
    page = tracker.ListRuns(S.ListRunsRequest(experiment="ordered", order_by=order, page_size=1))
    decoded = json.loads(base64.urlsafe_b64decode(page.next_page_token))
    run_id = unpack(bytes.fromhex(decoded["a"]))[2]
    decoded["a"] = pack((0, struct.pack(">d", math.nan), run_id)).hex()
    forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).decode()
    error = _error(
        lambda: tracker.ListRuns(S.ListRunsRequest(experiment="ordered", order_by=order, page_token=forged))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in error.details()


def test_deletion_holds_across_a_restart(tmp_path) -> None:
    settings = daemon_settings(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        kept, doomed = _run(stub, "restart"), _run(stub, "restart")
        _run(stub, "gone-exp")
        stub.DeleteRun(S.DeleteRunRequest(run_id=doomed.run_id))
        stub.DeleteExperiment(S.DeleteExperimentRequest(name="gone-exp"))
    finally:
        daemon.stop()
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        assert _ids(stub, experiment="restart") == [kept.run_id]
        assert stub.GetRun(S.GetRunRequest(run_id=doomed.run_id)).deleted
        assert stub.GetExperiment(S.GetExperimentRequest(name="gone-exp")).deleted
        assert stub.RestoreExperiment(S.RestoreExperimentRequest(name="gone-exp")).run_count == 1
        assert not stub.RestoreRun(S.RestoreRunRequest(run_id=doomed.run_id)).deleted
    finally:
        daemon.stop()


def test_a_store_from_before_the_order_index_is_indexed_once_at_start(tmp_path) -> None:
    settings = daemon_settings(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        runs = [_run(stub, experiment) for experiment in ("old-a", "old-b", "old-a", "old-a")]
        for run, value in zip(runs, [0.3, 0.1, 0.3, 0.2], strict=True):
            _log(stub, run.run_id, "val_loss", value)
        bare = _run(stub, "old-a")
    finally:
        daemon.stop()
    # As an older tesserad left it: summaries, no index and no marker.
    store = Store.open(tmp_path / "data" / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(run_order.TABLE, ()) == 3 * len(runs)
            assert txn.delete("meta", ORDER_INDEXED)
    finally:
        store.close()
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        order = S.RunOrder(metric="val_loss")
        ids = [run.run_id for run in runs]
        assert _all_pages(stub, 1, experiment="old-a", order_by=order) == [
            ids[3],
            ids[2],
            ids[0],
            bare.run_id,
        ]
        assert _all_pages(stub, 2, order_by=order) == [ids[1], ids[3], ids[2], ids[0], bare.run_id]
    finally:
        daemon.stop()

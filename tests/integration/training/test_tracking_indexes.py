"""Leaderboard (read from the run order index) and experiments' run counts (kept per experiment)
against a pure reference of the old scans, over a random sequence of creates, metric logs,
deletes and restores, through a real daemon, and again after a restart that indexes and counts
a store written without them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import grpc
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training import run_order
from tesserad.training.tracking import DELETED_ORDER_MOVED, ORDER_INDEXED, RUN_COUNTS, RUNS_COUNTED
from tests.conftest import InProcessDaemon, daemon_settings

S = training_pb2
EXPERIMENTS = ("lb-a", "lb-b", "lb-c")
METRICS = ("val_loss", "val_acc")  # min and max by default
# Few values, so ties are common; 0.0 and -0.0 are a tie too.
VALUES = (-1.5, -0.0, 0.0, 0.25, 0.25, 1.0, 2.0)
MODES = {
    job_spec_pb2.OPTIMIZE_MODE_UNSPECIFIED: None,
    job_spec_pb2.OPTIMIZE_MODE_MIN: "min",
    job_spec_pb2.OPTIMIZE_MODE_MAX: "max",
}
FIELDS = {
    S.SUMMARY_FIELD_UNSPECIFIED: None,
    S.SUMMARY_FIELD_LAST: "last",
    S.SUMMARY_FIELD_MIN: "min",
    S.SUMMARY_FIELD_MAX: "max",
}
LIMITS = (0, 1, 3, 1000)


@dataclass
class _Run:
    experiment: str
    deleted: str = ""  # "", "run" (by DeleteRun) or "experiment" (with its experiment)
    ended: bool = False
    points: dict[str, dict[int, float]] = field(default_factory=dict)

    def summary(self, metric: str, name: str) -> float:
        steps = self.points[metric]
        if name == "last":
            return steps[max(steps)]
        return min(steps.values()) if name == "min" else max(steps.values())


@dataclass
class _Model:
    runs: dict[str, _Run] = field(default_factory=dict)
    deleted_experiments: set[str] = field(default_factory=set)

    def leaderboard(
        self, experiment: str, metric: str, mode: str | None, name: str | None, limit: int
    ) -> list[tuple[str, float]]:
        """The old scan: the experiment's kept runs with the metric in run id order, sorted
        stably by the value (ties keep run id order in either direction)."""
        mode = mode or ("min" if "loss" in metric else "max")
        name = name or mode
        rows = [
            (run_id, run.summary(metric, name))
            for run_id, run in sorted(self.runs.items())
            if run.experiment == experiment and not run.deleted and metric in run.points
        ]
        rows.sort(key=lambda row: row[1], reverse=mode == "max")
        return rows[: limit or 10]

    def run_count(self, experiment: str) -> int:
        return sum(1 for run in self.runs.values() if run.experiment == experiment and not run.deleted)


def _step(stub: training_pb2_grpc.TrainingStub, model: _Model, rng: random.Random) -> None:
    """One random change, made through the daemon and to the model alike."""
    kept = [run_id for run_id, run in model.runs.items() if not run.deleted]
    running = [run_id for run_id in kept if not model.runs[run_id].ended]
    alone = [
        run_id
        for run_id, run in model.runs.items()
        if run.deleted == "run" and run.experiment not in model.deleted_experiments
    ]
    live = [name for name in EXPERIMENTS if name not in model.deleted_experiments]
    action = rng.choices(
        ("create", "log", "end", "delete", "restore", "delete_exp", "restore_exp"),
        weights=(6, 12, 1, 3, 2, 0.4, 1),
    )[0]
    if action == "create" and live:
        experiment = rng.choice(live)
        run_id = stub.CreateRun(S.CreateRunRequest(experiment=experiment)).run_id
        model.runs[run_id] = _Run(experiment)
    elif action == "log" and running:
        run_id = rng.choice(running)
        points = [
            (rng.choice(METRICS), rng.choice(VALUES), rng.randrange(4)) for _ in range(rng.randint(1, 3))
        ]
        stub.LogMetrics(
            S.LogMetricsRequest(
                run_id=run_id, points=[S.MetricPoint(key=k, value=v, step=s) for k, v, s in points]
            )
        )
        for key, value, step in points:
            model.runs[run_id].points.setdefault(key, {})[step] = value
    elif action == "end" and running:
        run_id = rng.choice(running)
        stub.UpdateRun(S.UpdateRunRequest(run_id=run_id, status=S.RUN_STATUS_SUCCEEDED))
        model.runs[run_id].ended = True
    elif action == "delete" and kept:
        run_id = rng.choice(kept)
        stub.DeleteRun(S.DeleteRunRequest(run_id=run_id))
        model.runs[run_id].deleted = "run"
    elif action == "restore" and alone:
        run_id = rng.choice(alone)
        stub.RestoreRun(S.RestoreRunRequest(run_id=run_id))
        model.runs[run_id].deleted = ""
    elif action == "delete_exp" and live:
        experiment = rng.choice(live)
        stub.DeleteExperiment(S.DeleteExperimentRequest(name=experiment))
        model.deleted_experiments.add(experiment)
        for run in model.runs.values():
            if run.experiment == experiment and not run.deleted:
                run.deleted = "experiment"
    elif action == "restore_exp" and model.deleted_experiments:
        experiment = rng.choice(sorted(model.deleted_experiments))
        stub.RestoreExperiment(S.RestoreExperimentRequest(name=experiment))
        model.deleted_experiments.discard(experiment)
        for run in model.runs.values():
            if run.experiment == experiment and run.deleted == "experiment":
                run.deleted = ""


def _check(stub: training_pb2_grpc.TrainingStub, model: _Model) -> None:
    listed = stub.ListExperiments(
        S.ListExperimentsRequest(name_prefix="lb-", page_size=100, view=S.LIFECYCLE_VIEW_ALL)
    ).experiments
    assert {e.name: e.run_count for e in listed} == {
        name: model.run_count(name)
        for name in EXPERIMENTS
        if any(r.experiment == name for r in model.runs.values())
    }
    for e in listed:
        assert stub.GetExperiment(S.GetExperimentRequest(name=e.name)).run_count == model.run_count(e.name)
        if e.deleted:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Leaderboard(S.LeaderboardRequest(experiment=e.name, metric=METRICS[0]))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            continue
        for metric in METRICS:
            for mode, mode_name in MODES.items():
                for summary_field, field_name in FIELDS.items():
                    for limit in LIMITS:
                        board = stub.Leaderboard(
                            S.LeaderboardRequest(
                                experiment=e.name, metric=metric, mode=mode, field=summary_field, limit=limit
                            )
                        ).entries
                        got = [(entry.run.run_id, entry.value) for entry in board]
                        assert got == model.leaderboard(e.name, metric, mode_name, field_name, limit), (
                            e.name,
                            metric,
                            mode_name,
                            field_name,
                            limit,
                        )
                        assert [entry.rank for entry in board] == list(range(1, len(board) + 1))
                        assert not any(entry.run.deleted for entry in board)


def _drop_indexes(data_dir) -> None:
    """Leave the store as a tesserad from before the order index and the run counts did."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(run_order.TABLE, ()) > 0
            txn.delete_range(run_order.DELETED_TABLE, ())
            assert txn.delete_range(RUN_COUNTS, ()) > 0
            assert txn.delete("meta", ORDER_INDEXED) and txn.delete("meta", RUNS_COUNTED)
    finally:
        store.close()


@pytest.mark.parametrize("seed", [7, 1234])
def test_leaderboards_and_run_counts_equal_the_scans_through_changes_and_an_upgrade(tmp_path, seed) -> None:
    rng = random.Random(seed)
    model = _Model()
    settings = daemon_settings(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        for i in range(240):
            _step(stub, model, rng)
            if i % 40 == 39:
                _check(stub, model)
    finally:
        daemon.stop()
    _drop_indexes(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        _check(stub, model)
        for _ in range(60):
            _step(stub, model, rng)
        _check(stub, model)
    finally:
        daemon.stop()


def _indexed_runs(data_dir) -> dict[str, set[str]]:
    """{table: run ids with a row there} of the order index's two tables."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            return {
                table: {str(key[4]) for key, _ in txn.scan(table)}
                for table in (run_order.TABLE, run_order.DELETED_TABLE)
            }
    finally:
        store.close()


def _keep_deleted_rows_in_the_index(data_dir) -> None:
    """Leave the store as a tesserad that kept deleted runs' rows in the order index did."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            rows = [key for key, _ in txn.scan(run_order.DELETED_TABLE)]
            for key in rows:
                txn.delete(run_order.DELETED_TABLE, key)
                txn.put(run_order.TABLE, key, b"")
            assert rows and txn.delete("meta", DELETED_ORDER_MOVED)
    finally:
        store.close()


def test_deleted_leaders_leave_the_order_index_and_a_store_that_kept_them_is_sorted_once(tmp_path) -> None:
    settings = daemon_settings(tmp_path / "data")

    def ids(stub, view: int) -> list[str]:
        listed = stub.ListRuns(
            S.ListRunsRequest(
                experiment="lead", order_by=S.RunOrder(metric="val_loss"), view=view, page_size=100
            )
        )
        return [run.run_id for run in listed.runs]

    def board(stub) -> list[tuple[str, float]]:
        entries = stub.Leaderboard(
            S.LeaderboardRequest(experiment="lead", metric="val_loss", limit=3)
        ).entries
        return [(entry.run.run_id, entry.value) for entry in entries]

    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        runs = [stub.CreateRun(S.CreateRunRequest(experiment="lead")).run_id for _ in range(30)]
        for i, run_id in enumerate(runs):
            stub.LogMetrics(
                S.LogMetricsRequest(run_id=run_id, points=[S.MetricPoint(key="val_loss", value=i, step=0)])
            )
        for run_id in runs[:25]:
            stub.DeleteRun(S.DeleteRunRequest(run_id=run_id))
        gone = stub.CreateRun(S.CreateRunRequest(experiment="lead-gone")).run_id
        stub.LogMetrics(S.LogMetricsRequest(run_id=gone, points=[S.MetricPoint(key="val_loss", value=-1)]))
        stub.DeleteExperiment(S.DeleteExperimentRequest(name="lead-gone"))
        assert board(stub) == [(runs[25], 25.0), (runs[26], 26.0), (runs[27], 27.0)]
        assert ids(stub, S.LIFECYCLE_VIEW_ACTIVE_ONLY) == runs[25:]
        assert ids(stub, S.LIFECYCLE_VIEW_DELETED_ONLY) == runs[:25]
        assert ids(stub, S.LIFECYCLE_VIEW_ALL) == runs
        stub.RestoreRun(S.RestoreRunRequest(run_id=runs[3]))
        assert board(stub) == [(runs[3], 3.0), (runs[25], 25.0), (runs[26], 26.0)]
        stub.DeleteRun(S.DeleteRunRequest(run_id=runs[3]))
    finally:
        daemon.stop()
    indexed = _indexed_runs(tmp_path / "data")
    assert indexed == {run_order.TABLE: set(runs[25:]), run_order.DELETED_TABLE: {*runs[:25], gone}}
    _keep_deleted_rows_in_the_index(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        stub = training_pb2_grpc.TrainingStub(daemon.channel())
        assert board(stub) == [(runs[25], 25.0), (runs[26], 26.0), (runs[27], 27.0)]
        assert ids(stub, S.LIFECYCLE_VIEW_DELETED_ONLY) == runs[:25]
        assert ids(stub, S.LIFECYCLE_VIEW_ALL) == runs
        stub.RestoreExperiment(S.RestoreExperimentRequest(name="lead-gone"))
        top = stub.Leaderboard(S.LeaderboardRequest(experiment="lead-gone", metric="val_loss")).entries
        assert [entry.run.run_id for entry in top] == [gone]
    finally:
        daemon.stop()
    assert _indexed_runs(tmp_path / "data") == {
        run_order.TABLE: {*runs[25:], gone},
        run_order.DELETED_TABLE: set(runs[:25]),
    }

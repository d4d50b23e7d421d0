"""Leaderboard (read from the run order index) and experiments' run counts (kept per experiment)
against a pure reference of the old scans, over a random sequence of creates, metric logs,
deletes and restores, through a real daemon, and again after a restart that indexes and counts
a store written without them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training import run_order
from tesserad.training.tracking import ORDER_INDEXED, RUN_COUNTS, RUNS_COUNTED
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

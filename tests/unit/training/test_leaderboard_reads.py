"""What a Leaderboard reads on a real store: the rows of the order index it visits are bounded
by the page it answers, however many deleted runs led the metric."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tesserad.errors import FailedPrecondition
from tesserad.store import Key, ReadTxn, Store
from tesserad.training import run_order
from tesserad.training.tracking import TABLES, MetricPoint, RunOrder, Tracking


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[Tracking]:
    store = Store.open(
        tmp_path / "store", map_size=256 * 2**20, tables=[*TABLES, "meta"], durability="relaxed"
    )
    yield Tracking(store)
    store.close()


def _log(tracking: Tracking, run_id: str, value: float) -> None:
    tracking.log_metrics(run_id, [MetricPoint("val_loss", value, 0)]).result()


def _visited_rows(monkeypatch: pytest.MonkeyPatch, counted: str = run_order.TABLE) -> list[int]:
    """A counter of the rows of table `counted` that scans yield from now on."""
    visited = [0]
    scan = ReadTxn.scan

    def counting(self: ReadTxn, table: str, *args: Any, **kwargs: Any) -> Iterator[tuple[Key, bytes]]:
        for row in scan(self, table, *args, **kwargs):
            if table == counted:
                visited[0] += 1
            yield row

    monkeypatch.setattr(ReadTxn, "scan", counting)
    return visited


def test_a_leaderboard_reads_past_no_deleted_leader(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaders = [tracking.create_run("lb-gone").run_id for _ in range(50)]
    for i, run_id in enumerate(leaders):
        _log(tracking, run_id, i / 100)  # better (lower) than every kept run
    for run_id in leaders:
        tracking.delete_run(run_id)
    kept = [tracking.create_run("lb-gone").run_id for _ in range(5)]
    for i, run_id in enumerate(kept):
        _log(tracking, run_id, 1 + i)
    visited = _visited_rows(monkeypatch)
    board = tracking.leaderboard("lb-gone", "val_loss", None, None, 3)
    assert [run.run_id for run, _ in board] == kept[:3]
    assert [value for _, value in board] == [1.0, 2.0, 3.0]
    assert visited[0] <= 3


def test_a_run_deleted_with_its_experiment_is_read_past_by_no_leaderboard_either(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [tracking.create_run("lb-exp").run_id for _ in range(40)]
    for i, run_id in enumerate(runs):
        _log(tracking, run_id, i)
    tracking.delete_experiment("lb-exp")
    visited = _visited_rows(monkeypatch)
    with pytest.raises(FailedPrecondition, match="is deleted; restore it"):
        tracking.leaderboard("lb-exp", "val_loss", None, None, 10)
    assert visited[0] == 0
    tracking.restore_experiment("lb-exp")
    board = tracking.leaderboard("lb-exp", "val_loss", None, None, 2)
    assert [run.run_id for run, _ in board] == runs[:2]


def test_experiments_by_prefix_read_from_the_prefix_on(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(60):
        tracking.create_experiment(f"aa-{i:02}")
    tracking.create_experiment("zz-last")
    visited = _visited_rows(monkeypatch, "experiments")
    experiments, token = tracking.list_experiments("zz")
    assert [e.name for e in experiments] == ["zz-last"] and not token
    assert visited[0] <= 1
    page, token = tracking.list_experiments("aa-5", size=5)
    assert [e.name for e in page] == [f"aa-{i}" for i in range(50, 55)]
    rest, token = tracking.list_experiments("aa-5", size=5, token=token)
    assert [e.name for e in rest] == [f"aa-{i}" for i in range(55, 60)]


def test_an_experiments_deleted_runs_are_listed_without_reading_its_active_ones(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [tracking.create_run("few-gone").run_id for _ in range(80)]
    for run_id in runs[10], runs[50]:
        tracking.delete_run(run_id)
    visited = _visited_rows(monkeypatch, "experiment_runs")
    listed, token = tracking.list_runs("few-gone", view="deleted", size=1)
    assert [run.run_id for run in listed] == [runs[50]]
    listed, token = tracking.list_runs("few-gone", view="deleted", size=1, token=token)
    assert [run.run_id for run in listed] == [runs[10]] and not token
    by_loss, _ = tracking.list_runs("few-gone", view="deleted", order=RunOrder("val_loss", "last", None))
    assert [run.run_id for run in by_loss] == [runs[50], runs[10]]
    assert visited[0] == 0

"""What ListRuns reads of an experiment on a real store: its record only where the answer
depends on it (a first page: whether it exists, and whether it is deleted), never its run count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tesserad.errors import NotFound
from tesserad.store import Key, ReadTxn, Store
from tesserad.training.tracking import RUN_COUNTS, TABLES, MetricFilter, Tracking


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[Tracking]:
    store = Store.open(
        tmp_path / "store", map_size=256 * 2**20, tables=[*TABLES, "meta"], durability="relaxed"
    )
    yield Tracking(store)
    store.close()


def _experiment_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The experiment tables' rows that gets read from now on, by table."""
    read: list[str] = []
    get, exists = ReadTxn.get, ReadTxn.exists

    def counting_get(self: ReadTxn, table: str, key: Key) -> bytes | None:
        if table in ("experiments", RUN_COUNTS):
            read.append(table)
        return get(self, table, key)

    def counting_exists(self: ReadTxn, table: str, key: Key) -> bool:
        if table in ("experiments", RUN_COUNTS):
            read.append(table)
        return exists(self, table, key)

    monkeypatch.setattr(ReadTxn, "get", counting_get)
    monkeypatch.setattr(ReadTxn, "exists", counting_exists)
    return read


def test_a_later_page_reads_nothing_of_the_experiment(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [tracking.create_run("lr-pages").run_id for _ in range(3)]
    first, token = tracking.list_runs("lr-pages", size=1)
    read = _experiment_reads(monkeypatch)
    second, _ = tracking.list_runs("lr-pages", size=1, token=token)
    assert [run.run_id for run in first + second] == runs[:0:-1]
    assert read == []


def test_a_first_page_reads_the_experiments_record_once_and_no_run_count(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking.create_run("lr-first")
    read = _experiment_reads(monkeypatch)
    tracking.list_runs("lr-first", size=1)
    tracking.list_runs("lr-first", metric_filters=[MetricFilter("val_loss", "last", "lt", 1.0)])
    assert read == ["experiments", "experiments"]


def test_a_first_page_of_an_unknown_experiment_is_not_found_naming_the_nearest(tracking: Tracking) -> None:
    tracking.create_run("lr-known")
    with pytest.raises(NotFound, match="experiment 'lr-knwn' does not exist; did you mean 'lr-known'"):
        tracking.list_runs("lr-knwn")

"""each_row_once: a start-up pass over a table, batch by batch, finished by its marker."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tesserad.errors import ResourceExhausted
from tesserad.store import Key, Store, WriteTxn, each_row_once
from tesserad.training import tracking
from tesserad.training.tracking import Tracking


@pytest.fixture
def store(tmp_path: Path):
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["items", "meta", *tracking.TABLES])
    yield store
    store.close()


def test_a_pass_visits_every_row_once_reporting_each_batch_it_commits(store: Store) -> None:
    with store.write() as txn:
        for i in range(5):
            txn.put("items", (i,), b"")
    visited: list[Key] = []
    committed: list[int] = []

    def visit(txn: WriteTxn, key: Key, raw: bytes) -> bool:
        visited.append(key)
        return key[0] != 3

    assert each_row_once(store, "items", ("items_passed",), visit, batch=2, committed=committed.append) == 4
    assert visited == [(i,) for i in range(5)]
    assert committed == [2, 4, 5]
    # The marker finishes it: a second pass visits nothing and commits no batch.
    assert each_row_once(store, "items", ("items_passed",), visit, batch=2, committed=committed.append) == 0
    assert len(visited) == 5 and committed == [2, 4, 5]


def test_a_reserved_pass_writes_into_the_reserve_an_ordinary_one_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", map_size=2**20, durability="relaxed", tables=["todo", "items", "meta"])
    try:
        with store.write() as txn:
            txn.put("todo", (0,), b"")
        # Fill the map up to its reserve with ordinary writes.
        for i in range(100_000):
            try:
                store.submit(lambda txn, i=i: txn.put("items", (i,), os.urandom(512))).result()
            except ResourceExhausted:
                break

        def visit(txn: WriteTxn, key: Key, raw: bytes) -> bool:
            txn.put("items", ("late", key[0]), os.urandom(4096))
            return True

        with pytest.raises(ResourceExhausted, match=r"store.map_size"):
            each_row_once(store, "todo", ("todo_passed",), visit, batch=1)
        with store.read() as txn:
            assert not txn.exists("meta", ("todo_passed",))
        # A pass that frees space (checkpoint retention) runs when the store is near full.
        assert each_row_once(store, "todo", ("todo_passed",), visit, batch=1, reserved=True) == 1
        with store.read() as txn:
            assert txn.exists("meta", ("todo_passed",)) and txn.exists("items", ("late", 0))
    finally:
        store.close()


def test_tracking_start_up_passes_log_their_progress_per_batch(store: Store, caplog) -> None:
    with store.write() as txn:
        for i in range(70):  # more than one batch of 64
            txn.put("experiments", (f"e{i:02}",), b"")
    with caplog.at_level(logging.INFO, logger=tracking.__name__):
        Tracking(store).count_experiment_runs(progress_every_s=0)
    progress = [r for r in caplog.records if r.getMessage() == "counting the runs of experiments"]
    assert [(r.experiments_done, r.experiments) for r in progress] == [(64, 70), (70, 70)]
    counted = [r for r in caplog.records if r.getMessage() == "counted the runs of experiments"]
    assert [r.experiments for r in counted] == [70]
    with store.read() as txn:
        assert txn.exists("meta", tracking.RUNS_COUNTED)

"""Which start-up markers a daemon trusts: those the store's last writer kept (its recorded
schema, known by the token it shares with the lock file), none after an unknown writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tesserad.errors import FailedPrecondition
from tesserad.store import Store, encode_record
from tesserad.store.incarnation import store_incarnation
from tesserad.store.lockfile import LOCK_NAME, DataDirLock
from tesserad.store.schema import SCHEMA_KEY, STORE_SCHEMA, open_for_writing, recorded_schema, refuse_newer

KEPT_SINCE_THIS = ("kept_since_this_schema",)
KEPT_SINCE_NEXT = ("kept_since_the_next_schema",)
MARKERS = {KEPT_SINCE_THIS: STORE_SCHEMA, KEPT_SINCE_NEXT: STORE_SCHEMA + 1}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store", map_size=1 << 24, tables=["meta"])
    yield opened
    opened.close()


def start(store: Store, data_dir: Path) -> list[object]:
    """What a daemon does at start: take the data directory, then the store; the markers it
    dropped. The markers are written again, as the backfills would."""
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        dropped = open_for_writing(store, lock, MARKERS, "1.0.0")
    finally:
        lock.release()
    with store.write() as txn:
        for marker in MARKERS:
            txn.put("meta", marker, b"done")
    return list(dropped)


def test_the_last_writers_markers_are_trusted_after_a_restart_or_a_crash(
    store: Store, tmp_path: Path
) -> None:
    start(store, tmp_path)
    # A marker from a newer schema than the one recorded is dropped; this schema's is kept.
    assert start(store, tmp_path) == [KEPT_SINCE_NEXT]
    with store.read() as txn:
        record = recorded_schema(txn)
    assert record is not None and (record.schema, record.tesserad_version) == (STORE_SCHEMA, "1.0.0")


def test_every_marker_goes_after_a_tesserad_that_records_no_schema_took_the_directory(
    store: Store, tmp_path: Path
) -> None:
    start(store, tmp_path)
    # What a tesserad from before schema versions leaves in the lock file: its pid alone.
    (tmp_path / LOCK_NAME).write_text("4242\n")
    assert start(store, tmp_path) == [KEPT_SINCE_THIS, KEPT_SINCE_NEXT]
    assert start(store, tmp_path) == [KEPT_SINCE_NEXT]


def test_a_store_from_before_schema_versions_drops_the_markers_it_holds(store: Store, tmp_path: Path) -> None:
    with store.write() as txn:
        txn.put("meta", KEPT_SINCE_THIS, b"done")
    assert start(store, tmp_path) == [KEPT_SINCE_THIS]


def test_a_newer_schema_is_refused_before_the_open_creates_a_table(store: Store, tmp_path: Path) -> None:
    start(store, tmp_path)
    newer = {"schema": STORE_SCHEMA + 1, "tesserad_version": "9.0.0", "token": "t", "at": 0.0}
    with store.write() as txn:
        txn.put("meta", SCHEMA_KEY, encode_record("store_schema", 1, newer))
    store.close()
    with pytest.raises(
        FailedPrecondition, match=rf"has schema {STORE_SCHEMA + 1}, written by tesserad 9.0.0"
    ):
        Store.open(tmp_path / "store", map_size=1 << 24, tables=["meta", "new"], check=refuse_newer("d"))
    reopened = Store.open(tmp_path / "store", map_size=1 << 24, tables=["meta"])
    try:
        with reopened.read() as txn:
            record = recorded_schema(txn)
            assert txn.exists("meta", KEPT_SINCE_THIS)
        assert record is not None and (record.schema, record.tesserad_version) == (STORE_SCHEMA + 1, "9.0.0")
    finally:
        reopened.close()
    env = lmdb.open(str(tmp_path / "store"), readonly=True, max_dbs=1)
    try:
        with env.begin() as txn:
            assert [bytes(key) for key in txn.cursor().iternext(values=False)] == [b"meta"]
    finally:
        env.close()


def test_a_new_store_passes_the_check(tmp_path: Path) -> None:
    opened = Store.open(tmp_path / "store", map_size=1 << 24, tables=["meta"], check=refuse_newer("d"))
    opened.close()


def test_a_store_gets_an_incarnation_once_and_keeps_it(store: Store, tmp_path: Path) -> None:
    """Written by the first daemon that takes the store (a new one, or one from before
    incarnations), then read as it was by every daemon after."""
    with store.read() as txn:
        assert store_incarnation(txn) is None
    start(store, tmp_path)
    with store.read() as txn:
        first = store_incarnation(txn)
    assert first
    start(store, tmp_path)
    with store.read() as txn:
        assert store_incarnation(txn) == first

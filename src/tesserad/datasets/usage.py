"""What datasets take of the quota, and each dataset's summary, kept as versions come and go.

Every transaction that adds or deletes a dataset version calls `add_version` or
`remove_version` in it (`remove_dataset` for all of a dataset's versions at once, which also
says what files they held), so that an upload's quota check, GetDataset and ListDatasets read
a few rows whatever the number of versions stored, and deleting a dataset reads none of them:

- `dataset_summaries` (name,): the dataset's newest version, its number of versions and the
  bytes of its distinct contents (a file that several of its versions hold counted once).
- `dataset_contents` (name, sha256): how many of the dataset's versions hold that content.
- `dataset_usage` ("content", sha256): how many datasets hold that content, and its size;
  ("total",): the bytes of every distinct content of all datasets, which the quota bounds.

A store written before these tables gets them at start, from one read of every version
(`index_usage`), finished by a marker in "meta" after which a start costs one read. The
backfill empties the tables first, so it rebuilds them whole wherever it runs again (after an
older daemon may have added or deleted versions without them: tesserad.store.schema).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tesserad.store import Key, ReadTxn, Store, WriteTxn, decode_record, each_row_once, encode_record

log = logging.getLogger(__name__)

SUMMARIES = "dataset_summaries"
CONTENTS = "dataset_contents"
USAGE = "dataset_usage"
TABLES = [SUMMARIES, CONTENTS, USAGE]
# In the "meta" table once the three tables above hold every stored version.
USAGE_INDEXED = ("dataset_usage_indexed",)
_TOTAL: Key = ("total",)
_SUMMARY_KIND = "dataset_summary"
_CONTENT_KIND = "dataset_content"
_USAGE_KIND = "dataset_usage"
_SCHEMA = 1
# The (sha256, size in bytes) of a stored version record.
ReadContent = Callable[[bytes], tuple[str, int]]
# Versions read per write transaction of the backfill.
_INDEX_BATCH = 512


@dataclass(frozen=True)
class DatasetSummary:
    latest_version: int
    version_count: int
    size_bytes: int  # distinct contents counted once


def _read(txn: ReadTxn, table: str, key: Key, kind: str) -> dict[str, int] | None:
    raw = txn.get(table, key)
    return None if raw is None else decode_record(raw, kind, _SCHEMA)[1]


def _write(txn: WriteTxn, table: str, key: Key, kind: str, data: dict[str, int]) -> None:
    txn.put(table, key, encode_record(kind, _SCHEMA, data))


def used_bytes(txn: ReadTxn) -> int:
    """Bytes of every distinct content the datasets hold: what counts against the quota."""
    total = _read(txn, USAGE, _TOTAL, _USAGE_KIND)
    return 0 if total is None else total["size_bytes"]


def content_stored(txn: ReadTxn, sha256: str) -> bool:
    """Whether a dataset version holds this content (it then takes no more of the quota)."""
    return txn.exists(USAGE, ("content", sha256))


def summary(txn: ReadTxn, name: str) -> DatasetSummary:
    """The dataset's summary; all zero for a dataset with no version."""
    data = _read(txn, SUMMARIES, (name,), _SUMMARY_KIND)
    if data is None:
        return DatasetSummary(0, 0, 0)
    return DatasetSummary(data["latest_version"], data["version_count"], data["size_bytes"])


def _add_to_total(txn: WriteTxn, size: int) -> None:
    total = used_bytes(txn) + size
    # No row once nothing is used, as the backfill of a store without versions leaves it.
    if total:
        _write(txn, USAGE, _TOTAL, _USAGE_KIND, {"size_bytes": total})
    else:
        txn.delete(USAGE, _TOTAL)


def add_version(txn: WriteTxn, name: str, version: int, sha256: str, size: int) -> None:
    """Count a version written in this transaction."""
    current = summary(txn, name)
    held = _read(txn, CONTENTS, (name, sha256), _CONTENT_KIND)
    new_to_dataset = held is None
    versions = 0 if held is None else held["versions"]
    _write(txn, CONTENTS, (name, sha256), _CONTENT_KIND, {"versions": versions + 1})
    if new_to_dataset:
        shared = _read(txn, USAGE, ("content", sha256), _USAGE_KIND)
        if shared is None:
            _add_to_total(txn, size)
        datasets = 1 if shared is None else shared["datasets"] + 1
        _write(txn, USAGE, ("content", sha256), _USAGE_KIND, {"datasets": datasets, "size_bytes": size})
    data = {
        "latest_version": max(current.latest_version, version),
        "version_count": current.version_count + 1,
        "size_bytes": current.size_bytes + (size if new_to_dataset else 0),
    }
    _write(txn, SUMMARIES, (name,), _SUMMARY_KIND, data)


def remove_version(txn: WriteTxn, name: str, sha256: str, size: int, newest: int) -> None:
    """Uncount a version deleted in this transaction; `newest`: the dataset's newest version left
    (0 for none)."""
    held = _read(txn, CONTENTS, (name, sha256), _CONTENT_KIND)
    versions = 0 if held is None else held["versions"]
    last_of_content = versions <= 1
    if not last_of_content:
        _write(txn, CONTENTS, (name, sha256), _CONTENT_KIND, {"versions": versions - 1})
    else:
        txn.delete(CONTENTS, (name, sha256))
        _uncount_holder(txn, sha256)
    current = summary(txn, name)
    if current.version_count <= 1:
        txn.delete(SUMMARIES, (name,))
        return
    data = {
        "latest_version": newest,
        "version_count": current.version_count - 1,
        "size_bytes": current.size_bytes - (size if last_of_content else 0),
    }
    _write(txn, SUMMARIES, (name,), _SUMMARY_KIND, data)


def remove_dataset(txn: WriteTxn, name: str) -> list[str]:
    """Uncount every version of a dataset deleted whole in this transaction, from the index's
    rows alone (no version record is read); the sha256s of the contents its versions held."""
    contents = [str(key[1]) for key, _ in txn.scan(CONTENTS, (name,))]
    for sha256 in contents:
        txn.delete(CONTENTS, (name, sha256))
        _uncount_holder(txn, sha256)
    txn.delete(SUMMARIES, (name,))
    return contents


def _uncount_holder(txn: WriteTxn, sha256: str) -> None:
    """A dataset no longer holds the content `sha256`; the quota stops counting it once no
    dataset does."""
    shared = _read(txn, USAGE, ("content", sha256), _USAGE_KIND)
    if shared is None:
        return
    if shared["datasets"] <= 1:
        txn.delete(USAGE, ("content", sha256))
        _add_to_total(txn, -shared["size_bytes"])
    else:
        data = {"datasets": shared["datasets"] - 1, "size_bytes": shared["size_bytes"]}
        _write(txn, USAGE, ("content", sha256), _USAGE_KIND, data)


def index_usage(store: Store, versions_table: str, read_content: ReadContent) -> int:
    """Build the tables from every row of `versions_table` (keyed (name, version)), once (see
    the module's doc); how many versions were counted."""

    def count(txn: WriteTxn, key: Key, raw: bytes) -> bool:
        sha256, size = read_content(raw)
        add_version(txn, str(key[0]), int(key[1]), sha256, size)
        return True

    # TABLES whole: an older daemon may have added or deleted versions without these rows.
    counted = each_row_once(store, versions_table, USAGE_INDEXED, count, batch=_INDEX_BATCH, rebuilt=TABLES)
    if counted:
        log.info("indexed the quota usage of dataset versions", extra={"versions": counted})
    return counted

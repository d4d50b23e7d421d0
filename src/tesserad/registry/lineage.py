"""Lineage that outlives its parent: a version whose parent version is deleted (alone or with its
model) keeps naming it, with a mark saying it was deleted and what it was.

A parent is named by model and number, and a model deleted by a tesserad from before
`tables.RETIRED_NUMBERS` and created again numbers from 1, so without the mark a child would come
to name an unrelated version. The mark lives in its own
table, keyed by the child, so the child's record stays as registered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

from tesserad.registry.records import DeletedParent, VersionRecord, decode_version
from tesserad.registry.tables import DELETED_PARENTS, DERIVED, VERSIONS
from tesserad.store import ReadTxn, WriteTxn, decode_record, encode_record

DELETED_PARENT_KIND = "deleted_parent"
DELETED_PARENT_SCHEMA = 1


def mark_parent_deleted(
    txn: WriteTxn, child: tuple[str, int], parent: tuple[str, int], record: VersionRecord | None
) -> None:
    """Mark `child`'s lineage parent (model, version) as deleted; `record` is the parent's, None
    where it is lost. The mark names the parent too, so it reads alone with any LMDB tool."""
    data: dict[str, object] = {"model": parent[0], "version": parent[1], "sha256": "", "deleted_at": 0.0}
    if record is not None:
        data.update(sha256=record.sha256, deleted_at=time.time())
    txn.put(DELETED_PARENTS, child, encode_record(DELETED_PARENT_KIND, DELETED_PARENT_SCHEMA, data))


def orphan_derived(txn: WriteTxn, parent: VersionRecord) -> None:
    """In `parent`'s deleting transaction: mark each version derived from it, and drop the
    rows that list them as its derived versions (a later version of that number is not it)."""
    children = [(str(key[2]), int(key[3])) for key, _ in txn.scan(DERIVED, (parent.model, parent.version))]
    for child in children:
        mark_parent_deleted(txn, child, (parent.model, parent.version), parent)
        txn.delete(DERIVED, (parent.model, parent.version, *child))


def drop_mark(txn: WriteTxn, record: VersionRecord) -> None:
    """In `record`'s own deleting transaction."""
    if record.lineage.parent_version:
        txn.delete(DELETED_PARENTS, (record.model, record.version))


def with_parent_state(txn: ReadTxn, record: VersionRecord) -> VersionRecord:
    """The version record with its lineage's `parent_deleted` filled in where it is marked."""
    if not record.lineage.parent_version:
        return record
    raw = txn.get(DELETED_PARENTS, (record.model, record.version))
    if raw is None:
        return record
    data = decode_record(raw, DELETED_PARENT_KIND, DELETED_PARENT_SCHEMA)[1]
    gone = DeletedParent(sha256=data["sha256"], deleted_at=data["deleted_at"])
    return replace(record, lineage=replace(record.lineage, parent_deleted=gone))


def lineage_datasets(txn: ReadTxn) -> Iterator[tuple[str, int]]:
    """The (dataset, version) of every dataset version a stored version's lineage names."""
    for _key, raw in txn.scan(VERSIONS):
        for dataset in decode_version(raw).lineage.datasets:
            yield dataset.name, dataset.version

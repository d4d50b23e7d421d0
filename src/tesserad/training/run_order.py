"""The index that orders runs by a metric summary: `run_metric_order`.

One row per run, metric key and orderable summary field (last, min, max):
`experiment | metric tag | field | value | run id -> b""`, written and removed in the
transaction that changes the summary, so ListRuns ordered by a metric reads a page as range
scans from the page token instead of sorting every run. The value is encoded so that bytes
order as the floats do (-0.0 as 0.0, which compares equal to it); the metric key is a 16-byte
digest, which keeps the key within LMDB's 511 bytes with a 128-byte experiment name and a
400-byte metric key. Deleted runs' rows live in `deleted_run_metric_order`, the same layout,
moved there and back in the transaction that deletes or restores the run: a Leaderboard or an
active listing then reads no row of a deleted run, however many led the metric.

ListRuns keeps ties newest first (run id descending) in either direction: descending is one
reversed scan; ascending walks the distinct values upwards and each value's runs downwards.
Leaderboard keeps them oldest first, the mirror image.

A NaN field has its row under the field's `nan_field` name instead, with one fixed value: a
listing reads those rows after every number in either direction (`ranked` of the NaN field,
newest first), a Leaderboard never does, and `logged` still sees the metric.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections.abc import Iterable, Iterator, Mapping

from tesserad.store import ReadTxn, WriteTxn
from tesserad.store.keys import Key, KeyPart

TABLE = "run_metric_order"
DELETED_TABLE = "deleted_run_metric_order"

_DOUBLE = struct.Struct(">d")
_BITS = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def order_value(value: float) -> bytes:
    """8 bytes that sort as `value` does among finite and infinite floats."""
    (bits,) = _BITS.unpack(_DOUBLE.pack(value + 0.0))  # + 0.0 turns -0.0 into 0.0
    return _BITS.pack(bits ^ _ALL if bits & _SIGN else bits | _SIGN)


# The one value of the rows of `nan_field`s.
NAN_ROW = b"\xff" * 8


def nan_field(name: str) -> str:
    """The field name under which a run's NaN summary field has its row."""
    return f"{name}.nan"


def _row(name: str, value: float) -> tuple[str, bytes]:
    """(field, encoded value) of a summary field's row: a NaN one goes apart (`nan_field`)."""
    return (nan_field(name), NAN_ROW) if value != value else (name, order_value(value))


def _value(part: KeyPart) -> bytes:
    if not isinstance(part, bytes):
        raise TypeError(f"{TABLE} holds an encoded value as bytes, not {type(part).__name__}")
    return part


def _metric_tag(metric: str) -> bytes:
    return hashlib.blake2b(metric.encode(), digest_size=16).digest()


def _table(deleted: bool) -> str:
    return DELETED_TABLE if deleted else TABLE


def update(
    txn: WriteTxn,
    experiment: str,
    run_id: str,
    metric: str,
    old: Mapping[str, float] | None,
    new: Mapping[str, float] | None,
    deleted: bool = False,
) -> None:
    """Move the run's rows for `metric` from the `old` summary fields to the `new` ones (None:
    no summary), in the deleted runs' table when `deleted`; a field whose value did not change
    costs nothing."""
    table = _table(deleted)
    tag = _metric_tag(metric)
    for name in new or old or {}:
        before = None if old is None else _row(name, old[name])
        after = None if new is None else _row(name, new[name])
        if before == after:
            continue
        if before is not None:
            txn.delete(table, (experiment, tag, *before, run_id))
        if after is not None:
            txn.put(table, (experiment, tag, *after, run_id), b"")


def move(
    txn: WriteTxn, experiment: str, run_id: str, metric: str, fields: Mapping[str, float], deleted: bool
) -> None:
    """Put the run's rows for `metric` (its summary `fields`) in the deleted runs' table when
    `deleted`, else in the active one, and out of the other; a row already in place stays."""
    tag = _metric_tag(metric)
    for name, value in fields.items():
        key = (experiment, tag, *_row(name, value), run_id)
        txn.delete(_table(not deleted), key)
        txn.put(_table(deleted), key, b"")


def logged(txn: ReadTxn, experiment: str, metric: str, deleted: bool = False) -> bool:
    """Whether any of the experiment's active runs (deleted ones when `deleted`) has `metric`."""
    return next(txn.scan(_table(deleted), (experiment, _metric_tag(metric)), limit=1), None) is not None


def ranked(
    txn: ReadTxn,
    experiment: str,
    metric: str,
    field: str,
    descending: bool,
    after: tuple[bytes, str] | None = None,
    deleted: bool = False,
) -> Iterator[tuple[bytes, str]]:
    """(encoded value, run id) of the experiment's active runs (deleted ones when `deleted`) with
    `metric`, in order (ties: newest first), after `after` when given."""
    table = _table(deleted)
    prefix = (experiment, _metric_tag(metric), field)
    if descending:
        resume = None if after is None else (*prefix, *after)
        for key, _ in txn.scan(table, prefix, after=resume, reverse=True):
            yield _value(key[3]), str(key[4])
        return
    resumed: bytes | None = None
    if after is not None:
        resumed, run_id = after
        for key, _ in txn.scan(table, (*prefix, resumed), after=(*prefix, resumed, run_id), reverse=True):
            yield resumed, str(key[4])
    for value in _distinct_values(txn, table, prefix, False, resumed):
        for key, _ in txn.scan(table, (*prefix, value), reverse=True):
            yield value, str(key[4])


def leaders(txn: ReadTxn, experiment: str, metric: str, field: str, descending: bool) -> Iterator[str]:
    """Run ids of the experiment's active runs with `metric` in order, ties oldest first (run id
    ascending) in either direction, as Leaderboard has always ranked them: ascending is one
    scan; descending walks the distinct values downwards and each value's runs upwards."""
    prefix = (experiment, _metric_tag(metric), field)
    if not descending:
        for key, _ in txn.scan(TABLE, prefix):
            yield str(key[4])
        return
    for value in _distinct_values(txn, TABLE, prefix, True):
        for key, _ in txn.scan(TABLE, (*prefix, value)):
            yield str(key[4])


def _distinct_values(
    txn: ReadTxn, table: str, prefix: tuple[str, bytes, str], descending: bool, beyond: bytes | None = None
) -> Iterator[bytes]:
    """Each distinct value under `prefix` once, in order, past `beyond` when given: one
    single-row scan per value."""
    value = beyond
    while True:
        start: Key | None = None
        after: Key | None = None
        if value is not None and descending:
            # Every row of `value` extends (prefix, value), so that key bounds them from above.
            after = (*prefix, value)
        elif value is not None:
            # Values are 8 bytes, so value + 0x00 is past every row of `value` and before any
            # larger value.
            start = (*prefix, value + b"\x00")
        row = next(txn.scan(table, prefix, start=start, after=after, reverse=descending, limit=1), None)
        if row is None:
            return
        value = _value(row[0][3])
        yield value


def ranked_across(
    txn: ReadTxn,
    sources: Iterable[tuple[str, bool]],
    metric: str,
    field: str,
    descending: bool,
    after: tuple[bytes, str] | None = None,
) -> Iterator[tuple[bytes, str]]:
    """`ranked` over several (experiment, deleted) sources at once, merged into the one order (run
    ids are unique across experiments, and a run is in one table, so the order stays total)."""

    def merge_key(entry: tuple[bytes, str]) -> tuple[bytes, str]:
        # Merged as a descending sequence: ties (run id descending) already are; ascending
        # values become descending ones with their bytes inverted.
        value, run_id = entry
        return (value if descending else bytes(255 - b for b in value)), run_id

    streams = [ranked(txn, name, metric, field, descending, after, deleted) for name, deleted in sources]
    yield from heapq.merge(*streams, key=merge_key, reverse=True)

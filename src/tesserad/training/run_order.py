"""The index that orders runs by a metric summary: `run_metric_order`.

One row per run, metric key and orderable summary field (last, min, max):
`experiment | metric tag | field | value | run id -> b""`, written and removed in the
transaction that changes the summary, so ListRuns ordered by a metric reads a page as range
scans from the page token instead of sorting every run. The value is encoded so that bytes
order as the floats do (-0.0 as 0.0, which compares equal to it); the metric key is a 16-byte
digest, which keeps the key within LMDB's 511 bytes with a 128-byte experiment name and a
400-byte metric key. Rows cover deleted runs too: a listing filters by view as it reads.

Ties keep newest first (run id descending) in either direction: descending is one reversed
scan; ascending walks the distinct values upwards and each value's runs downwards.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections.abc import Iterable, Iterator, Mapping

from tesserad.store import ReadTxn, WriteTxn
from tesserad.store.keys import KeyPart

TABLE = "run_metric_order"

_DOUBLE = struct.Struct(">d")
_BITS = struct.Struct(">Q")
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def order_value(value: float) -> bytes:
    """8 bytes that sort as `value` does among finite and infinite floats."""
    (bits,) = _BITS.unpack(_DOUBLE.pack(value + 0.0))  # + 0.0 turns -0.0 into 0.0
    return _BITS.pack(bits ^ _ALL if bits & _SIGN else bits | _SIGN)


def _value(part: KeyPart) -> bytes:
    if not isinstance(part, bytes):
        raise TypeError(f"{TABLE} holds an encoded value as bytes, not {type(part).__name__}")
    return part


def _metric_tag(metric: str) -> bytes:
    return hashlib.blake2b(metric.encode(), digest_size=16).digest()


def update(
    txn: WriteTxn,
    experiment: str,
    run_id: str,
    metric: str,
    old: Mapping[str, float] | None,
    new: Mapping[str, float] | None,
) -> None:
    """Move the run's rows for `metric` from the `old` summary fields to the `new` ones (None:
    no summary); a field whose value did not change costs nothing."""
    tag = _metric_tag(metric)
    for name in new or old or {}:
        before = None if old is None else order_value(old[name])
        after = None if new is None else order_value(new[name])
        if before == after:
            continue
        if before is not None:
            txn.delete(TABLE, (experiment, tag, name, before, run_id))
        if after is not None:
            txn.put(TABLE, (experiment, tag, name, after, run_id), b"")


def ranked(
    txn: ReadTxn,
    experiment: str,
    metric: str,
    field: str,
    descending: bool,
    after: tuple[bytes, str] | None = None,
) -> Iterator[tuple[bytes, str]]:
    """(encoded value, run id) of the experiment's runs with `metric`, in order (ties: newest
    first), after `after` when given."""
    prefix = (experiment, _metric_tag(metric), field)
    if descending:
        resume = None if after is None else (*prefix, *after)
        for key, _ in txn.scan(TABLE, prefix, after=resume, reverse=True):
            yield _value(key[3]), str(key[4])
        return
    value: bytes | None = None
    if after is not None:
        value, run_id = after
        for key, _ in txn.scan(TABLE, (*prefix, value), after=(*prefix, value, run_id), reverse=True):
            yield value, str(key[4])
    while True:
        # The first row of the next larger value: values are 8 bytes, so value + 0x00 is past
        # every row of `value` and before any larger value.
        start = None if value is None else (*prefix, value + b"\x00")
        first = next(txn.scan(TABLE, prefix, start=start, limit=1), None)
        if first is None:
            return
        value = _value(first[0][3])
        for key, _ in txn.scan(TABLE, (*prefix, value), reverse=True):
            yield value, str(key[4])


def ranked_across(
    txn: ReadTxn,
    experiments: Iterable[str],
    metric: str,
    field: str,
    descending: bool,
    after: tuple[bytes, str] | None = None,
) -> Iterator[tuple[bytes, str]]:
    """`ranked` over several experiments at once, merged into the one order (run ids are unique
    across experiments, so the order stays total)."""

    def merge_key(entry: tuple[bytes, str]) -> tuple[bytes, str]:
        # Merged as a descending sequence: ties (run id descending) already are; ascending
        # values become descending ones with their bytes inverted.
        value, run_id = entry
        return (value if descending else bytes(255 - b for b in value)), run_id

    streams = [ranked(txn, name, metric, field, descending, after) for name in experiments]
    yield from heapq.merge(*streams, key=merge_key, reverse=True)

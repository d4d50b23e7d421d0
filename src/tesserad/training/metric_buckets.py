"""Multi-resolution summaries of metric points, so that a downsampled read costs what it returns.

Level l (1..LEVELS) cuts a metric's steps into buckets 16**l steps wide: bucket b of level l
covers steps [b * 16**l, (b + 1) * 16**l) and holds how many points it has and its lowest and
highest point (step, value, time). Level 0 is the points themselves. Buckets are stored as
`run | key | level | bucket`, written in the transaction that writes their points, so they are
always exact: a step written again (the last write wins) or dropped when a resumed attempt
supersedes it has its buckets recomputed from the 16 records below them, level by level.

Any step range is covered by at most 15 buckets of each level at either end and whole buckets
of one level in between (`cover`), so a range is counted, or cut into groups with each group's
extremes, by reading a number of records set by the groups asked for (at most 16 buckets per
group, plus the ends), not by the points the range holds.

A metric is addressed by its packed prefix `pack((run_id, key))` (`metric_prefix`): the hot
paths append packed integers to it instead of packing whole keys.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from tesserad.store import ReadTxn, WriteTxn, pack, pack_int, trailing_int

POINTS = "metrics"  # run | key | step -> value, time (written by tracking)
TABLE = "metric_buckets"  # run | key | level | bucket -> count, lowest and highest point
LEVELS = 10  # the widest buckets are 16**10 = 2**40 steps
MAX_STEP = 2**63 - 1
_BITS = 4  # each level's buckets are 2**4 = 16 times wider than the level below
_FANOUT = 1 << _BITS
_POINT = struct.Struct("<dd")  # value, time: the stored point (tesserad.store.records)
_RECORD = struct.Struct("<qqddqdd")  # count, low step, value, time, high step, value, time
_RECORD_DTYPE = np.dtype(
    [
        ("count", "<i8"),
        ("low_step", "<i8"),
        ("low_value", "<f8"),
        ("low_time", "<f8"),
        ("high_step", "<i8"),
        ("high_value", "<f8"),
        ("high_time", "<f8"),
    ]
)
_POINT_DTYPE = np.dtype([("value", "<f8"), ("time", "<f8")])


class Sample(NamedTuple):
    step: int
    value: float
    time: float


class Bucket(NamedTuple):
    points: int  # how many points the bucket covers
    low: Sample  # the lowest value; of equal values, the earliest step
    high: Sample  # the highest value; of equal values, the earliest step


def metric_prefix(run_id: str, key: str) -> bytes:
    return pack((run_id, key))


def point_key(metric: bytes, step: int) -> bytes:
    return metric + pack_int(step)


def _bucket_key(metric: bytes, level: int, index: int) -> bytes:
    return metric + pack_int(level) + pack_int(index)


def encode_bucket(bucket: Bucket) -> bytes:
    return _RECORD.pack(bucket.points, *bucket.low, *bucket.high)


def decode_bucket(raw: bytes) -> Bucket:
    count, low_step, low_value, low_time, high_step, high_value, high_time = _RECORD.unpack(raw)
    return Bucket(count, Sample(low_step, low_value, low_time), Sample(high_step, high_value, high_time))


def _lower(a: Sample, b: Sample) -> bool:
    """Whether `a` is the low of the two: the lower value, NaN above every number (so a bucket's
    low is NaN only where all its points are), of equal values (NaN with NaN) the earlier step."""
    a_nan, b_nan = a.value != a.value, b.value != b.value
    if a_nan or b_nan:
        return b_nan and (not a_nan or a.step <= b.step)
    return a.value < b.value or (a.value == b.value and a.step <= b.step)


def _higher(a: Sample, b: Sample) -> bool:
    """Whether `a` is the high of the two: as `_lower`, NaN below every number."""
    a_nan, b_nan = a.value != a.value, b.value != b.value
    if a_nan or b_nan:
        return b_nan and (not a_nan or a.step <= b.step)
    return a.value > b.value or (a.value == b.value and a.step <= b.step)


def merge(a: Bucket, b: Bucket) -> Bucket:
    """The bucket of both; ties go to the earlier step, so the result never depends on order."""
    low = a.low if _lower(a.low, b.low) else b.low
    high = a.high if _higher(a.high, b.high) else b.high
    return Bucket(a.points + b.points, low, high)


def _low_rank(sample: Sample) -> tuple[bool, float]:
    value = sample.value
    return (True, 0.0) if value != value else (False, value)


def _high_rank(sample: Sample) -> tuple[bool, float]:
    value = sample.value
    return (False, 0.0) if value != value else (True, value)


def _bucket_samples(samples: list[Sample]) -> dict[int, Bucket]:
    """Level-1 buckets of samples sorted by step (min and max keep the first of equal values,
    and skip NaN where a number is there)."""
    out: dict[int, Bucket] = {}
    for index, group in itertools.groupby(samples, key=lambda s: s.step >> _BITS):
        members = list(group)
        out[index] = Bucket(len(members), min(members, key=_low_rank), max(members, key=_high_rank))
    return out


def _bucket_buckets(below: dict[int, Bucket]) -> dict[int, Bucket]:
    """The next level's buckets of buckets in bucket order."""
    out: dict[int, Bucket] = {}
    for index, group in itertools.groupby(below.items(), key=lambda item: item[0] >> _BITS):
        buckets = [bucket for _, bucket in group]
        merged = buckets[0]
        for bucket in buckets[1:]:
            merged = merge(merged, bucket)
        out[index] = merged
    return out


def add(txn: WriteTxn, metric: bytes, samples: list[Sample], rewritten: Iterable[int]) -> None:
    """Fold a batch of points just stored (one per step) into the buckets above them.

    Buckets over a step in `rewritten` (a point that replaced a stored one) are recomputed from
    the level below, since the point it replaced may have been their extreme; the others are
    merged with the batch's own buckets, one read and one write per bucket touched.
    """
    below = _bucket_samples(sorted(samples, key=attrgetter("step")))
    dirty = {step >> _BITS for step in rewritten}
    for level in range(1, LEVELS + 1):
        if level > 1:
            below = _bucket_buckets(below)
            dirty = {index >> _BITS for index in dirty}
        level_key = metric + pack_int(level)
        for index, batch in below.items():
            bucket_key = level_key + pack_int(index)
            if index in dirty:
                bucket = _recompute(txn, metric, level, index)
                assert bucket is not None, "a bucket over a point just written is not empty"
                txn.put_packed(TABLE, bucket_key, encode_bucket(bucket))
            else:
                raw = txn.get_packed(TABLE, bucket_key)
                txn.put_packed(
                    TABLE, bucket_key, encode_bucket(batch) if raw is None else _merged(raw, batch)
                )


def _merged(raw: bytes, bucket: Bucket) -> bytes:
    """`merge` of a stored bucket and a new one, straight from and to the record (ingest runs
    this for every level of every batch)."""
    count, low_step, low_value, low_time, high_step, high_value, high_time = _RECORD.unpack(raw)
    low, high = bucket.low, bucket.high
    if _lower(low, Sample(low_step, low_value, low_time)):
        low_step, low_value, low_time = low
    if _higher(high, Sample(high_step, high_value, high_time)):
        high_step, high_value, high_time = high
    return _RECORD.pack(
        count + bucket.points, low_step, low_value, low_time, high_step, high_value, high_time
    )


def _recompute(txn: ReadTxn, metric: bytes, level: int, index: int) -> Bucket | None:
    """A bucket from the (at most 16) records of the level below it; None if they are all gone."""
    first = index << _BITS
    merged: Bucket | None = None
    for bucket in records(txn, metric, level - 1, first, first + _FANOUT - 1):
        merged = bucket if merged is None else merge(merged, bucket)
    return merged


def truncate(txn: WriteTxn, metric: bytes, step: int) -> None:
    """Make the buckets match points already cut to steps <= `step` (-1: none left)."""
    for level in range(1, LEVELS + 1):
        kept = step >> (_BITS * level)  # the bucket holding `step`; -1 stays -1
        doomed = [
            raw_key
            for raw_key, _ in txn.packed_range(
                TABLE, _bucket_key(metric, level, kept + 1), _bucket_key(metric, level, MAX_STEP)
            )
        ]
        for raw_key in doomed:
            txn.delete_packed(TABLE, raw_key)
        if kept < 0:
            continue
        bucket = _recompute(txn, metric, level, kept)
        if bucket is None:
            txn.delete_packed(TABLE, _bucket_key(metric, level, kept))
        else:
            txn.put_packed(TABLE, _bucket_key(metric, level, kept), encode_bucket(bucket))


def rebuild(txn: WriteTxn, metric: bytes, chunk: int = 65536) -> int:
    """Recompute every bucket of a metric from its points (for stores written before buckets
    existed); returns the number of points. Reads the points `chunk` at a time."""
    doomed = [
        raw_key
        for raw_key, _ in txn.packed_range(
            TABLE, _bucket_key(metric, 1, 0), _bucket_key(metric, LEVELS, MAX_STEP)
        )
    ]
    for raw_key in doomed:
        txn.delete_packed(TABLE, raw_key)
    points = 0
    first = 0
    while True:
        samples = [bucket.low for bucket in records(txn, metric, 0, first, MAX_STEP, limit=chunk)]
        if not samples:
            return points
        add(txn, metric, samples, ())
        points += len(samples)
        if samples[-1].step == MAX_STEP:
            return points
        first = samples[-1].step + 1


def nonfinite_points(txn: ReadTxn, metric: bytes, chunk: int = 65536) -> list[bytes]:
    """The keys of a metric's NaN or infinite points, reading the points `chunk` at a time."""
    found: list[bytes] = []
    rows = txn.packed_range(POINTS, point_key(metric, 0), point_key(metric, MAX_STEP))
    while batch := list(itertools.islice(rows, chunk)):
        values = np.frombuffer(b"".join(value for _, value in batch), _POINT_DTYPE)["value"]
        found += [batch[i][0] for i in np.flatnonzero(~np.isfinite(values)).tolist()]
    return found


def totals(txn: ReadTxn, metric: bytes) -> Bucket | None:
    """Count and extremes of every point of a metric, from its top-level buckets."""
    merged: Bucket | None = None
    for bucket in records(txn, metric, LEVELS, 0, MAX_STEP):
        merged = bucket if merged is None else merge(merged, bucket)
    return merged


def last_point(txn: ReadTxn, metric: bytes) -> Sample | None:
    """The point at the highest step; None if the metric has none."""
    for raw_key, raw in txn.packed_range(
        POINTS, point_key(metric, 0), point_key(metric, MAX_STEP), reverse=True, limit=1
    ):
        return Sample(trailing_int(raw_key), *_POINT.unpack(raw))
    return None


def end_steps(txn: ReadTxn, metric: bytes, first: int, last: int) -> tuple[int, int] | None:
    """The steps of the first and the last point within first..last; None if there are none."""
    ends = []
    for reverse in (False, True):
        for raw_key, _ in txn.packed_range(
            POINTS, point_key(metric, first), point_key(metric, last), reverse=reverse, limit=1
        ):
            ends.append(trailing_int(raw_key))
    return (ends[0], ends[1]) if ends else None


def records(
    txn: ReadTxn, metric: bytes, level: int, first: int, last: int, limit: int | None = None
) -> Iterator[Bucket]:
    """The buckets first..last of a level that hold points, in order; level 0 gives each point as
    a bucket of one."""
    if level == 0:
        for raw_key, raw in txn.packed_range(
            POINTS, point_key(metric, first), point_key(metric, last), limit=limit
        ):
            value, time = _POINT.unpack(raw)
            sample = Sample(trailing_int(raw_key), value, time)
            yield Bucket(1, sample, sample)
    else:
        first_key, last_key = _bucket_key(metric, level, first), _bucket_key(metric, level, last)
        for _, raw in txn.packed_range(TABLE, first_key, last_key, limit=limit):
            yield decode_bucket(raw)


def cover(first: int, last: int, top: int) -> list[tuple[int, int, int]]:
    """Runs (level, first bucket, last bucket), of levels <= `top`, that hold exactly the steps
    first..last, in step order: the finest levels at the ends, `top` in the middle."""
    low, high = first, last + 1
    left: list[tuple[int, int, int]] = []
    right: list[tuple[int, int, int]] = []
    for level in range(top):
        if low >= high:
            break
        shift, up = _BITS * level, _BITS * (level + 1)
        # low and high are multiples of this level's width here; peel off what lies between
        # them and the next level's boundaries.
        aligned_low = min(-(-low >> up) << up, high)
        if aligned_low > low:
            left.append((level, low >> shift, (aligned_low >> shift) - 1))
        low = aligned_low
        aligned_high = max(high >> up << up, low)
        if aligned_high < high:
            right.append((level, aligned_high >> shift, (high >> shift) - 1))
        high = aligned_high
    if low < high:
        left.append((top, low >> (_BITS * top), (high >> (_BITS * top)) - 1))
    return left + right[::-1]


def count(txn: ReadTxn, metric: bytes, first: int, last: int) -> int:
    """How many points lie at steps first..last."""
    total = 0
    for level, low, high in cover(first, last, LEVELS):
        if level == 0:
            total += sum(1 for _ in txn.packed_range(POINTS, point_key(metric, low), point_key(metric, high)))
        else:
            for _, raw in txn.packed_range(
                TABLE, _bucket_key(metric, level, low), _bucket_key(metric, level, high)
            ):
                total += _RECORD.unpack_from(raw)[0]
    return total


def spread(
    txn: ReadTxn, metric: bytes, first: int, last: int, points: int, taken: Collection[int], wanted: int
) -> list[Sample]:
    """`wanted` points of steps first..last, which hold `points` points, at evenly spaced ranks
    among those not at the steps `taken` (each holding a point), in step order."""
    # A taken point's rank is the count of points before it; a rank among the others moves past
    # each taken rank at or below it.
    skipped = sorted(count(txn, metric, first, step - 1) for step in taken)
    left = points - len(skipped)
    ranks = []
    for i in range(wanted):
        rank = (2 * i + 1) * left // (2 * wanted)
        for held in skipped:
            if held <= rank:
                rank += 1
        ranks.append(rank)
    if points <= _FANOUT * wanted:
        # Reading them all costs little more than finding each in the buckets.
        samples = [bucket.low for bucket in records(txn, metric, 0, first, last)]
        return [samples[rank] for rank in ranks]
    return [_nth(txn, metric, first, last, rank, LEVELS) for rank in ranks]


def _nth(txn: ReadTxn, metric: bytes, first: int, last: int, rank: int, top: int) -> Sample:
    """The point at `rank` (from 0) among those of steps first..last, found through the bucket
    counts of levels <= `top`: at most 16 records a level on the way down, plus the range's ends."""
    for level, low, high in cover(first, last, top):
        if level == 0:
            for raw_key, raw in txn.packed_range(POINTS, point_key(metric, low), point_key(metric, high)):
                if rank == 0:
                    return Sample(trailing_int(raw_key), *_POINT.unpack(raw))
                rank -= 1
            continue
        for raw_key, raw in txn.packed_range(
            TABLE, _bucket_key(metric, level, low), _bucket_key(metric, level, high)
        ):
            held = _RECORD.unpack_from(raw)[0]
            if rank < held:
                index, shift = trailing_int(raw_key), _BITS * level
                return _nth(txn, metric, index << shift, ((index + 1) << shift) - 1, rank, level - 1)
            rank -= held
    raise AssertionError(f"steps {first}..{last} hold fewer points than their buckets count")


def _run_table(txn: ReadTxn, metric: bytes, level: int, first: int, last: int) -> np.ndarray:
    """The records of buckets first..last of a level as one array (points as buckets of one),
    decoded in bulk: a downsampled read goes through thousands of them."""
    if level > 0:
        first_key, last_key = _bucket_key(metric, level, first), _bucket_key(metric, level, last)
        raw = b"".join(value for _, value in txn.packed_range(TABLE, first_key, last_key))
        return np.frombuffer(raw, _RECORD_DTYPE)
    keys: list[bytes] = []
    values: list[bytes] = []
    for raw_key, value in txn.packed_range(POINTS, point_key(metric, first), point_key(metric, last)):
        keys.append(raw_key)
        values.append(value)
    table = np.zeros(len(keys), _RECORD_DTYPE)
    if keys:
        # Every key of one metric has the same length and ends with the step (see store.keys).
        packed = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), -1)[:, -8:]
        steps = (packed.copy().view(">u8").ravel() - np.uint64(2**63)).astype(np.int64)
        points = np.frombuffer(b"".join(values), _POINT_DTYPE)
        table["count"] = 1
        table["low_step"] = table["high_step"] = steps
        table["low_value"] = table["high_value"] = points["value"]
        table["low_time"] = table["high_time"] = points["time"]
    return table


def _same(values: np.ndarray, extremes: np.ndarray) -> np.ndarray:
    """Where `values` equal `extremes`, NaN equal to NaN."""
    return np.asarray((values == extremes) | (np.isnan(values) & np.isnan(extremes)))


def _first_where(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For each segment beginning at `starts`, the first index at or after it where flags hold
    (every segment has one)."""
    hits = np.flatnonzero(flags)
    return hits[np.searchsorted(hits, starts)]


@dataclass(frozen=True)
class Grouping:
    """The steps first..last cut into `groups` runs of whole buckets of `level`: of the n buckets
    the range touches, group j holds buckets [j * n // groups, (j + 1) * n // groups), so the
    groups span equal step ranges (to one bucket) and never split a bucket."""

    first: int
    last: int
    level: int
    groups: int

    @classmethod
    def plan(cls, first: int, last: int, groups: int) -> Grouping:
        """The coarsest level that still touches `groups` buckets (level 0, the points, does
        whenever the range has more steps than groups)."""
        for level in range(LEVELS, 0, -1):
            shift = _BITS * level
            if (last >> shift) - (first >> shift) + 1 >= groups:
                return cls(first, last, level, groups)
        return cls(first, last, 0, groups)

    @property
    def _buckets(self) -> int:
        shift = _BITS * self.level
        return (self.last >> shift) - (self.first >> shift) + 1

    def steps(self, start: int, stop: int) -> tuple[int, int]:
        """The steps (inclusive) of groups start..stop-1."""
        shift, n = _BITS * self.level, self._buckets
        base = self.first >> shift
        low = max(self.first, (base + start * n // self.groups) << shift)
        high = min(self.last, ((base + stop * n // self.groups) << shift) - 1)
        return low, high

    def extremes(
        self, txn: ReadTxn, metric: bytes, start: int, stop: int
    ) -> list[tuple[int, int, Sample, Sample]]:
        """(group, its points, lowest point, highest point) of each group start..stop-1 that holds
        points, in order; of equal values the earliest step."""
        shift, n = _BITS * self.level, self._buckets
        low, high = self.steps(start, stop)
        parts = [_run_table(txn, metric, *run) for run in cover(low, high, self.level)]
        table = np.concatenate(parts) if parts else np.zeros(0, _RECORD_DTYPE)
        if not len(table):
            return []
        # Records come in step order; each one's group is the last j with j * n // groups <= its
        # bucket's place in the range.
        bounds = np.array([j * n // self.groups for j in range(start, stop)], np.int64)
        place = (table["low_step"] >> shift) - (self.first >> shift)
        group = np.searchsorted(bounds, place, side="right") - 1 + start
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        sizes = np.diff(np.r_[starts, len(table)])
        counts = np.add.reduceat(table["count"], starts)
        # fmin and fmax skip NaN: a group's extreme is NaN only where all its points are.
        lows = np.repeat(np.fmin.reduceat(table["low_value"], starts), sizes)
        highs = np.repeat(np.fmax.reduceat(table["high_value"], starts), sizes)
        # Records are in step order, so the first record holding a group's extreme holds the
        # earliest step of that value.
        low_rows = table[_first_where(_same(table["low_value"], lows), starts)]
        high_rows = table[_first_where(_same(table["high_value"], highs), starts)]
        return [
            (g, n, Sample(*lo), Sample(*hi))
            for g, n, lo, hi in zip(
                group[starts].tolist(),
                counts.tolist(),
                low_rows[["low_step", "low_value", "low_time"]].tolist(),
                high_rows[["high_step", "high_value", "high_time"]].tolist(),
                strict=True,
            )
        ]

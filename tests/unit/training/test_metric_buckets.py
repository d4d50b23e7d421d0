"""Metric buckets: the range cover and grouping (pure), and on a real store that buckets, counts,
extremes and summaries stay exactly what the stored points say through rewrites and truncation."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tesserad.errors import InvalidArgument
from tesserad.store import Store, encode_metric_point, encode_record, pack
from tesserad.training import metric_buckets, run_order
from tesserad.training.metric_buckets import LEVELS, MAX_STEP, Grouping, cover, metric_prefix
from tesserad.training.tracking import (
    TABLES,
    MetricPoint,
    Tracking,
    _history_position,
    _metric_count,
    write_points,
)

steps = st.integers(0, MAX_STEP)


def _bucket_steps(level: int, first: int, last: int) -> tuple[int, int]:
    return first << (4 * level), ((last + 1) << (4 * level)) - 1


@given(steps, steps, st.integers(0, LEVELS))
def test_cover_holds_exactly_the_range_in_few_runs(a: int, b: int, top: int) -> None:
    first, last = min(a, b), max(a, b)
    runs = cover(first, last, top)
    at = first
    for level, low, high in runs:
        assert level <= top and low <= high
        start, end = _bucket_steps(level, low, high)
        assert start == at
        at = end + 1
        if level < top:
            assert high - low < 15 + 1  # at most 15 buckets of a level below the top at each end
    assert at == last + 1
    for level in range(top):
        assert sum(1 for run in runs if run[0] == level) <= 2


@given(steps, st.integers(0, 2**40), st.integers(1, 5000))
def test_grouping_cuts_the_range_into_contiguous_groups_of_whole_buckets(
    first: int, span: int, groups: int
) -> None:
    last = min(MAX_STEP, first + span)
    assume(last - first + 1 >= groups)  # a shorter range is never downsampled
    grouping = Grouping.plan(first, last, groups)
    shift = 4 * grouping.level
    assert (last >> shift) - (first >> shift) + 1 >= groups
    if grouping.level < LEVELS:
        coarser = shift + 4
        assert (last >> coarser) - (first >> coarser) + 1 < groups
    sample = sorted({0, groups - 1, groups // 2, min(groups - 1, 3)})
    bounds = [grouping.steps(j, j + 1) for j in sample]
    assert bounds[0][0] == first and grouping.steps(groups - 1, groups)[1] == last
    for low, high in bounds:
        assert low <= high
        assert low == first or low % (1 << shift) == 0  # whole buckets
    for j in sample[:-1]:
        assert grouping.steps(j, j + 1)[1] + 1 == grouping.steps(j + 1, j + 2)[0]


@pytest.mark.parametrize(
    "position",
    [
        (0, 5, 1),  # too short
        ("x", 0, 5, 1),  # not a number
        (-2, 0, 5, 0),  # no such level
        (LEVELS + 1, 0, 5, 1),  # no such level
        (-1, 5, 0, 5),  # first after last
        (-1, 0, 5, 6),  # every point: next step past the range
        (-1, 0, 5, 2, 0, 0, 0),  # every point: a downsampled position
        (0, 0, 5, 7, 0, 0, 0),  # downsampled: no such group
        (0, 0, 5, 1),  # downsampled: an every-point position
        (0, 0, 5, 1, 16, 0, 0),  # downsampled: more chosen than max_points (at most 2 * 7 + 1)
        (0, 0, 5, 1, 2, -1, 0),  # downsampled: negative count
        (0, 0, 5, 1, 2, 2, -1),  # downsampled: negative count
        (0, 0, 2**20, 1, 2, 2, 0),  # downsampled: not the level the first page planned (4 for 7 groups)
    ],
)
def test_history_token_positions_out_of_shape_are_refused(position: tuple) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        _history_position(pack(position), groups=7)
    assert _history_position(pack((4, 0, 2**20, 1, 2, 9, 1)), groups=7) == (4, 0, 2**20, (1, 2, 9, 1))
    assert _history_position(pack((-1, 0, 5, 3)), groups=7) == (-1, 0, 5, (3,))


# -- on a real store


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    path: Path = tmp_path_factory.mktemp("buckets") / "store"
    store = Store.open(path, map_size=256 * 2**20, tables=[*TABLES, "meta"], durability="relaxed")
    yield Tracking(store)
    store.close()


batch = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 600), st.integers(0, 3).map(lambda k: k * 70_000 + 5)),
        # Few values, so ties between extremes are common; NaN and infinities are kept as MLflow keeps them.
        st.one_of(st.integers(-5, 5).map(float), st.sampled_from([math.nan, math.inf, -math.inf])),
    ),
    min_size=1,
    max_size=40,
)
operation = st.one_of(batch, st.integers(-1, 700).map(lambda step: ("truncate", step)))


def _bucket_table(tracking: Tracking, run_id: str) -> dict[bytes, bytes]:
    metric = metric_prefix(run_id, "loss")
    with tracking._store.read() as txn:
        return dict(txn.packed_range(metric_buckets.TABLE, metric, metric + b"\xff"))


def _lowest(points: list[tuple[int, float]]) -> tuple[int, float]:
    """The lowest point, of equal values the earliest; NaN only where every point is NaN."""
    return min(points, key=lambda p: (math.isnan(p[1]), 0.0 if math.isnan(p[1]) else p[1], p[0]))


def _highest(points: list[tuple[int, float]]) -> tuple[int, float]:
    return min(points, key=lambda p: (math.isnan(p[1]), 0.0 if math.isnan(p[1]) else -p[1], p[0]))


def _plain(value: Any) -> Any:
    """`value` with each NaN as "nan", so that equal results compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _order_row(field: str, value: float) -> tuple[str, bytes]:
    """The row the order index keeps for a summary field: a NaN one under its NaN field."""
    if math.isnan(value):
        return run_order.nan_field(field), run_order.NAN_ROW
    return field, run_order.order_value(value)


def _order_rows(tracking: Tracking, run_id: str) -> dict[str, bytes]:
    """{summary field: encoded value} of the run's rows in the order index."""
    with tracking._store.read() as txn:
        rows = [key for key, _ in txn.scan(run_order.TABLE) if key[4] == run_id]
    assert len({row[2] for row in rows}) == len(rows)  # one row a field
    return {str(row[2]): bytes(row[3]) for row in rows if isinstance(row[3], bytes)}


@given(st.lists(operation, min_size=1, max_size=12), st.integers(1, 40), st.data())
def test_buckets_stay_exact_through_rewrites_and_truncation(
    tracking: Tracking, operations, groups, data
) -> None:
    run_id = tracking.create_run("buckets").run_id
    stored: dict[int, float] = {}
    for n, op in enumerate(operations):
        with tracking._store.write() as txn:
            if op[0] == "truncate":
                tracking.truncate_metrics_after(txn, run_id, op[1])
                stored = {s: v for s, v in stored.items() if s <= op[1]}
            else:
                write_points(txn, "buckets", run_id, [MetricPoint("loss", v, s) for s, v in op], float(n))
                stored.update(dict(op))  # of one step, the last write wins

    run = tracking.get_run(run_id)
    # The run's count of metric keys follows its summaries, a truncation dropping the key too.
    with tracking._store.read() as txn:
        assert _metric_count(txn, run_id) == len(run.metrics)
    if not stored:
        assert run.metrics == [] and _bucket_table(tracking, run_id) == {}
        assert _order_rows(tracking, run_id) == {}
        return
    points = sorted(stored.items())
    (summary,) = run.metrics
    # The order index follows the summary through every rewrite and truncation.
    fields = ("last", "min", "max")
    assert _order_rows(tracking, run_id) == dict(_order_row(f, summary.field(f)) for f in fields)
    assert _plain((summary.count, summary.min, summary.max)) == _plain(
        (len(points), _lowest(points)[1], _highest(points)[1])
    )
    assert _plain((summary.last_step, summary.last)) == _plain(points[-1])

    # Buckets kept up batch by batch are the ones built from the points at once.
    kept = _bucket_table(tracking, run_id)
    with pytest.raises(RuntimeError), tracking._store.write() as txn:
        metric_buckets.rebuild(txn, metric_prefix(run_id, "loss"), chunk=7)
        metric = metric_prefix(run_id, "loss")
        assert dict(txn.packed_range(metric_buckets.TABLE, metric, metric + b"\xff")) == kept
        raise RuntimeError("roll back")

    first = data.draw(st.integers(0, points[-1][0]))
    last = data.draw(st.integers(first, points[-1][0] + 10))
    inside = [p for p in points if first <= p[0] <= last]
    metric = metric_prefix(run_id, "loss")
    with tracking._store.read() as txn:
        assert metric_buckets.count(txn, metric, first, last) == len(inside)
        if len(inside) < 2 or last - first + 1 < groups:
            return
        grouping = Grouping.plan(first, last, groups)
        got = {
            g: (held, (low.step, low.value), (high.step, high.value))
            for g, held, low, high in grouping.extremes(txn, metric, 0, groups)
        }
    expected = {}
    for j in range(groups):
        low, high = grouping.steps(j, j + 1)
        members = [p for p in inside if low <= p[0] <= high]
        if members:
            expected[j] = (len(members), _lowest(members), _highest(members))
    assert _plain(got) == _plain(expected)


def test_building_missing_buckets_logs_progress_and_runs_once(tmp_path: Path, caplog) -> None:
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=[*TABLES, "meta"])
    try:
        tracking = Tracking(store)
        run_id = tracking.create_run("old").run_id
        with store.write() as txn:  # points and summaries as stores before buckets hold them
            for i in range(70):
                for step in range(3):
                    txn.put("metrics", (run_id, f"m{i}", step), encode_metric_point(float(step), 1.0))
                summary = {
                    "key": f"m{i}",
                    "last": 2.0,
                    "min": 0.0,
                    "max": 2.0,
                    "best": 2.0,
                    "count": 3,
                    "last_step": 2,
                }
                txn.put("metric_summaries", (run_id, f"m{i}"), encode_record("metric_summary", 1, summary))
        caplog.set_level(logging.INFO, logger="tesserad.training.tracking")
        tracking.build_missing_buckets(progress_every_s=0)
        progress = [(r.getMessage(), getattr(r, "metrics_done", None)) for r in caplog.records]
        assert progress == [
            ("building metric history summaries (once, for a store from an older tesserad)", None),
            ("building metric history summaries", 64),
            ("building metric history summaries", 70),
            ("built metric history summaries", None),
        ]
        with store.read() as txn:
            assert metric_buckets.count(txn, metric_prefix(run_id, "m69"), 0, 2) == 3
        caplog.clear()
        tracking.build_missing_buckets(progress_every_s=0)
        assert caplog.records == []
    finally:
        store.close()


def test_nonfinite_points_are_found_across_chunks(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=[*TABLES, "meta"])
    try:
        metric = metric_prefix("run", "loss")
        values = [1.0, float("nan"), 2.0, float("inf"), float("-inf"), 3.0, float("nan")]
        with store.write() as txn:
            for step, value in enumerate(values):
                txn.put("metrics", ("run", "loss", step), encode_metric_point(value, 1.0))
            txn.put("metrics", ("run", "loss2", 0), encode_metric_point(float("nan"), 1.0))
        with store.read() as txn:
            for chunk in (1, 2, 3, 100):
                found = metric_buckets.nonfinite_points(txn, metric, chunk=chunk)
                assert found == [metric_buckets.point_key(metric, step) for step in (1, 3, 4, 6)]
    finally:
        store.close()

"""Tracking.copy_metrics_through on a real store: a full resume's run takes the source run's
points up to the checkpoint's step, chunk after chunk, whatever the chunk size against the keys'
point counts, and again to the same result when a copy cut off starts over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tesserad.store import Store, WriteTxn
from tesserad.training.tracking import TABLES, MetricPoint, Tracking


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[Tracking]:
    store = Store.open(
        tmp_path / "store", map_size=64 * 2**20, tables=[*TABLES, "meta"], durability="relaxed"
    )
    yield Tracking(store)
    store.close()


def _curve(tracking: Tracking, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(p.step, p.value) for p in tracking.metric_history(run_id, key, 0, 0, None, 0, "").points]


@pytest.mark.parametrize("chunk_points", [1, 4, 8, 10_000])
def test_the_copy_holds_every_point_up_to_the_step_of_every_key(
    tracking: Tracking, chunk_points: int
) -> None:
    source = tracking.create_run("copy").run_id
    points = [MetricPoint("loss", 1.0 / s, s) for s in range(1, 11)]
    points += [MetricPoint("acc", s / 10, s) for s in range(2, 10, 2)]  # 4 points, 8 and below
    points += [MetricPoint("late", 1.0, 20)]  # past the step: none copied
    tracking.log_metrics(source, points).result()
    run_id = tracking.create_run("copy").run_id
    finished: list[WriteTxn] = []

    tracking.copy_metrics_through(source, run_id, 8, finished.append, chunk_points)
    assert len(finished) == 1
    assert _curve(tracking, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 9)]
    assert _curve(tracking, run_id, "acc") == [(s, s / 10) for s in range(2, 10, 2)]
    assert _curve(tracking, run_id, "late") == []

    tracking.copy_metrics_through(source, run_id, 8, finished.append, chunk_points)
    assert _curve(tracking, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 9)]
    assert _curve(tracking, run_id, "acc") == [(s, s / 10) for s in range(2, 10, 2)]
    assert len(finished) == 2


def test_keys_not_named_to_be_copied_at_the_step_are_copied_up_to_the_step_before(tracking: Tracking) -> None:
    # A checkpoint part way through an epoch at step 4: the source's look at that epoch (its
    # epoch metric at step 4) stays behind, its step metrics there come along.
    source = tracking.create_run("copy").run_id
    points = [MetricPoint("loss", 1.0 / s, s) for s in range(1, 6)]
    points += [MetricPoint("train_loss", 0.5, 3), MetricPoint("train_loss", 0.4, 4)]
    tracking.log_metrics(source, points).result()
    run_id = tracking.create_run("copy").run_id
    tracking.copy_metrics_through(source, run_id, 4, lambda _txn: None, at_step_only=("loss",))
    assert [step for step, _ in _curve(tracking, run_id, "loss")] == [1, 2, 3, 4]
    assert _curve(tracking, run_id, "train_loss") == [(3, 0.5)]

"""Downsampled metric history: the group quotas (pure), and on a real store that an answer over
any set of steps, however sparse, holds exactly min(max_points, points) stored points in step
order, with the first, the last and the extreme values, and that its pages join into it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tesserad.store import Store
from tesserad.training.tracking import TABLES, MetricPoint, Tracking, interior_quota


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=30),
    st.data(),
)
def test_quotas_choose_exactly_the_budget_within_each_groups_points(counts: list[int], data) -> None:
    budget = data.draw(st.integers(0, sum(counts)))
    quotas = []
    left, remaining = budget, sum(counts)
    for g, held in enumerate(counts):
        quota = interior_quota(left, remaining, held, len(counts) - g)
        assert 0 <= quota <= held
        quotas.append(quota)
        left, remaining = left - quota, remaining - held
    assert sum(quotas) == budget
    # With two a group to give, every group keeps two points or all it has: its extremes.
    if budget >= 2 * len(counts):
        assert all(quota >= min(2, held) for quota, held in zip(quotas, counts, strict=True))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    path: Path = tmp_path_factory.mktemp("downsampling") / "store"
    store = Store.open(path, map_size=256 * 2**20, tables=[*TABLES, "meta"], durability="relaxed")
    yield Tracking(store)
    store.close()


# Dense stretches, lone far steps and everything between: the groups of equal step ranges are
# often empty, or hold all but a few points.
step_sets = st.sets(
    st.one_of(
        st.integers(0, 40),
        st.integers(0, 5_000),
        st.integers(0, 2**40),
        st.integers(2**62, 2**63 - 1),
    ),
    min_size=1,
    max_size=120,
)


def _answer(tracking: Tracking, run_id: str, max_points: int, size: int = 0) -> list[MetricPoint]:
    points: list[MetricPoint] = []
    token = ""
    while True:
        page = tracking.metric_history(run_id, "loss", max_points, 0, None, size, token)
        points += page.points
        token = page.next_token
        if not token:
            return points


@settings(max_examples=150, deadline=None)
@given(step_sets, st.integers(4, 40), st.integers(1, 7), st.data())
def test_a_downsampled_answer_holds_exactly_max_points_with_the_ends_and_extremes(
    tracking: Tracking, steps: set[int], max_points: int, page_size: int, data
) -> None:
    values = data.draw(st.lists(st.integers(-5, 5).map(float), min_size=len(steps), max_size=len(steps)))
    stored = dict(zip(sorted(steps), values, strict=True))
    run_id = tracking.create_run("downsampling").run_id
    tracking.log_metrics(run_id, [MetricPoint("loss", v, s) for s, v in stored.items()]).result()

    answer = _answer(tracking, run_id, max_points)
    got = [point.step for point in answer]
    assert len(got) == min(max_points, len(stored))
    assert got == sorted(set(got))  # in step order, no step twice
    assert got[0] == min(stored) and got[-1] == max(stored)
    assert all(stored[point.step] == point.value for point in answer)
    values_kept = {point.value for point in answer}
    assert {min(stored.values()), max(stored.values())} <= values_kept
    # Pages of any size join into the same answer.
    assert _answer(tracking, run_id, max_points, page_size) == answer


def test_sparse_steps_far_apart_fill_the_answer(tracking: Tracking) -> None:
    run_id = tracking.create_run("downsampling").run_id
    stored = {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, 1_000_000: 0.5}
    tracking.log_metrics(run_id, [MetricPoint("loss", v, s) for s, v in stored.items()]).result()
    # One group spans all the steps: its extremes are the first and last point, and the points
    # more come from those between them, at evenly spaced ranks.
    assert [p.step for p in _answer(tracking, run_id, 4)] == [0, 2, 4, 1_000_000]
    assert [p.step for p in _answer(tracking, run_id, 5)] == [0, 1, 3, 4, 1_000_000]


def test_a_dense_stretch_before_a_far_step_gives_the_points_the_empty_groups_leave(
    tracking: Tracking,
) -> None:
    run_id = tracking.create_run("downsampling").run_id
    points = [MetricPoint("loss", float(step % 7), step) for step in range(10_000)]
    tracking.log_metrics(run_id, [*points, MetricPoint("loss", 3.0, 10**9)]).result()
    # 4 groups of 250,000,000 steps: the first holds every point but the last one, so it gives
    # all 38 interior points, found through the bucket counts, spread over the stretch.
    got = [p.step for p in _answer(tracking, run_id, 40)]
    assert len(got) == 40 and got == sorted(set(got)) and got[0] == 0 and got[-1] == 10**9
    gaps = [b - a for a, b in itertools.pairwise(got[:-1])]
    assert max(gaps) <= 2 * 10_000 // 38

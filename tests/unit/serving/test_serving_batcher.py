from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import numpy as np
import pytest
from serving_fakes import GatedRuntime

from tesserad.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from tesserad.serving.batcher import (
    EXPLORE_ROWS,
    HOLD_COST_NS,
    PAYS_MARGIN,
    Answer,
    BatcherClosed,
    DynamicBatcher,
    MemberAnswer,
    Prediction,
    RowCosts,
    batching_pays,
    row_limit,
)
from tesserad.serving.stats import ServingStats


def make_batcher(
    runtime: GatedRuntime, stats: ServingStats | None = None, **overrides: object
) -> DynamicBatcher:
    options: dict = {
        "max_batch_size": 8,
        "max_queue_delay_us": 0,
        "max_queue_size": 16,
        "batchable": True,
        "inline_max_compute_us": 0.0,  # never inline: these tests drive the worker thread
        "initial_compute_us": 1000.0,
        "output_names": ["y"],
    }
    options.update(overrides)
    return DynamicBatcher("model 'm' version 1", [runtime], stats or ServingStats("m", 1, None), **options)


def rows(n: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


def occupy(batcher: DynamicBatcher, runtime: GatedRuntime) -> Future[Prediction]:
    """Submit one request and wait until the worker is running it (the model is busy)."""
    future = batcher.submit(rows(1), ["y"], 1)
    assert runtime.started.acquire(timeout=10)
    return future


def test_requests_queued_while_busy_run_as_one_batch_and_split_back() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    first = occupy(batcher, runtime)
    queued = [batcher.submit(rows(n, float(n)), ["y"], n) for n in (1, 2, 3)]
    runtime.gate.set()
    assert first.result(10).batch_rows == 1
    for n, future in zip((1, 2, 3), queued, strict=True):
        prediction = future.result(10)
        np.testing.assert_array_equal(prediction.outputs["y"], np.full((n, 2), 2.0 * n))
        assert prediction.batch_rows == 6
    assert runtime.batches == [1, 6]
    batcher.close(5)
    assert runtime.closed


def test_warm_ups_batch_only_with_warm_ups_and_count_in_no_figures() -> None:
    # An ensemble warms up through its members' batchers while they may serve requests.
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats)
    first = occupy(batcher, runtime)
    warm = batcher.submit(rows(2), ["y"], 2, warmup=True)
    request = batcher.submit(rows(1), ["y"], 1)
    failing_warm = batcher.submit(rows(1, -1.0), ["y"], 1, warmup=True)
    other = batcher.submit(rows(2), ["y"], 2)
    runtime.gate.set()
    for future in (first, warm, request, other):
        future.result(10)
    with pytest.raises(InvalidArgument, match="negative input"):
        failing_warm.result(10)
    # The warm-ups' batch of 3 fails and runs request by request; the requests batch apart.
    assert runtime.batches == [1, 3, 2, 1, 3]
    snapshot = stats.snapshot()
    assert (snapshot.request_count, snapshot.error_count, snapshot.row_count) == (3, 0, 4)
    assert {size: n for size, (n, _) in snapshot.batches.items()} == {1: 1, 3: 1}
    assert (snapshot.compute.count, snapshot.total.count) == (3, 3)
    batcher.close(5)


class EnsembleLikeRuntime(GatedRuntime):
    """Answers as an ensemble's runtime does: with its members' answers to the batch kept."""

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        outputs = super().run(inputs, output_names)
        member = Prediction({"y": inputs["x"] * 3}, 5, 7, len(inputs["x"]), 100, 101, 110)
        self.member_answers = (MemberAnswer("member", 4, member),)
        return outputs


def test_an_ensembles_member_answers_are_split_back_with_its_outputs() -> None:
    runtime = EnsembleLikeRuntime()
    batcher = make_batcher(runtime)
    first = occupy(batcher, runtime)
    queued = [batcher.submit(rows(n, float(n)), ["y"], n) for n in (1, 2)]
    runtime.gate.set()
    (alone,) = first.result(10).members
    assert (alone.model, alone.version, alone.prediction.batch_rows) == ("member", 4, 1)
    for n, future in zip((1, 2), queued, strict=True):
        (member,) = future.result(10).members
        np.testing.assert_array_equal(member.prediction.outputs["y"], np.full((n, 2), 3.0 * n))
        assert member.prediction.started_ns == 100 and member.prediction.batch_rows == 3
    assert runtime.batches == [1, 3]
    batcher.close(5)


class BatchSumRuntime(GatedRuntime):
    """A model whose output does not follow its input's rows: the sum over the whole batch."""

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        super().run(inputs, output_names)
        return {"y": inputs["x"].sum(axis=0, keepdims=True)}


def test_a_model_whose_outputs_do_not_follow_the_batch_answers_each_request_alone_and_stops_batching() -> (
    None
):
    # Its answer to a batch was split by rows as if it had one per input row: the first request
    # got the whole batch's sum, the others empty arrays.
    runtime = BatchSumRuntime()
    batcher = make_batcher(runtime)
    first = occupy(batcher, runtime)
    queued = [batcher.submit(rows(n, float(n)), ["y"], n) for n in (1, 2, 3)]
    runtime.gate.set()
    first.result(10)
    for n, future in zip((1, 2, 3), queued, strict=True):
        np.testing.assert_array_equal(future.result(10).outputs["y"], np.full((1, 2), float(n * n)))
    assert runtime.batches == [1, 6, 1, 2, 3]
    assert not batcher.batches
    batcher.close(5)


def test_batches_hold_at_most_max_batch_size_rows() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime, max_batch_size=4)
    occupy(batcher, runtime)
    futures = [batcher.submit(rows(n), ["y"], n) for n in (3, 2, 2, 6)]
    runtime.gate.set()
    for future in futures:
        future.result(10)
    # 3 and the first row of the 6 (larger than a batch, it is cut into what the batches have room
    # for) | 2+2 | 4 rows of the 6 | its last
    assert runtime.batches == [1, 4, 4, 4, 1]
    np.testing.assert_array_equal(futures[3].result().outputs["y"], rows(6)["x"] * 2)
    batcher.close(5)


def test_a_request_over_max_batch_size_runs_in_slices_answered_in_order_and_counted_once() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats, max_batch_size=4)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    answer = batcher.submit({"x": x}, ["y"], 10).result(10)
    np.testing.assert_array_equal(answer.outputs["y"], x * 2)
    assert runtime.batches == [4, 4, 2] and answer.batch_rows == 4
    snapshot = stats.snapshot(reset=True)
    assert (snapshot.request_count, snapshot.error_count, snapshot.row_count) == (1, 0, 10)
    assert {size: n for size, (n, _) in snapshot.batches.items()} == {4: 2, 2: 1}
    # A slice that fails fails the request, counted once.
    x[5] = -1
    with pytest.raises(InvalidArgument, match="negative input"):
        batcher.submit({"x": x}, ["y"], 10).result(10)
    snapshot = stats.snapshot()
    assert (snapshot.request_count, snapshot.error_count) == (1, 1)
    batcher.close(5)


def test_a_request_over_max_batch_size_queues_as_one_request_cut_into_slices_as_batches_take_them() -> None:
    # Queued as 1000 entries, every batch once copied the queue's rest: quadratic in its rows.
    runtime = GatedRuntime()
    batcher = make_batcher(runtime, max_batch_size=1, max_queue_size=16)
    first = occupy(batcher, runtime)
    x = np.arange(2000, dtype=np.float32).reshape(1000, 2)
    big = batcher.submit({"x": x}, ["y"], 1000)
    assert batcher.queued == 1
    # It is one request of the queue's 16: 15 more fit, and a refusal counts requests.
    accepted = [batcher.submit(rows(1), ["y"], 1) for _ in range(15)]
    with pytest.raises(ResourceExhausted, match="has 16 requests queued, its max_queue_size"):
        batcher.submit(rows(1), ["y"], 1)
    runtime.gate.set()
    np.testing.assert_array_equal(big.result(30).outputs["y"], x * 2)
    for future in [first, *accepted]:
        assert future.result(10).outputs["y"].shape == (1, 2)
    assert runtime.batches == [1] * 1016
    batcher.close(5)


def test_a_slice_that_fails_fails_its_request_once_and_its_other_slices_do_not_run() -> None:
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats, max_batch_size=2)
    occupy(batcher, runtime)
    x = np.ones((6, 2), dtype=np.float32)
    x[1] = -1
    answer = batcher.submit({"x": x}, ["y"], 6)
    runtime.gate.set()
    with pytest.raises(InvalidArgument, match="negative input"):
        answer.result(10)
    batcher.close(5)
    assert runtime.batches == [1, 2]
    snapshot = stats.snapshot()
    assert (snapshot.request_count, snapshot.error_count, snapshot.row_count) == (2, 1, 1)


def test_a_request_whose_slices_run_on_two_instances_counts_once_when_its_last_slice_answers_before_one_fails() -> (
    None
):
    runtimes = [GatedRuntime(), GatedRuntime()]
    stats = ServingStats("m", 1, None)
    batcher = DynamicBatcher(
        "model 'm' version 1", runtimes, stats, max_batch_size=4, max_queue_delay_us=0, max_queue_size=16,
        batchable=True, inline_max_compute_us=0.0, initial_compute_us=1000.0, output_names=["y"],
    )  # fmt: skip
    x = np.ones((7, 2), dtype=np.float32)
    x[0] = -1
    # Held, then released: the first worker takes a slice of 4 rows, the other the last 3.
    answer = batcher.submit({"x": x}, ["y"], 7, hold=True)
    batcher.release()
    for runtime in runtimes:
        assert runtime.started.acquire(timeout=10)
    failing, last = sorted(runtimes, key=lambda runtime: -runtime.batches[0])
    assert (failing.batches, last.batches) == ([4], [3])
    last.gate.set()
    deadline = time.monotonic() + 10
    while stats.snapshot().row_count < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    failing.gate.set()
    with pytest.raises(InvalidArgument, match="negative input"):
        answer.result(10)
    batcher.close(5)
    snapshot = stats.snapshot()
    assert (snapshot.request_count, snapshot.error_count, snapshot.row_count) == (1, 1, 3)


def test_a_cancelled_request_over_max_batch_size_runs_no_more_slices_and_counts_once() -> None:
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats, max_batch_size=2)
    answer = batcher.submit(rows(6), ["y"], 6)
    assert runtime.started.acquire(timeout=10)  # its first slice runs
    assert answer.cancel()
    assert batcher.queued == 0
    runtime.gate.set()
    batcher.close(5)
    assert runtime.batches == [2]
    totals = stats.totals()
    assert (totals.success, totals.canceled, totals.failure) == (0, 1, 1)


def test_a_request_over_max_batch_size_whose_deadline_passes_while_part_of_it_queues_fails_once() -> None:
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats, max_batch_size=2)
    answer = batcher.submit(rows(6), ["y"], 6, deadline=time.monotonic() + 0.05)
    assert runtime.started.acquire(timeout=10)  # its first slice runs; the rest waits
    time.sleep(0.1)
    runtime.gate.set()
    with pytest.raises(DeadlineExceeded, match="deadline passed while it was queued"):
        answer.result(10)
    batcher.close(5)
    assert runtime.batches == [2]
    totals = stats.totals()
    assert (totals.success, totals.rejected, totals.failure) == (0, 1, 1)


def test_close_answers_a_request_over_max_batch_size_it_cannot_drain_unavailable_once() -> None:
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = make_batcher(runtime, stats, max_batch_size=2)
    occupy(batcher, runtime)
    queued = batcher.submit(rows(6), ["y"], 6)
    closer = threading.Thread(target=batcher.close, args=(0.1,))
    closer.start()
    time.sleep(0.3)
    runtime.gate.set()
    closer.join(10)
    with pytest.raises(Unavailable, match="unloaded before this request ran"):
        queued.result(0)
    totals = stats.totals()
    assert (totals.success, totals.rejected) == (1, 1)


def test_idle_instances_share_the_queue_instead_of_one_taking_it_all() -> None:
    runtimes = [GatedRuntime(), GatedRuntime()]
    batcher = DynamicBatcher(
        "model 'm' version 1",
        runtimes,
        ServingStats("m", 1, None),
        max_batch_size=8,
        max_queue_delay_us=0,
        max_queue_size=16,
        batchable=True,
        inline_max_compute_us=0.0,
        initial_compute_us=1000.0,
        output_names=["y"],
    )
    # Both worker threads must be waiting first: one that starts late would find the queue
    # filling and take what is there so far.
    time.sleep(0.2)
    # Held submissions queue without waking a worker; release() starts them together.
    futures = [batcher.submit(rows(1), ["y"], 1, hold=True) for _ in range(6)]
    batcher.release()
    for runtime in runtimes:
        assert runtime.started.acquire(timeout=10)
    # One instance taking all six would leave the other idle: each took its half.
    assert runtimes[0].batches == [3] and runtimes[1].batches == [3]
    for runtime in runtimes:
        runtime.gate.set()
    for future in futures:
        assert future.result(10).batch_rows == 3
    batcher.close(5)


def test_bad_request_in_a_batch_fails_alone() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    occupy(batcher, runtime)
    good, bad, other = (batcher.submit(rows(1, v), ["y"], 1) for v in (1.0, -1.0, 3.0))
    runtime.gate.set()
    assert good.result(10).outputs["y"][0, 0] == 2.0
    assert other.result(10).outputs["y"][0, 0] == 6.0
    with pytest.raises(InvalidArgument, match="could not run this request: negative input"):
        bad.result(10)
    batcher.close(5)


def test_full_queue_is_resource_exhausted_and_accepted_requests_are_answered() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime, max_queue_size=3)
    first = occupy(batcher, runtime)
    accepted = [batcher.submit(rows(1), ["y"], 1) for _ in range(3)]
    with pytest.raises(ResourceExhausted, match="3 requests queued, its max_queue_size"):
        batcher.submit(rows(1), ["y"], 1)
    runtime.gate.set()
    for future in [first, *accepted]:
        assert future.result(10).outputs["y"].shape == (1, 2)
    batcher.close(5)


def test_expired_request_is_deadline_exceeded_and_never_run() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    occupy(batcher, runtime)
    expired = batcher.submit(rows(5), ["y"], 5, deadline=time.monotonic() + 0.01)
    time.sleep(0.05)
    runtime.gate.set()
    with pytest.raises(DeadlineExceeded, match="deadline passed while it was queued"):
        expired.result(10)
    batcher.close(5)
    assert 5 not in runtime.batches


def test_cancelled_request_leaves_the_queue() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    occupy(batcher, runtime)
    cancelled = batcher.submit(rows(7), ["y"], 7)
    assert batcher.queued == 1
    assert cancelled.cancel()
    assert batcher.queued == 0
    runtime.gate.set()
    batcher.close(5)
    assert runtime.batches == [1]


def test_lone_request_runs_inline_when_idle_and_fast() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    batcher = make_batcher(runtime, inline_max_compute_us=1e9)
    future = batcher.submit(rows(2), ["y"], 2)
    assert future.done()  # answered before submit returned: no thread hop
    assert future.result().outputs["y"].shape == (2, 2)
    batcher.close(5)


def test_queue_delay_holds_a_batch_open_only_while_idle() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    batcher = make_batcher(runtime, max_queue_delay_us=300_000, inline_max_compute_us=1e9)
    futures = [batcher.submit(rows(1), ["y"], 1) for _ in range(3)]
    for future in futures:
        assert future.result(10).batch_rows == 3
    batcher.close(5)


def test_close_drains_queued_requests_then_refuses_new_ones() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    occupy(batcher, runtime)
    queued = batcher.submit(rows(2), ["y"], 2)
    runtime.gate.set()
    batcher.close(5)
    assert queued.result(0).batch_rows == 2
    with pytest.raises(BatcherClosed):
        batcher.submit(rows(1), ["y"], 1)


def test_close_answers_unavailable_for_what_it_cannot_drain_in_time() -> None:
    runtime = GatedRuntime()
    batcher = make_batcher(runtime)
    occupy(batcher, runtime)
    queued = batcher.submit(rows(2), ["y"], 2)
    closer = threading.Thread(target=batcher.close, args=(0.1,))
    closer.start()
    time.sleep(0.3)
    runtime.gate.set()
    closer.join(10)
    with pytest.raises(Unavailable, match="unloaded before this request ran"):
        queued.result(0)


def test_close_returns_once_the_queue_is_drained_whichever_worker_drained_it() -> None:
    """Both workers wait for a runtime (callers hold both, running inline) while one request
    queues; after close, the worker that runs it leaves the other waiting on an empty queue,
    which must still see it and exit (it once waited forever, and so did close)."""
    runtimes = [GatedRuntime(), GatedRuntime()]
    batcher = DynamicBatcher(
        "model 'm' version 1",
        runtimes,
        ServingStats("m", 1, None),
        max_batch_size=8,
        max_queue_delay_us=0,
        max_queue_size=16,
        batchable=True,
        inline_max_compute_us=1e9,
        initial_compute_us=1.0,
        output_names=["y"],
    )
    time.sleep(0.2)  # both worker threads waiting
    inline = []
    for runtime in reversed(runtimes):  # an inline caller takes the last idle runtime
        caller = threading.Thread(target=batcher.submit, args=(rows(1), ["y"], 1), daemon=True)
        caller.start()
        assert runtime.started.acquire(timeout=10)
        inline.append(caller)
    queued = batcher.submit(rows(1), ["y"], 1)
    closer = threading.Thread(target=batcher.close, args=(30,), daemon=True)
    closer.start()
    time.sleep(0.3)  # close has woken the workers; with no idle runtime they wait again
    runtimes[1].gate.set()  # its caller returns the runtime; a worker runs the queued request on it
    assert queued.result(10).batch_rows == 1
    runtimes[0].gate.set()
    for caller in inline:
        caller.join(10)
    closer.join(10)
    assert not closer.is_alive()


def test_close_waits_for_a_request_running_inline_before_freeing_its_runtime() -> None:
    """An inline request runs in its caller's thread, not a worker's: close once freed its runtime
    under it as soon as the workers had exited (a swap failed the request InvalidArgument)."""
    runtime = GatedRuntime()
    batcher = make_batcher(runtime, inline_max_compute_us=1e9)
    answers: list[Answer] = []
    caller = threading.Thread(target=lambda: answers.append(batcher.submit(rows(1), ["y"], 1)))
    caller.start()
    assert runtime.started.acquire(timeout=10)
    closer = threading.Thread(target=batcher.close, args=(5,))
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and not runtime.closed
    runtime.gate.set()
    caller.join(10)
    closer.join(10)
    assert answers[0].result(0).outputs["y"].tolist() == [[2.0, 2.0]]
    assert runtime.closed


def test_stats_count_requests_rows_batches_and_errors() -> None:
    runtime = GatedRuntime()
    stats = ServingStats("m", 1, None)
    batcher = DynamicBatcher(
        "m", [runtime], stats, max_batch_size=8, max_queue_delay_us=0, max_queue_size=8, batchable=True,
        inline_max_compute_us=0.0, initial_compute_us=1000.0, output_names=["y"],
    )  # fmt: skip
    occupy(batcher, runtime)
    futures = [batcher.submit(rows(2, v), ["y"], 2) for v in (1.0, -1.0)]
    runtime.gate.set()
    for future in futures:
        future.exception(10)
    batcher.close(5)
    snapshot = stats.snapshot(reset=True)
    assert (snapshot.request_count, snapshot.error_count, snapshot.row_count) == (3, 1, 3)
    assert snapshot.batches[1][0] == 1
    assert snapshot.total.count == 2
    assert snapshot.throughput_rps > 0
    assert stats.snapshot().request_count == 0


def test_batching_pays_only_when_a_batched_row_and_its_hold_beat_a_row_alone_by_the_margin() -> None:
    # A small model: a row alone is mostly per-run overhead that a batch shares.
    assert batching_pays(single_ns_per_row=12_000, batched_ns_per_row=2_000)
    # A big model on a CPU: a batch's rows cost what they cost alone.
    assert not batching_pays(single_ns_per_row=3_000_000, batched_ns_per_row=3_000_000)
    # Cheaper in the model, but not by enough to pay for holding the request.
    assert not batching_pays(single_ns_per_row=8_000, batched_ns_per_row=4_000)
    # Right at the bound it pays; a nanosecond over, it does not.
    bound = 100_000 * (1 - PAYS_MARGIN) - HOLD_COST_NS
    assert batching_pays(100_000, bound)
    assert not batching_pays(100_000, bound + 1)


class _RowCostRuntime(GatedRuntime):
    """Its CPU time is what `row_cost` says per row for the batch's rows (0: any other size)."""

    def __init__(self, row_cost: dict[int, float]) -> None:
        super().__init__()
        self._row_cost = row_cost

    def run(self, inputs, output_names):  # type: ignore[no-untyped-def]
        rows = len(inputs["x"])
        # Busy, not asleep: on a CPU the batcher counts the thread's CPU time, not the wall's.
        until = time.thread_time() + self._row_cost.get(rows, self._row_cost[0]) * rows
        while time.thread_time() < until:
            pass
        return super().run(inputs, output_names)


def test_a_batcher_whose_batches_cost_more_per_row_stops_gathering() -> None:
    # Each row of a batch takes 3 ms, a row alone 1 ms: batching does not pay.
    runtime = _RowCostRuntime({1: 0.001, 0: 0.003})
    batcher = make_batcher(runtime, max_queue_size=64)

    def burst() -> None:
        """One request running (held at the gate) and four queued behind it."""
        runtime.gate.clear()
        futures = [occupy(batcher, runtime)] + [batcher.submit(rows(1), ["y"], 1) for _ in range(4)]
        runtime.gate.set()
        for future in futures:
            future.result(10)

    try:
        assert batcher.pays  # until measured
        burst()
        assert runtime.batches == [1, 4] and not batcher.pays
        runtime.batches.clear()
        for _ in range(3):
            burst()
        # One batch in 64 may still gather; these 15 requests ran (almost) all alone.
        assert sum(1 for b in runtime.batches if b > 1) <= 1 and len(runtime.batches) >= 13
        assert not batcher.holds(1)
    finally:
        batcher.close(10)


def test_a_batcher_counts_cpu_time_so_a_batch_that_only_waits_longer_still_pays() -> None:
    # Each batched row waits 3 ms asleep (as a run does for cores another process holds), but its
    # CPU time is a fifth of a row alone's: on a CPU the batcher judges by CPU time, and gathers.
    class Sleepy(_RowCostRuntime):
        def run(self, inputs, output_names):  # type: ignore[no-untyped-def]
            if len(inputs["x"]) > 1:
                time.sleep(0.003 * len(inputs["x"]))
            return super().run(inputs, output_names)

    single, batched, pays = _costs_of_a_row_alone_and_a_batch_of_four(Sleepy({1: 0.002, 0: 0.0004}))
    assert batched < single / 2 and pays


def test_a_batcher_counts_its_runtimes_helper_threads_in_a_batchs_cost() -> None:
    # The caller's thread spends a fifth of a row alone's CPU per batched row, as when a batch is
    # spread over an intra-op pool; the pool's threads spend 3 ms a row besides (helper_cpu_ns).
    # Counted with them, a batched row costs more than a row alone: batching does not pay.
    class Helped(_RowCostRuntime):
        def run(self, inputs, output_names):  # type: ignore[no-untyped-def]
            if len(inputs["x"]) > 1:
                self.helper_ns += 3_000_000 * len(inputs["x"])
            return super().run(inputs, output_names)

    single, batched, pays = _costs_of_a_row_alone_and_a_batch_of_four(Helped({1: 0.002, 0: 0.0004}))
    assert batched > 3_000_000 > single and not pays


def _costs_of_a_row_alone_and_a_batch_of_four(runtime: _RowCostRuntime) -> tuple[float, float, bool]:
    """A row run alone (held at the gate) and four queued behind it: the batcher's cost per row
    of each, and whether batching then pays."""
    batcher = make_batcher(runtime)
    try:
        runtime.gate.clear()
        futures = [occupy(batcher, runtime)] + [batcher.submit(rows(1), ["y"], 1) for _ in range(4)]
        runtime.gate.set()
        for future in futures:
            future.result(10)
        assert runtime.batches == [1, 4]
        single, batched = batcher.costs.single_ns_per_row, batcher.costs.batched_ns_per_row
        assert single is not None and batched is not None
        return single, batched, batcher.pays
    finally:
        batcher.close(10)


def test_row_costs_decide_from_both_sizes_and_follow_a_change() -> None:
    costs = RowCosts()
    costs.observe(4, 4 * 3_000_000)
    assert costs.pays and costs.single_ns_per_row is None  # one size alone decides nothing
    assert not costs.decided
    assert costs.known(4) and costs.known(2) and not costs.known(1)
    costs.observe(1, 2_200_000)
    assert costs.decided and costs.known(1)
    # cnn4d on 2 cores, CPU time: 2.2 ms a row alone, 3 ms a row in a batch of 4.
    assert not costs.pays
    assert costs.single_ns_per_row == pytest.approx(2_200_000)
    assert costs.batched_ns_per_row == pytest.approx(3_000_000)
    # The batches become cheap (a smaller model version's shape of costs): it takes a few of
    # them to move the smoothed estimate past the margin, then batching pays again.
    for _ in range(30):
        costs.observe(8, 8 * 200_000)
    assert costs.pays
    # The tiny MLP's batch costs 18 us of CPU alone, 3 us a row in a batch of 8 (plus
    # HOLD_COST_NS): it pays. A row in a batch saving less than holding its request costs: not.
    for batched, pays in ((3_000, True), (12_000, False)):
        fresh = RowCosts()
        fresh.observe(1, 18_000)
        fresh.observe(8, 8 * batched)
        assert fresh.pays is pays


def test_row_limit_explores_the_other_choice_one_batch_in_64_once_decided() -> None:
    assert row_limit(pays=True, decided=True, batches_run=0, max_rows=32) == 32
    assert row_limit(pays=False, decided=True, batches_run=0, max_rows=32) == 1
    # The exploring batch: one row alone while batching pays, a few rows while it does not.
    assert row_limit(pays=True, decided=True, batches_run=63, max_rows=32) == 1
    assert row_limit(pays=False, decided=True, batches_run=127, max_rows=32) == EXPLORE_ROWS
    assert row_limit(pays=False, decided=True, batches_run=63, max_rows=2) == 2
    assert [row_limit(False, True, n, 8) for n in range(64, 127)] == [1] * 63
    assert [row_limit(True, True, n, 8) for n in range(64, 127)] == [8] * 63
    # Undecided (one size not yet measured): one batch in 8 runs a row alone.
    assert [row_limit(True, False, n, 8) for n in range(16)] == [8] * 7 + [1] + [8] * 7 + [1]

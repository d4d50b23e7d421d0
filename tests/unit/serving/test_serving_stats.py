from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tesserad.api.oip import statistics_of
from tesserad.serving.histogram import LogHistogram
from tesserad.serving.pool import EffectiveConfig, LoadedVersion
from tesserad.serving.stats import FailureReason, ServingMetrics, ServingStats


def _latency_lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "latency_seconds" in line and "_created" not in line]


def test_pending_times_reach_every_histogram_as_if_each_was_recorded_alone() -> None:
    """Requests' times wait in a pending list and are folded in many at a time; what a snapshot
    and a scrape report is what recording each into each histogram would have given."""
    rng = np.random.default_rng(3)
    registry = CollectorRegistry()
    stats = ServingStats("m", 1, ServingMetrics(registry))
    queue_hist, compute_hist, total_hist = LogHistogram(), LogHistogram(), LogHistogram()
    for _ in range(700):  # more than one fold's worth, and some left pending
        rows = int(rng.integers(1, 4))
        compute_ns = int(rng.integers(5_000, 5_000_000))
        answered = []
        for _ in range(rows):
            queue_ns = int(rng.integers(0, 3_000_000))
            answered.append((queue_ns, queue_ns + compute_ns, 1, False))
            queue_hist.record(queue_ns / 1000)
            compute_hist.record(compute_ns / 1000)
            total_hist.record((queue_ns + compute_ns) / 1000)
        stats.record_batch(compute_ns, answered)
    lines = _latency_lines(registry)
    count = next(
        line
        for line in lines
        if line.startswith("tessera_inference_latency_seconds_count") and 'stage="total"' in line
    )
    assert count.endswith(f" {float(queue_hist.count)}")
    snapshot = stats.snapshot(reset=True)
    assert snapshot.request_count == queue_hist.count
    for got, want in (
        (snapshot.queue, queue_hist),
        (snapshot.compute, compute_hist),
        (snapshot.total, total_hist),
    ):
        assert astuple(got) == pytest.approx(astuple(want.summary()))
    # Reset empties the histograms GetStats reports; the Prometheus series stay cumulative.
    assert stats.snapshot().total.count == 0
    assert _latency_lines(registry) == lines


def test_totals_are_the_snapshots_figures_and_go_on_across_resets() -> None:
    """Triton's counters are read from `totals`: what ModelStatistics reports, never going down."""
    stats = ServingStats("m", 1, None)
    stats.record_batch(40_000, [(1_000, 45_000, 2, False), (3_000, 47_000, 1, False)])
    stats.record_io(2_000, 500)
    stats.record_failure(9_000, False, FailureReason.OTHER)
    stats.record_failure(1_000, False, FailureReason.REJECTED)
    stats.record_failure(4_000, True, FailureReason.OTHER)
    snapshot = stats.snapshot()
    totals = stats.totals()
    assert (totals.success, totals.failure) == (snapshot.request_count - snapshot.error_count, 3)
    assert (snapshot.error_count, snapshot.fail_ns, snapshot.shadow_count) == (3, 14_000, 1)
    assert totals.failures() == {
        FailureReason.REJECTED: 1,
        FailureReason.CANCELED: 0,
        FailureReason.BACKEND: 0,
        FailureReason.OTHER: 2,
    }
    assert (totals.rows, totals.executions) == (snapshot.row_count, snapshot.execution_count) == (3, 1)
    assert (totals.success_ns, totals.queue_ns, totals.compute_ns) == (92_000, 4_000, 80_000)
    assert (totals.input_ns, totals.output_ns) == (snapshot.input_ns, snapshot.output_ns) == (2_000, 500)
    stats.snapshot(reset=True)
    assert stats.snapshot().request_count == 0
    assert stats.totals() == totals
    stats.record_batch(10_000, [(0, 10_000, 1, False)])
    stats.record_failure(2_000, False, FailureReason.BACKEND)
    after = stats.totals()
    assert (after.success, after.rows, after.executions, after.success_ns) == (3, 4, 2, 102_000)
    assert after.failures() == {**totals.failures(), FailureReason.BACKEND: 1}


def test_the_batches_shares_of_decoding_and_encoding_add_up_to_the_whole() -> None:
    """Each batch's share was its rows times the per-row average rounded down: 10 ns over 4 rows
    in one batch reported 8."""
    config = EffectiveConfig(
        runtime="onnx",
        device="cpu",
        instances=1,
        max_batch_size=8,
        max_queue_delay_us=0,
        max_queue_size=8,
        warmup_runs=0,
        intra_op_threads=1,
        response_cache=False,
    )
    entry = LoadedVersion("m", 1, "", config, ServingStats("m", 1, None))
    entry.stats.record_batch(1_000, [(0, 2_000, 4, False)])
    entry.stats.record_io(10, 7)
    (batch,) = statistics_of(entry).batch_stats
    assert (batch.batch_size, batch.compute_input.ns, batch.compute_output.ns) == (4, 10, 7)

"""Per-version serving statistics: latency histograms, counters, batch sizes, throughput.

`ServingStats` keeps what GetStats and the Open Inference Protocol's ModelStatistics report;
`ServingMetrics` mirrors the latencies as Prometheus histograms on the daemon's own registry.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from tesserad.serving.histogram import LogHistogram, Percentiles

THROUGHPUT_WINDOW_S = 60

# Serving latencies span ~20 us (a tiny model inline) to seconds (a big batch on a CPU).
LATENCY_BUCKETS_S = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
    0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """The serving metrics on the daemon's registry, labelled by model and version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = PromHistogram(
            "tessera_inference_latency_seconds",
            "Per request: time queued, in the model, and in total, per served model version.",
            ["model", "version", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_rows = PromHistogram(
            "tessera_inference_batch_rows",
            "Rows per batch run by the model.",
            ["model", "version"],
            buckets=BATCH_ROW_BUCKETS,
            registry=registry,
        )
        self.requests = PromCounter(
            "tessera_inference_requests",
            "Answered inference requests per model version and outcome (ok, error).",
            ["model", "version", "outcome"],
            registry=registry,
        )

    def forget(self, model: str, version: int) -> None:
        """Drop an unloaded version's series so /metrics lists only what is served."""
        for metric, label_sets in (
            (self.latency, [(model, str(version), s) for s in ("queue", "compute", "total")]),
            (self.batch_rows, [(model, str(version))]),
            (self.requests, [(model, str(version), o) for o in ("ok", "error")]),
        ):
            for labels in label_sets:
                with contextlib.suppress(KeyError):  # never observed
                    metric.remove(*labels)


@dataclass(frozen=True)
class StatsSnapshot:
    request_count: int
    error_count: int
    row_count: int
    shadow_count: int
    throughput_rps: float
    queue: Percentiles
    compute: Percentiles
    total: Percentiles
    # rows -> (batches, total compute ns)
    batches: dict[int, tuple[int, int]]
    since: float
    # Cumulative nanoseconds, as Triton's statistics report them.
    success_ns: int
    fail_ns: int
    queue_ns: int
    compute_ns: int
    execution_count: int
    last_inference_ms: int


@dataclass
class _Window:
    """Requests per second over the last minute, in one-second slots."""

    slots: list[int] = field(default_factory=lambda: [0] * THROUGHPUT_WINDOW_S)
    seconds: list[int] = field(default_factory=lambda: [-1] * THROUGHPUT_WINDOW_S)

    def add(self, now_s: int) -> None:
        slot = now_s % THROUGHPUT_WINDOW_S
        if self.seconds[slot] != now_s:
            self.seconds[slot] = now_s
            self.slots[slot] = 0
        self.slots[slot] += 1

    def rate(self, now_s: int, since_s: float) -> float:
        total = sum(
            count
            for count, second in zip(self.slots, self.seconds, strict=True)
            if now_s - THROUGHPUT_WINDOW_S < second <= now_s
        )
        # A version loaded 10 s ago has 10 s of history, not 60.
        span = min(THROUGHPUT_WINDOW_S, max(1.0, time.monotonic() - since_s))
        return total / span


class ServingStats:
    """Thread-safe: recorded from batcher threads and the event loop, read by GetStats."""

    def __init__(self, model: str, version: int, metrics: ServingMetrics | None) -> None:
        self._lock = threading.Lock()
        self._label = (model, str(version))
        self._metrics = metrics
        if metrics is not None:
            # Label lookups take a lock and build a tuple each time: done once, not per request.
            model, version = self._label
            self._observe_queue = metrics.latency.labels(model, version, "queue").observe
            self._observe_compute = metrics.latency.labels(model, version, "compute").observe
            self._observe_total = metrics.latency.labels(model, version, "total").observe
            self._count_ok = metrics.requests.labels(model, version, "ok").inc
            self._count_error = metrics.requests.labels(model, version, "error").inc
            self._observe_batch = metrics.batch_rows.labels(model, version).observe
        self._reset()

    def _reset(self) -> None:
        self._queue = LogHistogram()
        self._compute = LogHistogram()
        self._total = LogHistogram()
        self._requests = 0
        self._errors = 0
        self._rows = 0
        self._shadows = 0
        self._batches: Counter[int] = Counter()
        self._batch_compute_ns: Counter[int] = Counter()
        self._window = _Window()
        self._since_wall = time.time()
        self._since_mono = time.monotonic()
        self._success_ns = 0
        self._fail_ns = 0
        self._queue_ns = 0
        self._compute_ns = 0
        self._last_inference_ms = 0

    def record_success(self, queue_ns: int, compute_ns: int, total_ns: int, rows: int, shadow: bool) -> None:
        with self._lock:
            self._queue.record(queue_ns / 1000)
            self._compute.record(compute_ns / 1000)
            self._total.record(total_ns / 1000)
            self._requests += 1
            self._rows += rows
            self._shadows += shadow
            self._success_ns += total_ns
            self._queue_ns += queue_ns
            self._compute_ns += compute_ns
            self._window.add(int(time.monotonic()))
            # Wall clock: Triton reports the last inference as milliseconds since the epoch.
            self._last_inference_ms = int(time.time() * 1000)
        if self._metrics is not None:
            self._observe_queue(queue_ns / 1e9)
            self._observe_compute(compute_ns / 1e9)
            self._observe_total(total_ns / 1e9)
            self._count_ok()

    def record_failure(self, total_ns: int, shadow: bool) -> None:
        with self._lock:
            self._requests += 1
            self._errors += 1
            self._shadows += shadow
            self._fail_ns += total_ns
            self._window.add(int(time.monotonic()))
        if self._metrics is not None:
            self._count_error()

    def record_batch(self, rows: int, compute_ns: int) -> None:
        with self._lock:
            self._batches[rows] += 1
            self._batch_compute_ns[rows] += compute_ns
        if self._metrics is not None:
            self._observe_batch(rows)

    def snapshot(self, reset: bool = False) -> StatsSnapshot:
        with self._lock:
            snapshot = StatsSnapshot(
                request_count=self._requests,
                error_count=self._errors,
                row_count=self._rows,
                shadow_count=self._shadows,
                throughput_rps=self._window.rate(int(time.monotonic()), self._since_mono),
                queue=self._queue.summary(),
                compute=self._compute.summary(),
                total=self._total.summary(),
                batches={
                    rows: (n, self._batch_compute_ns[rows]) for rows, n in sorted(self._batches.items())
                },
                since=self._since_wall,
                success_ns=self._success_ns,
                fail_ns=self._fail_ns,
                queue_ns=self._queue_ns,
                compute_ns=self._compute_ns,
                execution_count=sum(self._batches.values()),
                last_inference_ms=self._last_inference_ms,
            )
            if reset:
                self._reset()
            return snapshot

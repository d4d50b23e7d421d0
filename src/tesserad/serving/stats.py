"""Per-version serving statistics: latency histograms, counters, batch sizes, throughput.

`ServingStats` keeps what GetStats and the Open Inference Protocol's ModelStatistics report,
and the cumulative Prometheus series of its version; `ServingMetrics` exports those series on
the daemon's registry when /metrics is scraped.

Recording is on every request's path (on the event loop for a fast model run inline), so a
batch takes one lock and does plain integer updates: prometheus_client's Histogram and Counter
take a lock per sample and per bucket (3 histograms and a counter per request cost ~4 us of the
~7 us this recording took; measured on the dev box). The requests' times only join a pending
list; the six histograms take them _FOLD_AT at a time, vectorised, or when read (recording each
time into each histogram as it came cost 18 us of the event loop's CPU per served tiny-model
request, caches cold; serve_bench's notes).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tesserad.serving.histogram import LogHistogram, Percentiles

THROUGHPUT_WINDOW_S = 60

# Serving latencies span ~20 us (a tiny model inline) to seconds (a big batch on a CPU).
LATENCY_BUCKETS_S = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
    0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("queue", "compute", "total")
# Pending requests' times are folded into the histograms once this many wait: each fold costs
# tens of microseconds, whatever its size, on the thread that records the request that fills it.
_FOLD_AT = 256


class FailureReason(enum.IntEnum):
    """Why a request for a loaded version failed: the `reason` label of Triton's
    nv_inference_request_failure, with Triton's names."""

    # Refused or dropped by the scheduler before it ran: its queue was full, its deadline or
    # `timeout` passed while it was queued, or its version was unloaded first.
    REJECTED = 0
    # The caller went away (or its gRPC deadline passed) while it was queued.
    CANCELED = 1
    # The model's run failed.
    BACKEND = 2
    # The request itself was refused: inputs that do not decode or do not match the signature,
    # parameters the protocol refuses, more rows than max_batch_size.
    OTHER = 3


class _PromHistogram:
    """A Prometheus histogram's state: a count per bucket (the last one +Inf) and the sum.
    Not thread-safe: the owning ServingStats holds its lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are inclusive (le): the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """`observe` for every value of a 1-d float array, vectorised."""
        counts = self.counts
        indices = np.searchsorted(self.bounds, values, side="left")
        for index, count in zip(*np.unique(indices, return_counts=True), strict=True):
            counts[int(index)] += int(count)
        self.sum += float(values.sum())

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            # prometheus_client leaves floatToGoString unannotated.
            buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return buckets


class _PromSeries:
    """One version's Prometheus series; cumulative for the life of the version (GetStats's reset
    does not touch them, as a Prometheus counter never goes down)."""

    __slots__ = ("batch_rows", "errors", "latency", "ok")

    def __init__(self) -> None:
        self.latency = tuple(_PromHistogram(LATENCY_BUCKETS_S) for _ in STAGES)
        self.batch_rows = _PromHistogram(tuple(float(b) for b in BATCH_ROW_BUCKETS))
        self.ok = 0
        self.errors = 0


class ServingMetrics(Collector):
    """The serving metrics on the daemon's registry, labelled by model and version.

    A collector: the series live in each version's ServingStats and are read at scrape time.
    No `_created` series, as for the RPC metrics (metrics._CallMetrics says why).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._served: dict[tuple[str, str], ServingStats] = {}
        registry.register(self)

    def track(self, stats: ServingStats) -> None:
        """Export `stats`'s series (replacing an earlier ServingStats of the same version)."""
        with self._lock:
            self._served[stats.label] = stats

    def forget(self, stats: ServingStats) -> None:
        """Drop the series of a version unloaded or never loaded, so /metrics lists only what is
        served; a later ServingStats of the same version (a new load) keeps its own."""
        with self._lock:
            if self._served.get(stats.label) is stats:
                del self._served[stats.label]

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            served = list(self._served.values())
        return iter(self._families(served))

    def _families(self, served: list[ServingStats] | None = None) -> list[Metric]:
        latency = HistogramMetricFamily(
            "tessera_inference_latency_seconds",
            "Per request: time queued, in the model, and in total, per served model version.",
            labels=["model", "version", "stage"],
        )
        batch_rows = HistogramMetricFamily(
            "tessera_inference_batch_rows",
            "Rows per batch run by the model.",
            labels=["model", "version"],
        )
        requests = CounterMetricFamily(
            "tessera_inference_requests",
            "Answered inference requests per model version and outcome (ok, error).",
            labels=["model", "version", "outcome"],
        )
        for stats in served or ():
            model, version = stats.label
            with stats.lock:
                stats.fold()
                series = stats.prometheus
                stages = [
                    (stage, h.cumulative(), h.sum) for stage, h in zip(STAGES, series.latency, strict=True)
                ]
                rows = (series.batch_rows.cumulative(), series.batch_rows.sum)
                ok, errors = series.ok, series.errors
            for stage, buckets, total in stages:
                latency.add_metric([model, version, stage], buckets, total)
            batch_rows.add_metric([model, version], *rows)
            requests.add_metric([model, version, "ok"], ok)
            requests.add_metric([model, version, "error"], errors)
        return [latency, batch_rows, requests]


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
    # Decoding and checking the requests' inputs, and encoding their answers (the API layer's
    # share, outside the model): cumulative nanoseconds.
    input_ns: int
    output_ns: int
    # Response-cache hits (counted in request_count, not in row_count, the batches or the
    # latency summaries: the model never ran them) and misses, with their cumulative time:
    # lookup and copy out for a hit, lookup and insert for a miss.
    cache_hit_count: int
    cache_hit_ns: int
    cache_miss_count: int
    cache_miss_ns: int
    # Copies of the queue, compute and total histograms, when the snapshot asked for them.
    histograms: tuple[LogHistogram, LogHistogram, LogHistogram] | None = None


@dataclass(frozen=True)
class Totals:
    """A version's counts and cumulative nanoseconds since it was loaded, as Triton's Prometheus
    counters report them: GetStats's reset starts its snapshot's figures again, not these."""

    success: int = 0
    # Failures, by FailureReason.
    rejected: int = 0
    canceled: int = 0
    backend: int = 0
    other: int = 0
    rows: int = 0
    executions: int = 0
    success_ns: int = 0
    queue_ns: int = 0
    input_ns: int = 0
    compute_ns: int = 0
    output_ns: int = 0
    cache_hits: int = 0
    cache_hit_ns: int = 0
    cache_misses: int = 0
    cache_miss_ns: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            *(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))
        )

    @property
    def failure(self) -> int:
        return self.rejected + self.canceled + self.backend + self.other

    def failures(self) -> dict[FailureReason, int]:
        return {
            FailureReason.REJECTED: self.rejected,
            FailureReason.CANCELED: self.canceled,
            FailureReason.BACKEND: self.backend,
            FailureReason.OTHER: self.other,
        }


@dataclass
class _Window:
    """Requests per second over the last minute, in one-second slots."""

    slots: list[int] = field(default_factory=lambda: [0] * THROUGHPUT_WINDOW_S)
    seconds: list[int] = field(default_factory=lambda: [-1] * THROUGHPUT_WINDOW_S)

    def add(self, now_s: int, count: int = 1) -> None:
        slot = now_s % THROUGHPUT_WINDOW_S
        if self.seconds[slot] != now_s:
            self.seconds[slot] = now_s
            self.slots[slot] = 0
        self.slots[slot] += count

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
    """Thread-safe: recorded from batcher threads and the event loop, read by GetStats and by
    ServingMetrics at scrape time."""

    def __init__(self, model: str, version: int, metrics: ServingMetrics | None) -> None:
        self.lock = threading.Lock()
        self.label = (model, str(version))
        self.prometheus = _PromSeries()
        # What resets have cleared: `totals` adds it back, so counters never go down.
        self._carried = Totals()
        self._reset()
        if metrics is not None:
            metrics.track(self)

    def _reset(self) -> None:
        self._queue = LogHistogram()
        self._compute = LogHistogram()
        self._total = LogHistogram()
        self._requests = 0
        self._errors = 0
        # Failures by FailureReason (they add up to _errors).
        self._failures = [0] * len(FailureReason)
        self._rows = 0
        self._shadows = 0
        self._batches: Counter[int] = Counter()
        self._batch_compute_ns: Counter[int] = Counter()
        self._window = _Window()
        # (queue ns, compute ns, total ns) of answered requests not yet in the histograms.
        self._pending: list[tuple[int, int, int]] = []
        self._since_wall = time.time()
        self._since_mono = time.monotonic()
        self._success_ns = 0
        self._fail_ns = 0
        self._queue_ns = 0
        self._compute_ns = 0
        self._last_inference_ms = 0
        self._input_ns = 0
        self._output_ns = 0
        self._cache_hits = 0
        self._cache_hit_ns = 0
        self._cache_misses = 0
        self._cache_miss_ns = 0

    def record_io(self, input_ns: int, output_ns: int) -> None:
        """A request's decoding and answer-encoding time. Called only on the event loop's thread,
        without the lock (its cost is on every request's path): a reset racing it may lose one
        request's figures."""
        self._input_ns += input_ns
        self._output_ns += output_ns

    def record_batch(
        self, compute_ns: int, answered: Sequence[tuple[int, int, int, bool]], slice_rows: int = 0
    ) -> None:
        """A batch the model ran and the requests it answered, each as (queue ns, total ns, rows,
        shadow), and `slice_rows` rows it ran of requests split in slices whose answers count
        with another batch's (see DynamicBatcher): one lock per batch, taken on the request's path."""
        now_s = int(time.monotonic())
        # Wall clock: Triton reports the last inference as milliseconds since the epoch.
        wall_ms = int(time.time() * 1000)
        batch_rows = slice_rows
        with self.lock:
            pending = self._pending
            for queue_ns, total_ns, rows, shadow in answered:
                pending.append((queue_ns, compute_ns, total_ns))
                self._shadows += shadow
                self._success_ns += total_ns
                self._queue_ns += queue_ns
                batch_rows += rows
            answers = len(answered)
            self._requests += answers
            self._rows += batch_rows
            self._compute_ns += compute_ns * answers
            self._window.add(now_s, answers)
            self._last_inference_ms = wall_ms
            self._batches[batch_rows] += 1
            self._batch_compute_ns[batch_rows] += compute_ns
            series = self.prometheus
            series.batch_rows.observe(batch_rows)
            series.ok += answers
            if len(pending) >= _FOLD_AT:
                self.fold()

    def fold(self) -> None:
        """Move the pending requests' times into the histograms (called holding the lock)."""
        if not self._pending:
            return
        times = np.array(self._pending, dtype=np.float64)
        self._pending = []
        queue_hist, compute_hist, total_hist = self.prometheus.latency
        for column, histogram, prometheus in (
            (0, self._queue, queue_hist),
            (1, self._compute, compute_hist),
            (2, self._total, total_hist),
        ):
            values = times[:, column]
            histogram.record_many(values / 1000)
            prometheus.observe_many(values / 1e9)

    def record_cache_hit(self, ns: int) -> None:
        """A request answered from the response cache in `ns`: a success, as in Triton's figures."""
        now_s = int(time.monotonic())
        with self.lock:
            self._requests += 1
            self._cache_hits += 1
            self._cache_hit_ns += ns
            self._success_ns += ns
            self._window.add(now_s)
            self.prometheus.ok += 1

    def record_cache_miss(self, ns: int) -> None:
        with self.lock:
            self._cache_misses += 1
            self._cache_miss_ns += ns

    def record_failure(self, total_ns: int, shadow: bool, reason: FailureReason) -> None:
        """A request that failed after `total_ns` (from its arrival, or its queueing when the batcher
        failed it), as Triton counts it: once, whatever its rows, in count and time."""
        now_s = int(time.monotonic())
        with self.lock:
            self._requests += 1
            self._errors += 1
            self._failures[reason] += 1
            self._shadows += shadow
            self._fail_ns += total_ns
            self._window.add(now_s)
            self.prometheus.errors += 1

    def snapshot(self, reset: bool = False, histograms: bool = False) -> StatsSnapshot:
        with self.lock:
            self.fold()
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
                input_ns=self._input_ns,
                output_ns=self._output_ns,
                cache_hit_count=self._cache_hits,
                cache_hit_ns=self._cache_hit_ns,
                cache_miss_count=self._cache_misses,
                cache_miss_ns=self._cache_miss_ns,
                histograms=(self._queue.copy(), self._compute.copy(), self._total.copy())
                if histograms
                else None,
            )
            if reset:
                self._carried = self._current()
                self._reset()
            return snapshot

    def totals(self) -> Totals:
        """The counts and times since the version was loaded, resets or not (read at scrape time)."""
        with self.lock:
            return self._current()

    def _current(self) -> Totals:
        """`_carried` plus the figures since the last reset (called holding the lock)."""
        return self._carried + Totals(
            success=self._requests - self._errors,
            rejected=self._failures[FailureReason.REJECTED],
            canceled=self._failures[FailureReason.CANCELED],
            backend=self._failures[FailureReason.BACKEND],
            other=self._failures[FailureReason.OTHER],
            rows=self._rows,
            executions=sum(self._batches.values()),
            success_ns=self._success_ns,
            queue_ns=self._queue_ns,
            input_ns=self._input_ns,
            compute_ns=self._compute_ns,
            output_ns=self._output_ns,
            cache_hits=self._cache_hits,
            cache_hit_ns=self._cache_hit_ns,
            cache_misses=self._cache_misses,
            cache_miss_ns=self._cache_miss_ns,
        )

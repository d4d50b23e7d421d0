"""Log-bucketed latency histogram with a bounded relative error (DDSketch's bucket layout).

A value v > 0 lands in bucket i = ceil(log_gamma(v)); the bucket is reported as the point
2 * gamma^i / (gamma + 1), which lies within `relative_error` of every value in the bucket.
Recording is one log and one list increment; histograms with the same error merge by adding
counts, so per-instance histograms can be combined and totals stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_RELATIVE_ERROR = 0.01
# Values (microseconds) below this count as this value: nothing we time is shorter than 10 ns.
MIN_VALUE = 0.01
# And nothing longer than ~11.5 days; larger values are clamped into the last bucket.
MAX_VALUE = 1e12


@dataclass(frozen=True)
class Percentiles:
    """A histogram's summary; every percentile is within the histogram's relative error."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    p999: float
    max: float


class LogHistogram:
    """Counts of positive values in geometric buckets. Not thread-safe: callers hold a lock."""

    def __init__(self, relative_error: float = DEFAULT_RELATIVE_ERROR) -> None:
        if not 0 < relative_error < 1:
            raise ValueError(f"relative_error must be in (0, 1), got {relative_error}")
        self.relative_error = relative_error
        self._gamma = (1 + relative_error) / (1 - relative_error)
        self._log_gamma = math.log(self._gamma)
        self._offset = math.ceil(math.log(MIN_VALUE) / self._log_gamma)
        self._counts = [0] * (math.ceil(math.log(MAX_VALUE) / self._log_gamma) - self._offset + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        # Kept to bound the percentiles as `max` does (inf while empty).
        self.min = math.inf

    def record(self, value: float) -> None:
        clamped = min(max(value, MIN_VALUE), MAX_VALUE)
        self._counts[math.ceil(math.log(clamped) / self._log_gamma) - self._offset] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value
        if value < self.min:
            self.min = value

    def record_many(self, values: np.ndarray) -> None:
        """Record every value of a 1-d float array at once: what `record` does for each, in a
        few vectorised steps (recording a pending batch of requests' times at once costs a small
        fraction of recording each as it comes)."""
        if not values.size:
            return
        clamped = np.clip(values, MIN_VALUE, MAX_VALUE)
        indices = np.ceil(np.log(clamped) / self._log_gamma).astype(np.int64) - self._offset
        counts = self._counts
        for index, count in zip(*np.unique(indices, return_counts=True), strict=True):
            counts[int(index)] += int(count)
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.max = max(self.max, float(values.max()))
        self.min = min(self.min, float(values.min()))

    def merge(self, other: LogHistogram) -> None:
        if other.relative_error != self.relative_error:
            raise ValueError("only histograms with the same relative error merge")
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def reset(self) -> None:
        self._counts = [0] * len(self._counts)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    def copy(self) -> LogHistogram:
        twin = LogHistogram(self.relative_error)
        twin.merge(self)
        return twin

    def quantiles(self, qs: list[float]) -> list[float]:
        """The values at quantiles `qs` (each in [0, 1]); 0.0 for each when empty."""
        if self.count == 0:
            return [0.0] * len(qs)
        # The value of rank r (0-based) for each q, found in one cumulative pass.
        ranks = sorted((q * (self.count - 1), i) for i, q in enumerate(qs))
        results = [0.0] * len(qs)
        seen = 0
        next_rank = 0
        for index, bucket_count in enumerate(self._counts):
            if bucket_count == 0:
                continue
            seen += bucket_count
            while next_rank < len(ranks) and ranks[next_rank][0] < seen:
                results[ranks[next_rank][1]] = self._bucket_value(index)
                next_rank += 1
            if next_rank == len(ranks):
                break
        # A bucket's reported point can lie above the largest value seen or below the smallest
        # (a single value's bucket point is either): never report outside them.
        return [min(max(value, self.min), self.max) for value in results]

    def summary(self) -> Percentiles:
        p50, p95, p99, p999 = self.quantiles([0.5, 0.95, 0.99, 0.999])
        mean = self.sum / self.count if self.count else 0.0
        return Percentiles(self.count, mean, p50, p95, p99, p999, self.max)

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, count) of every non-empty bucket, ascending."""
        return [
            (self._gamma ** (index + self._offset), count)
            for index, count in enumerate(self._counts)
            if count
        ]

    def bucket_counts(self) -> dict[int, int]:
        """Count of each non-empty bucket by its number i (it holds values up to gamma^i)."""
        return {index + self._offset: count for index, count in enumerate(self._counts) if count}

    @classmethod
    def from_buckets(
        cls, relative_error: float, counts: Mapping[int, int], total: float, maximum: float
    ) -> LogHistogram:
        """The histogram `bucket_counts` described (another process's, to merge). Its smallest
        value is not sent: the lowest bucket's lower bound stands for it, below every value there."""
        histogram = cls(relative_error)
        last = len(histogram._counts) - 1
        for bucket, count in counts.items():
            histogram._counts[min(max(bucket - histogram._offset, 0), last)] += count
            histogram.count += count
            if count:
                histogram.min = min(histogram.min, histogram._gamma ** (bucket - 1))
        histogram.sum = total
        histogram.max = maximum
        return histogram

    def _bucket_value(self, index: int) -> float:
        return 2 * self._gamma ** (index + self._offset) / (self._gamma + 1)

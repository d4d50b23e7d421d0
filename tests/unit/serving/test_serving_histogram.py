from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from tesserad.serving.histogram import LogHistogram


def test_percentiles_within_one_percent_of_exact() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=6, sigma=1.5, size=50_000)  # microseconds, ~400 us median, long tail
    histogram = LogHistogram()
    for value in values:
        histogram.record(float(value))
    for q, got in zip([0.5, 0.95, 0.99, 0.999], histogram.quantiles([0.5, 0.95, 0.99, 0.999]), strict=True):
        exact = float(np.quantile(values, q, method="lower"))
        upper = float(np.quantile(values, q, method="higher"))
        assert exact * 0.99 <= got <= upper * 1.01, (q, got, exact)
    summary = histogram.summary()
    assert summary.count == len(values)
    assert summary.max == pytest.approx(values.max())
    assert summary.mean == pytest.approx(values.mean())


def test_merge_equals_recording_everything_in_one() -> None:
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i in range(1, 1000):
        (a if i % 3 else b).record(i * 1.7)
        both.record(i * 1.7)
    a.merge(b)
    assert a.summary() == both.summary()
    assert a.buckets() == both.buckets()


def test_merge_refuses_a_different_error() -> None:
    with pytest.raises(ValueError, match="same relative error"):
        LogHistogram(0.01).merge(LogHistogram(0.02))


def test_reset_empties_and_empty_reports_zeros() -> None:
    histogram = LogHistogram()
    histogram.record(5.0)
    histogram.reset()
    assert histogram.summary().count == 0
    assert histogram.quantiles([0.5, 0.99]) == [0.0, 0.0]


def test_extremes_are_clamped_not_lost() -> None:
    histogram = LogHistogram()
    histogram.record(0.0)
    histogram.record(1e15)
    assert histogram.count == 2
    assert histogram.quantiles([0.0])[0] == pytest.approx(0.01, rel=0.02)


def test_single_value_is_reported_within_the_error() -> None:
    histogram = LogHistogram(0.01)
    histogram.record(1234.0)
    (p50,) = histogram.quantiles([0.5])
    assert abs(p50 - 1234.0) / 1234.0 <= 0.01


def test_relative_error_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"relative_error must be in \(0, 1\)"):
        LogHistogram(0)


def test_buckets_rebuild_the_histogram_another_process_sent() -> None:
    values = np.random.default_rng(1).lognormal(5, 1, 2000)
    sent = LogHistogram()
    for v in values:
        sent.record(float(v))
    rebuilt = LogHistogram.from_buckets(sent.relative_error, sent.bucket_counts(), sent.sum, sent.max)
    assert rebuilt.summary() == sent.summary()
    assert rebuilt.buckets() == sent.buckets()


def test_record_many_equals_recording_each() -> None:
    values = np.random.default_rng(2).lognormal(mean=5, sigma=2, size=5_000)
    values[:3] = (0.0, 1e-9, 1e15)  # clamped at both ends, as record clamps them
    one_by_one, at_once = LogHistogram(), LogHistogram()
    for value in values:
        one_by_one.record(float(value))
    at_once.record_many(values[:1000])
    at_once.record_many(values[1000:])
    at_once.record_many(np.array([]))
    assert at_once.bucket_counts() == one_by_one.bucket_counts()
    assert astuple(at_once.summary()) == pytest.approx(astuple(one_by_one.summary()))


@pytest.mark.parametrize("value", [334.5, 337.0, 1234.0])
def test_percentiles_stay_between_the_smallest_and_largest_value_seen(value: float) -> None:
    """A bucket's reported point may lie below its values: one sample of 337 us showed p99.9
    334 us with max 337 us."""
    one = LogHistogram()
    one.record(value)
    assert one.quantiles([0.0, 0.5, 0.999, 1.0]) == [value] * 4
    summary = one.summary()
    assert (summary.p50, summary.p999, summary.max) == (value, value, value)
    some = LogHistogram()
    some.record_many(np.array([value, value * 1.001]))
    low, high = some.quantiles([0.0, 1.0])
    assert value <= low <= high <= value * 1.001
    merged = LogHistogram()
    merged.merge(one)
    assert merged.quantiles([0.5]) == [value]

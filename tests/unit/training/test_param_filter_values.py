"""A param filter's comparison of a run's stored value with the filter's value."""

from __future__ import annotations

from tesserad.training.tracking import param_matches


def test_a_long_digit_run_before_a_non_digit_is_read_in_one_pass() -> None:
    # The number pattern once backtracked quadratically here (seconds at 6,000 digits): the
    # per-test timeout is the guard, no timing is asserted.
    digits = "1" * 100_000
    assert not param_matches("0.001", digits + "x")
    assert not param_matches(digits + "x", "0.001")
    assert not param_matches(digits + "e", digits + ".5e")

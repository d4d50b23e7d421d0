"""A param filter's comparison of a run's stored value with the filter's value, which CompareRuns
and the CLI's columns of differing params share."""

from __future__ import annotations

import pytest

from tessera.param_values import same_param_value
from tesserad.training.tracking import param_matches


def test_a_long_digit_run_before_a_non_digit_is_read_in_one_pass() -> None:
    # The number pattern once backtracked quadratically here (seconds at 6,000 digits): the
    # per-test timeout is the guard, no timing is asserted.
    digits = "1" * 100_000
    assert not param_matches("0.001", digits + "x")
    assert not param_matches(digits + "x", "0.001")
    assert not param_matches(digits + "e", digits + ".5e")


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [
        ("0.003", "3e-3"),
        ("0.003", "0.0030"),
        ("1", "1.0"),
        ("1.", "1"),
        (".5", "0.5"),
        ("-0", "0"),
        ("1e-07", "0.0000001"),
        ("1" * 6000, "1" * 6000 + ".0"),
        ("True", "true"),
        ("FALSE", "false"),
        ("v1", "v1"),
    ],
)
def test_values_that_are_one_number_or_bool_are_the_same_param(stored: str, wanted: str) -> None:
    assert param_matches(stored, wanted) and param_matches(wanted, stored)
    assert same_param_value(stored, wanted) and same_param_value(wanted, stored)


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [
        # float() read each pair as one number.
        ("9007199254740993", "9007199254740992"),
        ("1e-400", "0"),
        ("0.1", "0.10000000000000001"),
        ("1e400", "1e401"),
        # A leading zero makes text (a code, a zero-padded name), as no writer of numbers puts one.
        ("007", "7"),
        ("007", "7.0"),
        ("00.5", "0.5"),
        # Digits of other scripts, underscores, nan and inf are text too.
        ("\u0663", "3"),
        ("1_0", "10"),
        ("nan", "nan "),
        ("inf", "Infinity"),
        # An exponent past 1000 is compared as text, keeping numbers' reading cheap.
        ("1e1001", "10e1000"),
        ("v1", "V1"),
        ("yes", "true"),
    ],
)
def test_values_that_differ_as_text_and_are_no_one_number_are_different_params(
    stored: str, wanted: str
) -> None:
    assert not param_matches(stored, wanted) and not param_matches(wanted, stored)
    assert not same_param_value(stored, wanted) and not same_param_value(wanted, stored)

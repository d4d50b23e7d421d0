"""Whole numbers written as text: digits 0-9 within range, else InvalidArgument naming the field."""

from __future__ import annotations

import pytest

from tesserad.api.convert_common import timestamp
from tesserad.errors import InvalidArgument
from tesserad.host import _visible_indices
from tesserad.numbers import INT64_MAX, epoch_milliseconds, whole_number


@pytest.mark.parametrize(
    ("text", "number"), [("0", 0), ("7", 7), ("007", 7), (str(INT64_MAX), INT64_MAX), ("0" * 5000 + "3", 3)]
)
def test_digits_within_range_are_read(text, number):
    assert whole_number("n", text, 0, INT64_MAX) == number


@pytest.mark.parametrize(
    "text", ["", "\u00b2", "\u0663", "+3", "-1", " 3", "3 ", "1_0", "3\n", str(INT64_MAX + 1), "1" * 5000]
)
def test_anything_else_names_the_field_and_its_range(text):
    with pytest.raises(
        InvalidArgument, match=rf"^n must be a whole number in 0\.\.{INT64_MAX} written in digits 0-9"
    ):
        whole_number("n", text, 0, INT64_MAX)


def test_cuda_visible_devices_of_other_digits_stop_the_list(monkeypatch):
    # "²" passed str.isdigit() and then failed int(); "٣" was read as GPU 3.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,\u00b2,\u0663,0")
    assert _visible_indices(4) == [1]


@pytest.mark.parametrize("at", [1765397531.457, 1765397531.0, 0.001, 1_700_000_000.999])
def test_a_time_filter_reads_a_time_as_a_client_reads_the_answer(at: float) -> None:
    # int(at * 1000) gives ...457 for the first, whose answer carries ...456.999936 s: a filter on
    # the milliseconds a client read would miss the run.
    assert epoch_milliseconds(at) == timestamp(at).ToMilliseconds()

"""The progress line of `tessera admin backup` and `tesserad restore`: its text, how often it is
redrawn, and what it leaves on the stream. Times are given, never waited for."""

from __future__ import annotations

import io
import itertools

import pytest

from tessera.progress_line import (
    ProgressLine,
    Throttle,
    byte_size,
    done_text,
    duration,
    progress_text,
    progress_wanted,
)

GIB = 1 << 30


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 << 20, "1.5 GiB"), (3 << 40, "3.0 TiB")],
)
def test_a_size_is_in_the_largest_unit_that_keeps_it_at_one_or_more(num_bytes: int, text: str) -> None:
    assert byte_size(num_bytes) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m 00s"), (187, "3m 07s"), (7500, "2h 05m")]
)
def test_a_duration_has_at_most_two_units(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_progress_with_a_total_says_the_share_the_rate_and_the_time_left() -> None:
    assert progress_text("backup", GIB, 10 * GIB, 8) == (
        "backup: 1.0 GiB of 10.0 GiB (10%), 128.0 MiB/s, 1m 12s left"
    )


def test_progress_without_a_total_says_the_bytes_and_the_rate() -> None:
    # An archive from a tesserad that does not say its size.
    assert progress_text("backup", 3 << 20, 0, 2) == "backup: 3.0 MiB, 1.5 MiB/s"


def test_progress_at_the_start_says_no_rate() -> None:
    assert progress_text("restore", 0, GIB, 0.5) == "restore: 0 B of 1.0 GiB (0%)"
    assert progress_text("restore", 1024, GIB, 0) == "restore: 1.0 KiB of 1.0 GiB (0%)"


def test_progress_at_the_end_says_no_time_left() -> None:
    assert progress_text("restore", GIB, GIB, 4) == "restore: 1.0 GiB of 1.0 GiB (100%), 256.0 MiB/s"


def test_the_end_says_the_bytes_the_time_and_the_rate() -> None:
    assert done_text("backup", 10 * GIB, 123) == "backup: 10.0 GiB in 2m 03s, 83.3 MiB/s"
    assert done_text("backup", 0, 0) == "backup: 0 B in 0s"


def test_a_throttle_is_due_at_first_then_once_per_interval() -> None:
    throttle = Throttle(0.25)
    assert [throttle.due(t) for t in (10.0, 10.1, 10.24, 10.25, 10.3, 10.6)] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]


class _Clock:
    """The times a line asks for, in turn."""

    def __init__(self, *times: float) -> None:
        self._times = list(times)

    def __call__(self) -> float:
        return self._times.pop(0)


def test_a_line_is_redrawn_over_itself_at_most_four_times_a_second_and_ended() -> None:
    stream = io.StringIO()
    clock = _Clock(0.0, 0.1, 0.2, 0.4, 0.45, 1.0)
    with ProgressLine("backup", stream, clock) as line:
        line.note("the daemon is copying its store")
        line.update(1 << 20, 4 << 20)  # 0.1: the first, drawn
        line.update(2 << 20, 4 << 20)  # 0.2: too soon
        line.update(3 << 20, 4 << 20)  # 0.4: drawn
        line.update(4 << 20, 4 << 20)  # 0.45: too soon, but the last piece
        line.finish(4 << 20)  # 1.0
    drawn = stream.getvalue()
    assert drawn.startswith("\r") and drawn.endswith("\n") and drawn.count("\n") == 1
    lines = drawn[1:-1].split("\r")
    assert [text.rstrip(" ") for text in lines] == [
        "backup: the daemon is copying its store",
        "backup: 1.0 MiB of 4.0 MiB (25%), 10.0 MiB/s, 0s left",
        "backup: 3.0 MiB of 4.0 MiB (75%), 7.5 MiB/s, 0s left",
        "backup: 4.0 MiB of 4.0 MiB (100%), 8.9 MiB/s",
        "backup: 4.0 MiB in 1s, 4.0 MiB/s",
    ]
    # Each covers the one before it: a shorter one is padded with spaces over a longer's tail.
    assert all(len(after) >= len(before.rstrip(" ")) for before, after in itertools.pairwise(lines))


def test_a_line_cut_short_by_an_error_ends_so_that_the_error_starts_a_line() -> None:
    stream = io.StringIO()
    with pytest.raises(ConnectionError), ProgressLine("backup", stream, _Clock(0.0, 1.0)) as line:
        line.update(1 << 20, 4 << 20)
        raise ConnectionError
    assert stream.getvalue() == "\rbackup: 1.0 MiB of 4.0 MiB (25%), 1.0 MiB/s, 3s left\n"


def test_a_line_drawn_nowhere_writes_nothing_and_one_with_nothing_drawn_ends_no_line() -> None:
    with ProgressLine("backup", None, _Clock(0.0, 1.0, 2.0)) as line:
        line.update(1, 2)
        line.finish(2)
    stream = io.StringIO()
    with ProgressLine("backup", stream, _Clock(0.0)):
        pass
    assert stream.getvalue() == ""


class _Closed(io.StringIO):
    """stderr whose reader has gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_line_whose_reader_has_gone_lets_the_copy_go_on() -> None:
    with ProgressLine("backup", _Closed(), _Clock(0.0, 1.0, 2.0)) as line:
        line.update(1, 2)
        line.finish(2)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("asked", "as_json", "stream", "wanted"),
    [
        (None, False, _Terminal(), True),
        (None, False, io.StringIO(), False),  # a script's stderr, a log file
        (None, True, _Terminal(), False),
        (False, False, _Terminal(), False),
        (True, False, io.StringIO(), True),
        (True, True, io.StringIO(), True),
    ],
)
def test_progress_is_drawn_for_a_terminal_unless_asked_otherwise(
    asked: bool | None, as_json: bool, stream: io.StringIO, wanted: bool
) -> None:
    assert progress_wanted(asked, as_json, stream) is wanted

"""One line of progress for a long copy (`tessera admin backup`, `tesserad restore`) on stderr:
the bytes done, of how many when known, the rate and the time left, drawn over itself with a
carriage return at most a few times a second.

Standard library only: `tesserad restore` uses it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

# At most four redraws a second: what a person can read, and few enough writes for a slow
# terminal (over ssh) not to hold the copy back, however small its chunks.
REDRAW_INTERVAL_S = 0.25

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def byte_size(num_bytes: float) -> str:
    """`num_bytes` in the largest binary unit that keeps it at 1 or more: "1.5 GiB", "512 B"."""
    for unit in _UNITS[:-1]:
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} {_UNITS[-1]}"


def duration(seconds: float) -> str:
    """ "45s", "3m 07s", "2h 05m": whole seconds, and no more than two units."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def progress_text(label: str, done: int, total: int, elapsed_s: float) -> str:
    """`label: 1.2 GiB of 10.0 GiB (12%), 85.3 MiB/s, 1m 45s left`; without the total, the
    share and the time left when `total` is 0 (not known); without the rate and the time left
    before any time has passed or any byte has come. The rate is the average since the start."""
    parts = [byte_size(done)]
    if total > 0:
        parts[0] += f" of {byte_size(total)} ({min(done * 100 // total, 100)}%)"
    if elapsed_s > 0 and done > 0:
        rate = done / elapsed_s
        parts.append(f"{byte_size(rate)}/s")
        if total > done:
            parts.append(f"{duration((total - done) / rate)} left")
    return f"{label}: {', '.join(parts)}"


def done_text(label: str, done: int, elapsed_s: float) -> str:
    """`label: 10.0 GiB in 2m 03s, 83.2 MiB/s`: what the line says at the end."""
    rate = f", {byte_size(done / elapsed_s)}/s" if elapsed_s > 0 else ""
    return f"{label}: {byte_size(done)} in {duration(elapsed_s)}{rate}"


class Throttle:
    """Says when a redraw is due: the first time asked, then once `interval_s` has passed since
    the last one that was."""

    def __init__(self, interval_s: float = REDRAW_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._next: float | None = None

    def due(self, now: float) -> bool:
        if self._next is not None and now < self._next:
            return False
        self._next = now + self._interval_s
        return True


class ProgressLine:
    """The progress of one copy, drawn on `stream` over itself (None: drawn nowhere, for no one
    is watching); a context manager that ends the line on the way out, so that what is printed
    next (an error) starts on a line of its own.

    `update(done, total)` after each piece; `note(text)` for a stage with no bytes to count
    (the daemon copying its store); `finish(done)` to say how it went."""

    def __init__(
        self, label: str, stream: TextIO | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._label = label
        self._stream = stream
        self._clock = clock
        self._throttle = Throttle()
        self._start = clock()
        self._drawn = 0

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._end()

    def note(self, text: str) -> None:
        self._draw(f"{self._label}: {text}")

    def update(self, done: int, total: int) -> None:
        now = self._clock()
        # The last piece is always drawn: a line left short of 100% would look stuck.
        if self._throttle.due(now) or done == total:
            self._draw(progress_text(self._label, done, total, now - self._start))

    def finish(self, done: int) -> None:
        self._draw(done_text(self._label, done, self._clock() - self._start))
        self._end()

    def _draw(self, text: str) -> None:
        # Spaces over what a longer line before left on the screen.
        self._write("\r" + text + " " * max(self._drawn - len(text), 0))
        self._drawn = len(text)

    def _end(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = 0

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:
            # Its reader has gone (`2>&1 | head`): the copy goes on without it.
            self._stream = None


def progress_wanted(asked: bool | None, as_json: bool, stream: TextIO) -> bool:
    """Whether to draw progress on `stream`: as `--progress`/`--no-progress` ask, else only for
    a person watching (a terminal, as git decides) and not for a script (`--json`)."""
    if asked is not None:
        return asked
    return not as_json and stream.isatty()

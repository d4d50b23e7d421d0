"""Reading a pipe so that a signal's Python handler runs even when the signal misses the read.

Python runs a handler only between bytecodes of the main thread. A signal that lands while the
main thread is between two reads (in C, say inside a buffered read that reads again), or that
another thread takes, interrupts no read: the next one blocks with the handler pending, until
the pipe's writer sends more, which it may never do. `signal.set_wakeup_fd` makes every signal
write a byte to a pipe of ours, and each read here waits on that pipe as well as its own.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def signal_wakeup() -> Iterator[int]:
    """While held, every signal with a Python handler writes a byte to the pipe whose read end
    this gives. Main thread only, as `signal.set_wakeup_fd`."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        try:
            yield read_end
        finally:
            signal.set_wakeup_fd(previous)
    finally:
        os.close(read_end)
        os.close(write_end)


class WakeableReader(io.RawIOBase):
    """The file descriptor `fd` (a pipe, a FIFO, a terminal), read once it is readable or a
    byte comes on `wakeup` (from signal_wakeup), whichever is first; in between, the pending
    handlers run. Not closed with this reader: its owner closes it."""

    def __init__(self, fd: int, wakeup: int) -> None:
        super().__init__()
        self._fd = fd
        self._wakeup = wakeup
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(wakeup, select.POLLIN)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            # A hang-up or an error counts as readable: the read then says which (EOF, OSError).
            if any(fd == self._fd for fd, _ in self._poll.poll()):
                return os.readv(self._fd, [buffer])
            # Only a signal: the loop's next bytecode runs its handler, which may raise.
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wakeup, 512):
                    pass

"""What a write that found no room on the data directory's disk tells the client.

A full disk (ENOSPC), a used-up quota (EDQUOT) or a file over the daemon's file size limit
(EFBIG: `ulimit -f`, or the filesystem's largest file) is a limit reached, not a fault of the
daemon: RESOURCE_EXHAUSTED, naming what was being written, how much it needed when that is
known and how much is free, so that an operator knows what to free.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from tesserad.config import format_size
from tesserad.errors import NoSpace

_FREE_UP = (
    "free space there (delete model versions, dataset versions or finished jobs no longer "
    "needed, or grow the disk) and try again"
)


def _free_bytes(root: str) -> int | None:
    try:
        stat = os.statvfs(root)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def no_space(error_no: int | None, root: str, what: str, needed: int | None = None) -> NoSpace | None:
    """The ResourceExhausted for an OSError's errno met writing `what` under `root`, or None
    when that errno is not about room to write."""
    if error_no == errno.EFBIG:
        size = f" ({format_size(needed)})" if needed is not None else ""
        return NoSpace(
            f"{what}{size} is larger than the largest file tesserad may write in its data "
            "directory (the daemon's file size limit, ulimit -f, or the filesystem's)"
        )
    if error_no in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(root, what, needed, quota=error_no == errno.EDQUOT)
    return None


def disk_full(root: str, what: str, needed: int | None = None, *, quota: bool = False) -> NoSpace:
    """Writing `what` (`needed` bytes, when known) under `root` found the disk full, or its quota
    used up."""
    head = (
        "the disk quota of tesserad's data directory is used up"
        if quota
        else "the disk under tesserad's data directory is full"
    )
    need = f"{what} needs {format_size(needed)}" if needed is not None else f"writing {what} failed"
    free = _free_bytes(root)
    room = f", {format_size(free)} is free" if free is not None else ""
    return NoSpace(f"{head}: {need}{room}; {_FREE_UP}")


@contextlib.contextmanager
def space_checked(root: str, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn an OSError that says the disk has no room into `no_space`'s ResourceExhausted."""
    try:
        yield
    except OSError as exc:
        error = no_space(exc.errno, root, what, needed)
        if error is None:
            raise
        raise error from None

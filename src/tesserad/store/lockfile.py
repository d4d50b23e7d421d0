"""One daemon per data directory: a second one fails at once, naming the first."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tesserad.errors import FailedPrecondition

LOCK_NAME = "tesserad.lock"


class DataDirLock:
    """An exclusive `flock` on `<data_dir>/tesserad.lock`; the kernel drops it if we die."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FailedPrecondition(
                f"data directory {self.path.parent} is in use by another tesserad (pid {holder}); "
                "stop that daemon or pass another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

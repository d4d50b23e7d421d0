"""One daemon per data directory: a second one fails at once, naming the first.

The lock file holds the holder's pid on its first line, then the token that ties the store's
schema record to this data directory (see tesserad.store.schema): kept by each tesserad that
takes the directory, so that one from before schema versions, which writes its pid alone,
leaves a trace. Such a tesserad, refused, names the holder by the file's first 32 bytes,
stripped: the pid's line is padded with spaces to fill them, so that it shows the pid alone.

A holder that lets go of the directory in `release` writes STOPPED in place of its pid: a file
that still names a pid when the next holder takes it was left by one that never let go (killed,
crashed, or its machine went down), which `unclean_stop` reports. The flock itself cannot say:
the kernel drops it however its holder ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tesserad.errors import FailedPrecondition

LOCK_NAME = "tesserad.lock"
_TOKEN_PREFIX = "store "
# What a tesserad reads of the file to name the holder it is refused by; the pid's line fills it.
_HOLDER_BYTES = 32
# The first line of a file whose holder let go of it (its pid's place).
STOPPED = "stopped"


class DataDirLock:
    """An exclusive `flock` on `<data_dir>/tesserad.lock` (a shared one for a reader); the kernel
    drops it if we die."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None
        self._exclusive = False
        # The store token the file held when it was taken; None when it held none.
        self.store_token: str | None = None
        # The pid the file named when it was taken, when its holder never let go; else None.
        self.unclean_stop: str | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock(fd, fcntl.LOCK_EX)
        lines = os.pread(fd, 256, 0).decode(errors="replace").splitlines()
        tokens = [line.removeprefix(_TOKEN_PREFIX) for line in lines[1:2] if line.startswith(_TOKEN_PREFIX)]
        self.store_token = tokens[0] if tokens else None
        holder = lines[0].strip() if lines else ""
        self.unclean_stop = holder if holder.isdigit() else None
        self._fd = fd
        self._exclusive = True
        self._write(fd)

    def acquire_to_read(self) -> bool:
        """For a reader (`tesserad verify`), which changes nothing in the directory, on a mount or
        snapshot it may not write or another user's alike: a shared lock on the file as it is,
        opened read-only and written nothing, which a daemon's exclusive one excludes either way.
        False, and no lock held, where there is no file to take it on (none is made: it would be
        this user's, which a daemon run as the directory's owner might not open)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._lock(fd, fcntl.LOCK_SH)
        self._fd = fd
        return True

    def _lock(self, fd: int, kind: int) -> None:
        """flock `fd`, else close it and raise FailedPrecondition naming the holder."""
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            shared = kind == fcntl.LOCK_EX and _held_shared(fd)
            holder = (
                os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").partition("\n")[0].strip()
                or "unknown"
            )
            os.close(fd)
            if shared:
                # The pid in the file is the last daemon's: a reader writes none.
                raise FailedPrecondition(
                    f"data directory {self.path.parent} is held shared by another process (a "
                    "`tesserad verify` reading it?); wait for it to end or pass another --data-dir"
                ) from None
            raise FailedPrecondition(
                f"data directory {self.path.parent} is in use by another tesserad (pid {holder}); "
                "stop that daemon or pass another --data-dir"
            ) from None

    def keep_store_token(self, token: str) -> None:
        """Write `token` into the lock file, beside the pid."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        self.store_token = token
        self._write(self._fd)

    def _write(self, fd: int, holder: str | None = None) -> None:
        token = "" if self.store_token is None else f"{_TOKEN_PREFIX}{self.store_token}\n"
        os.ftruncate(fd, 0)
        first = (str(os.getpid()) if holder is None else holder).ljust(_HOLDER_BYTES - 1)
        os.pwrite(fd, f"{first}\n{token}".encode(), 0)

    def release(self) -> None:
        """Let go of the directory; an exclusive holder marks the file STOPPED first."""
        if self._fd is not None:
            if self._exclusive:
                self._exclusive = False
                # On a full disk the next start reports an unclean stop: the lesser harm.
                with contextlib.suppress(OSError):
                    # The holder line alone, in place: a kill between a truncation and the
                    # rewrite would leave the file without its store token.
                    os.pwrite(self._fd, f"{STOPPED.ljust(_HOLDER_BYTES - 1)}\n".encode(), 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _held_shared(fd: int) -> bool:
    """Whether the lock an exclusive flock on `fd` was refused is held shared (by readers alone):
    a shared one is granted then, and let go at once."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True

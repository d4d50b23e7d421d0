"""The daemon itself: version, devices, data directory, and a live stream of resource use."""

from __future__ import annotations

import hashlib
import os
import select
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

from tessera.backup import ArchiveCheck, ArchiveError, SavedBackup, read_archive
from tessera.calls import C, Followed, Op, Part, Reconnects, Resumable, Save, Sink, call, stream
from tessera.errors import DataLoss, Internal
from tessera.transfer import PartialFile, Progress
from tessera.transport import RetryPolicy, timeout_or
from tessera.v1 import system_pb2 as pb

S = "System"
# A backup holds every model, dataset and run the daemon keeps, and outlives the host it was
# taken on: only its owner reads it, whatever the umask.
BACKUP_FILE_MODE = 0o600


def _not_whole(exc: ArchiveError) -> DataLoss:
    return DataLoss(f"the backup that arrived is not whole: {exc}; take it again")


def _verify_report(last: pb.VerifyStoreProgress) -> pb.VerifyStoreReport:
    """The report in a VerifyStoreStream's last message: Internal where the stream ended without
    one, which an empty report would tell as a check that found no damage."""
    if not last.HasField("report"):
        raise Internal("the daemon ended VerifyStoreStream without its report; call it again")
    return last.report


class BackupSink:
    """Writes a streamed backup to `path` through a `PartialFile`, which becomes `path` only
    once the whole archive is read back and checks out (`finish`); `abort` removes it. Unless
    `overwrite`, a file at `path` is refused (FileExistsError) before the backup starts and
    again as it is put in place, readable by its owner alone."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = path
        self._file = PartialFile(path, overwrite, BACKUP_FILE_MODE)
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)

    def finish(self) -> SavedBackup:
        """The manifest of the backup now at `path`; DataLoss (nothing left) when what came is
        not a whole backup."""
        self._file.close()
        try:
            manifest = read_archive(self._file.temp)
        except ArchiveError as exc:
            self._file.discard()
            raise _not_whole(exc) from None
        except BaseException:
            self._file.discard()
            raise
        # A backup takes minutes: the name may have been taken meanwhile.
        self._file.keep()
        return SavedBackup.of(manifest, self._digest, self._size)

    def abort(self) -> None:
        self._file.discard()


class BackupStream:
    """Writes a streamed backup to an open binary file (stdout, a pipe) as it comes, checked on
    the way (each member's sha256 and size): a byte is written once it checks out, so a fault
    ends the call with DataLoss before the piece it was found in is written. What was written
    by then stays written, and is no backup. The file is flushed, never closed."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._check = ArchiveCheck()
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._check.feed(chunk)
        except ArchiveError as exc:
            raise _not_whole(exc) from None
        self._pass_on()

    def finish(self) -> SavedBackup:
        try:
            manifest = self._check.end()
        except ArchiveError as exc:
            raise _not_whole(exc) from None
        self._pass_on()
        self._file.flush()
        return SavedBackup.of(manifest, self._digest, self._size)

    def abort(self) -> None:
        self._check.stop()

    def _pass_on(self) -> None:
        for piece in self._check.checked():
            _write_all(self._file, piece)
            self._digest.update(piece)
            self._size += len(piece)


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of `data` written to `file`, an unbuffered one too (stdout under PYTHONUNBUFFERED),
    whose write may take part of it (a disk filling up) and say how much: the rest is written
    after it, so that a full disk raises rather than the archive being cut short unsaid."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if written is None:  # a non-blocking raw file (stdout a parent left so) that is full
            select.select([], [file], [])
            continue
        view = view[written:]


class BackupReceived:
    """The bytes of a backup's chunks as they come: `data` gives each chunk's, after telling
    `progress(done, total)` how many have come of the archive's size (0 from a tesserad that
    does not say), or `waiting(waits)` what a chunk without data says of the wait for another
    backup."""

    def __init__(self, progress: Progress | None, waiting: Callable[[bool], None] | None) -> None:
        self._progress = progress
        self._waiting = waiting
        self.done = 0

    def data(self, chunk: pb.BackupChunk) -> bytes:
        if not chunk.data:
            if self._waiting is not None:
                self._waiting(chunk.waiting)
            return b""
        self.done += len(chunk.data)
        if self._progress is not None:
            self._progress(self.done, chunk.archive_size)
        return chunk.data


class SampleCursor(Reconnects):
    """Where a watch of the system's samples has got to: how many a bounded watch still lacks."""

    def __init__(self, interval_ms: int, max_samples: int, retry: RetryPolicy, timeout: float | None) -> None:
        super().__init__("watching the system", "watch again", retry, timeout)
        self.interval_ms = interval_ms
        self.max_samples = max_samples
        self.received = 0

    def request(self) -> pb.WatchSystemRequest:
        # 0 asks for no bound: a bounded watch that has them all ends at `done`, never asks.
        left = self.max_samples - self.received if self.max_samples else 0
        return pb.WatchSystemRequest(interval_ms=self.interval_ms, max_samples=left)

    def accept(self, sample: pb.SystemSample) -> bool:
        self.received += 1
        self.went_on()
        return True

    def done(self, sample: pb.SystemSample) -> bool:
        return 0 < self.max_samples <= self.received


class System(Part[C]):
    """`client.system`: what the daemon is and what it is using."""

    @call
    def info(self, *, timeout: float | None = None) -> Op[pb.ServerInfo]:
        """Version, uptime, devices (CPU then GPUs), data directory usage, services served."""
        return Op(S, "GetServerInfo", pb.GetServerInfoRequest(), timeout=timeout)

    @stream
    def watch(
        self, interval_ms: int = 1000, max_samples: int = 0, timeout: float | None = None
    ) -> Resumable[pb.SystemSample]:
        """A CPU/memory/GPU sample every `interval_ms` (100..60000) until `max_samples` have
        come (0: until you stop iterating). `timeout` bounds the whole stream (None: none).

        A cut connection or a daemon restart is resumed (see `tessera.RetryPolicy`) with the
        next sample taken: samples are not kept, so none is replayed, and the ones the daemon
        would have taken while it was away are missing (see each one's `time`)."""
        cursor = SampleCursor(interval_ms, max_samples, self._conn.retry, timeout)
        return Resumable(S, "WatchSystem", cursor, until=cursor.done)

    @call
    def verify(
        self, *, timeout: float | None = None, progress: Progress | None = None
    ) -> Op[pb.VerifyStoreReport] | Followed[pb.VerifyStoreReport]:
        """Check the daemon's store for damage (admin only): every blob re-hashed against its
        sha256, and the blob of every model version, dataset version, run artifact and job
        checkpoint looked for. The report's `problems` (empty when the store is whole) each name
        the blob, "damaged" or "missing", and the records that own it: the first 1,000 at most,
        with `damaged_blobs` and `missing_blobs` counting them all. Takes as long as reading
        every blob once; `timeout` (None: the client's transfer timeout) bounds it. One check
        runs at a time: ResourceExhausted while another does.

        `progress(done, total)` is called about every second with the bytes of blobs checked and
        the blob directory's bytes as the check began (blobs stored meanwhile may take `done`
        past it); a daemon older than this progress calls it never."""
        timeout = timeout_or(timeout, self._conn.transfer_timeout)
        unary: Op[pb.VerifyStoreReport] = Op(S, "VerifyStore", pb.VerifyStoreRequest(), timeout=timeout)
        if progress is None:
            return unary

        def told(message: pb.VerifyStoreProgress) -> None:
            if not message.HasField("report"):
                progress(message.bytes_checked, message.bytes_total)

        return Followed(
            S,
            "VerifyStoreStream",
            pb.VerifyStoreRequest(),
            timeout,
            told,
            _verify_report,
            unary,
        )

    @call
    def backup(
        self,
        path: str | Path | BinaryIO,
        chunk_size: int = 0,
        timeout: float | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
        waiting: Callable[[bool], None] | None = None,
    ) -> Save[SavedBackup]:
        """Save a consistent backup of the daemon (admin only); its manifest, with the sha256
        and size of the archive written. `tesserad restore` restores it.

        `path`: a file name, where the archive appears only once the whole of it has come and
        checks out (a file already there is refused with FileExistsError before the backup
        starts, unless `overwrite`); or an open binary file (`sys.stdout.buffer`, a pipe), which
        gets the archive as it comes, checked on the way: a fault raises DataLoss, and what was
        written by then is no backup. `progress(done, total)` is called after each chunk with
        the bytes come and the archive's size (0 from a tesserad that does not say); the first
        comes once the daemon has copied its store, which takes a while for a large one.

        The daemon makes one backup at a time: while it makes another, this one waits for it,
        and `waiting(True)` is called first, then `waiting(False)` once its turn has come (and
        the daemon copies its store). RESOURCE_EXHAUSTED when too many wait already."""
        sink: Callable[[], Sink[SavedBackup]] = (
            partial(BackupSink, Path(path), overwrite)
            if isinstance(path, (str, os.PathLike))
            else partial(BackupStream, path)
        )
        return Save(
            S,
            "Backup",
            pb.BackupRequest(chunk_size=chunk_size),
            timeout_or(timeout, self._conn.transfer_timeout),
            sink,
            BackupReceived(progress, waiting).data,
        )

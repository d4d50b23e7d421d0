"""A backup of a running daemon: a point-in-time copy of the store and every blob it
references, streamed as the tar archive `tessera.backup` defines.

The store is copied (compacted, by LMDB) from one read transaction into a temp file in the
blob store's tmp directory, which start-up empties, so a daemon killed mid-backup leaves
nothing behind either. The blobs are those the copy's `blob_holders` names.

Blob deletion is kept safe by claims: `BlobStore.delete` leaves a claimed blob alone, and a
blob is deleted only from a write transaction that finds nothing holding it. The backup
claims the blobs its copy references under the store's write lock, in the same critical
section that begins the copy's read transaction, so no write commits between what the copy
sees and the claims: every blob the copy names stays on disk until the backup ends,
whatever is deleted meanwhile. At the end the claims are released and the blobs that
nothing holds any more are deleted then, as after a failed upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

from tessera.backup import BLOB_PREFIX, MANIFEST_NAME, STORE_NAME, Entry, Manifest
from tesserad.backup.last_success import record_backup
from tesserad.backup.verify import REMEDY, blob_owners, owned_by
from tesserad.datasets.references import BLOB_HOLDERS, drop_claimed_blobs
from tesserad.errors import Aborted, DataLoss, NotFound, ResourceExhausted, TesseraError, Unavailable
from tesserad.store import BlobStore, ReadTxn, Store
from tesserad.store.schema import STORE_SCHEMA
from tesserad.store.space import space_checked
from tesserad.tasks import wait_out

logger = logging.getLogger(__name__)

_BLOCK = tarfile.BLOCKSIZE


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    # pax: sizes past ustar's 8 GiB (a store copy, a large artifact) are written exactly.
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _archive_size(document: bytes, manifest: Manifest, mtime: float) -> int:
    """The bytes `Backup._archive` yields for `manifest`: each member's header, data and
    padding, the end-of-archive marker, and the padding to a whole record."""
    members = [
        (MANIFEST_NAME, len(document)),
        (STORE_NAME, manifest.store.size),
        *((BLOB_PREFIX + sha256, size) for sha256, size in manifest.blobs.items()),
    ]
    size = sum(len(_header(name, n, mtime)) + n + -n % _BLOCK for name, n in members) + 2 * _BLOCK
    return size + -size % tarfile.RECORDSIZE


# The slowest link a backup's client is taken to read at: a chunk is allowed the stall timeout or
# its size at this rate, whichever is longer, so that a 4 MiB chunk on a link that still moves
# (slower than 35 KB/s) is not ended at 120 s.
STALL_FLOOR_BYTES_PER_S = 8 * 1024


def stall_allowance_s(stall_timeout_s: float, chunk_bytes: int) -> float:
    """Seconds a client may take to take a chunk of `chunk_bytes` before its backup is ended."""
    return max(stall_timeout_s, chunk_bytes / STALL_FLOOR_BYTES_PER_S)


class _Chunks:
    """Bytes gathered into chunks of one size (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buffer = bytearray()
        self.added = 0

    def add(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        self.added += len(data)
        while len(self._buffer) >= self._size:
            yield bytes(self._buffer[: self._size])
            del self._buffer[: self._size]

    def rest(self) -> Iterator[bytes]:
        if self._buffer:
            yield bytes(self._buffer)
            self._buffer.clear()


class Backup:
    """One backup: `prepare()` (copy and pin), `next_chunk()` until None, then `close()`.

    Each step blocks (run it in a thread) and they exclude one another, so `close()` called
    while another step runs (the client went away, the daemon is stopping) waits for it: the
    read transaction is never ended under the copy, nor the temp file removed under a read.
    After `close()` the others do nothing, or raise the error it was given.
    """

    def __init__(self, store: Store, blobs: BlobStore, tesserad_version: str) -> None:
        self._store = store
        self._blobs = blobs
        self._version = tesserad_version
        self._lock = threading.Lock()
        self._closed = False
        self._ended_by: TesseraError | None = None
        self._copy: io.BufferedRandom | None = None
        self._copy_path: Path | None = None
        self._pinned: set[str] = set()
        self._chunks: Generator[bytes] | None = None
        # The archive's whole size in bytes, known once prepared.
        self.archive_size = 0

    def prepare(self, chunk_size: int) -> Manifest | None:
        """Copy the store, pin its blobs and write the manifest; None once closed."""
        with self._lock:
            if self._closed:
                return None
            fd, name = tempfile.mkstemp(dir=self._blobs.tmp_dir, prefix="backup-")
            self._copy = os.fdopen(fd, "w+b")
            self._copy_path = Path(name)
            with space_checked(self._blobs.root_dir, "the backup's copy of the store"):
                records, held = self._store.copy_snapshot(fd, self._pin)
            now = datetime.datetime.now(datetime.UTC)
            manifest = Manifest(
                tesserad_version=self._version,
                created_at=now.isoformat(timespec="seconds"),
                records=records,
                store=self._hash_copy(self._copy),
                blobs={sha256: self._blob_size(sha256) for sha256 in sorted(held)},
                # The daemon recorded it in the copy's "meta" as it opened the store.
                store_schema=STORE_SCHEMA,
            )
            document = manifest.to_json()
            self.archive_size = _archive_size(document, manifest, now.timestamp())
            self._chunks = self._archive(document, manifest, self._copy, chunk_size, now.timestamp())
            return manifest

    def _pin(self, snapshot: ReadTxn) -> tuple[dict[str, int], set[str]]:
        """Run under the store's write lock (see the module's doc)."""
        held = {str(key[0]) for key, _ in snapshot.scan(BLOB_HOLDERS)}
        self._blobs.claim(*held)
        self._pinned = held
        return snapshot.counts(), held

    def _blob_size(self, sha256: str) -> int:
        try:
            return self._blobs.size(sha256)
        except NotFound:
            raise self._lost(sha256, f"blob {sha256} is missing from the blob directory") from None

    def _lost(self, sha256: str, problem: str) -> DataLoss:
        """The error that ends a backup meeting a blob damaged or missing: which records own
        it, and what the operator may do."""
        with self._store.read() as txn:
            owners = blob_owners(txn, [sha256]).get(sha256, [])
        return DataLoss(
            f"{problem}{owned_by(owners)}; the data directory is damaged, so no whole backup of it "
            "can be made. Run `tessera admin verify` (or `tesserad verify` with the daemon stopped) "
            f"to find all the damage, then {REMEDY}"
        )

    @staticmethod
    def _hash_copy(copy: io.BufferedRandom) -> Entry:
        copy.seek(0)
        digest = hashlib.file_digest(copy, "sha256").hexdigest()
        return Entry(digest, os.fstat(copy.fileno()).st_size)

    def _archive(
        self, document: bytes, manifest: Manifest, copy: io.BufferedRandom, chunk_size: int, now: float
    ) -> Generator[bytes]:
        """The archive of `manifest` (its JSON: `document`), its members' time `now`; what
        `_archive_size` counts."""
        chunks = _Chunks(chunk_size)
        yield from chunks.add(_header(MANIFEST_NAME, len(document), now) + document + _padding(len(document)))
        yield from chunks.add(_header(STORE_NAME, manifest.store.size, now))
        copy.seek(0)
        while data := copy.read(chunk_size):
            yield from chunks.add(data)
        yield from chunks.add(_padding(manifest.store.size))
        for sha256, size in manifest.blobs.items():
            yield from chunks.add(_header(BLOB_PREFIX + sha256, size, now))
            # Read verified: a blob damaged on disk ends the backup with DataLoss.
            try:
                for data in self._blobs.read_chunks(sha256, chunk_size):
                    yield from chunks.add(data)
            except DataLoss as exc:
                raise self._lost(sha256, exc.message) from None
            yield from chunks.add(_padding(size))
        # The end-of-archive marker, then padding to a whole record, as tar writes it.
        yield from chunks.add(b"\0" * (2 * _BLOCK))
        yield from chunks.add(b"\0" * (-chunks.added % tarfile.RECORDSIZE))
        yield from chunks.rest()

    @property
    def closed(self) -> bool:
        return self._closed

    def next_chunk(self) -> bytes | None:
        """The archive's next bytes; None at its end or once closed, or the error the close was
        given (the archive is not whole)."""
        with self._lock:
            if self._ended_by is not None:
                raise self._ended_by
            if self._closed or self._chunks is None:
                return None
            return next(self._chunks, None)

    def close(self, error: TesseraError | None = None) -> None:
        """Remove the store copy, end the pins and delete the pinned blobs nothing holds now;
        `error`: what a later step raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ended_by = error
            if self._chunks is not None:
                # Closes the blob file a read in progress holds open.
                self._chunks.close()
            if self._copy is not None and self._copy_path is not None:
                self._copy.close()
                self._copy_path.unlink(missing_ok=True)
            # Under the lock: a second close() returns only once the pins are gone, and the
            # daemon closes the store only after that.
            drop_claimed_blobs(self._store, self._blobs, self._pinned)
            self._pinned = set()


# Backups that may wait for the one being made; more are refused, so that a flood of calls does
# not pile up.
MAX_WAITING_BACKUPS = 4


class _Line:
    """The backups made one at a time: `turn` held by the one being made, `waiting` counting
    those lined up that have not taken it yet."""

    def __init__(self) -> None:
        self.turn = asyncio.Lock()
        self.waiting = 0

    def busy(self) -> bool:
        # A waiter woken by the release is still counted until it runs: one lining up now is behind it.
        return self.turn.locked() or self.waiting > 0


def _log_close_failure(closing: asyncio.Future[None]) -> None:
    """Log why `closing` (a backup's close, ended) failed, if it did: its store copy or blob pins
    may be left behind."""
    failure = None if closing.cancelled() else closing.exception()
    if failure is not None:
        logger.error("closing a backup failed: %s", failure, exc_info=failure)


class BackupTurn:
    """A Backup call's place in line (`Backups.line_up`): `waits` says whether another backup is
    being made, which this one waits for; `start()` begins this one once its turn has come, and
    `end()` closes it and hands the turn on. Used on the daemon's event loop."""

    def __init__(self, line: _Line, begin: Callable[[], Backup], stall_timeout_s: float) -> None:
        self._line = line
        self._begin = begin
        self._stall_timeout_s = stall_timeout_s
        self._stall: asyncio.TimerHandle | None = None
        self.waits = line.busy()
        line.waiting += 1
        self._in_line = True
        self._holds_turn = False
        self._backup: Backup | None = None
        self._closing: asyncio.Future[None] | None = None

    async def start(self) -> Backup:
        """This backup, begun once no other is being made, the turn taken in the order the calls
        lined up. A cancel meanwhile (the client gone, its deadline past) leaves the line."""
        try:
            await self._line.turn.acquire()
        finally:
            self._leave_line()
        self._holds_turn = True
        self._backup = self._begin()
        return self._backup

    @contextlib.contextmanager
    def sending(self, chunk_bytes: int) -> Iterator[None]:
        """Around handing gRPC a chunk of this backup, `chunk_bytes` long: a client that has not
        taken it within its stall allowance would hold the turn as long as its connection lives
        (an hour by the SDK's deadline, forever without one), so its backup is ended then and the
        turn handed on. The stream ends when the client next reads."""
        allowance_s = stall_allowance_s(self._stall_timeout_s, chunk_bytes)
        self._stall = asyncio.get_running_loop().call_later(allowance_s, self._stalled, allowance_s)
        try:
            yield
        finally:
            self._stall.cancel()

    def _stalled(self, allowance_s: float) -> None:
        setting = "limits.backup_stall_timeout_s"
        # ABORTED, not DEADLINE_EXCEEDED: no deadline of the client's passed, and lengthening one
        # would not help.
        self._close(
            Aborted(
                f"the client took no chunk of the backup within {allowance_s:g} s of its being sent "
                f"({setting}, or the chunk's size at {STALL_FLOOR_BYTES_PER_S // 1024} KiB/s where "
                "longer), so the daemon ended it and let the next backup begin; read the stream as it "
                f"comes, or raise {setting} (env TESSERA_{setting.replace('.', '_').upper()})"
            )
        )

    async def end(self) -> None:
        """Close the backup, if begun, then hand the turn on. The close runs to its end in its
        thread, and the turn is handed on and this call returns only then, however often it is
        cancelled meanwhile: the next backup never copies the store beside this one's copy, and
        nothing of this one outlives its call."""
        ours = self._holds_turn
        self._close(None)
        if self._closing is None:
            return
        if not ours:
            # The stall allowance's close: its failure is logged (`_hand_on`), and the client's
            # answer stays the ABORTED that says what to do.
            with contextlib.suppress(Exception):
                await wait_out(self._closing)
            return
        try:
            await wait_out(self._closing)
        except asyncio.CancelledError:
            # Nobody answers with the close's failure now: log it.
            _log_close_failure(self._closing)
            raise

    def _close(self, error: TesseraError | None) -> None:
        """Leave the line; close the backup, if begun, with `error` for its later steps, and hand
        the turn on once it is closed (`_closing`, under way meanwhile)."""
        self._leave_line()
        if not self._holds_turn:
            return
        self._holds_turn = False
        if self._backup is None:
            self._line.turn.release()
            return
        self._closing = asyncio.ensure_future(asyncio.to_thread(self._backup.close, error))
        self._closing.add_done_callback(self._hand_on if error is None else self._hand_on_logged)

    def _hand_on(self, closing: asyncio.Future[None]) -> None:
        self._line.turn.release()
        # A cancelled caller leaves the close's outcome unread; read it so asyncio does not log it.
        if not closing.cancelled():
            closing.exception()

    def _hand_on_logged(self, closing: asyncio.Future[None]) -> None:
        """As `_hand_on`, for a close no caller answers with (the stall allowance's): its
        failure logged."""
        self._line.turn.release()
        _log_close_failure(closing)

    def _leave_line(self) -> None:
        if self._in_line:
            self._in_line = False
            self._line.waiting -= 1


class Backups:
    """Makes the backups of one daemon's store and blobs, one at a time, and ends those still
    open when it stops.

    One at a time as each holds a copy of the store in the blob directory's tmp and keeps every
    blob it names from deletion: backups side by side would multiply the disk they take. A call
    while another backup is made waits for it to close (`line_up`), up to MAX_WAITING_BACKUPS
    of them. The line is the event loop's; `close` runs on a thread."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        tesserad_version: str,
        stall_timeout_s: float,
        last_success: Path | None = None,
    ) -> None:
        """`last_success`: the file that keeps when a backup was last served whole, if any."""
        self._last_success = last_success
        self._store = store
        self._blobs = blobs
        self._version = tesserad_version
        self._stall_timeout_s = stall_timeout_s
        self._open: list[Backup] = []
        self._closed = False
        self._lock = threading.Lock()
        self._line = _Line()

    @contextlib.asynccontextmanager
    async def line_up(self) -> AsyncIterator[BackupTurn]:
        """A place in line for one backup; when the block ends, its backup is closed and the turn
        handed on. ResourceExhausted when MAX_WAITING_BACKUPS wait already."""
        if self._line.busy() and self._line.waiting >= MAX_WAITING_BACKUPS:
            raise ResourceExhausted(
                f"{MAX_WAITING_BACKUPS} backups already wait for the one being made, the most that "
                "may (the daemon makes one at a time); retry once they have ended"
            )
        turn = BackupTurn(self._line, self.start, self._stall_timeout_s)
        try:
            yield turn
        finally:
            await turn.end()

    def served_whole(self) -> None:
        """A backup's archive was sent to its last chunk: kept as the last successful backup. A
        failure to keep it fails no backup: the age alert fires instead."""
        if self._last_success is None:
            return
        try:
            record_backup(self._last_success)
        except OSError as exc:
            logger.warning(
                "cannot record the backup's time in %s: %s", self._last_success, exc.strerror or exc
            )

    def start(self) -> Backup:
        """A new backup, kept to be ended by `close`; Unavailable once that has run."""
        backup = Backup(self._store, self._blobs, self._version)
        with self._lock:
            if self._closed:
                raise Unavailable("tesserad is stopping, so the backup was not begun; take it again")
            self._open = [b for b in self._open if not b.closed]
            self._open.append(backup)
        return backup

    def close(self) -> None:
        """End every open backup before the store closes (its copy must not outlive the store):
        each waits for its step in flight, and its stream ends UNAVAILABLE."""
        with self._lock:
            self._closed = True
            backups, self._open = self._open, []
        for backup in backups:
            backup.close(Unavailable("tesserad is stopping, so the backup was cut short; take it again"))

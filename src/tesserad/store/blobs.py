"""Content-addressed blobs: artifacts, checkpoints and dataset files by their sha256.

A blob is streamed into a temp file while it is hashed, fsynced, checked against what the
sender declared, and renamed into `sha256/ab/cdef...` only then; a crash at any point
leaves either no blob or a whole one. Readers verify the hash as they stream, so a blob
damaged on disk is reported (`DataLoss`) rather than served.

Blobs whose bytes are at hand (`put_each`) are made durable a group at a time: on Linux 5.8
or later by one syncfs(2) of the blob directory's filesystem after all of them are written
and renamed (as PostgreSQL's recovery_init_sync_method=syncfs does), else by an fsync of
each file and of each shard directory. A disk flush costs the same for one small file as
for many, and fsyncs of separate files each paid one. Since 5.8 syncfs reports a writeback
error that happened after the descriptor it is given was opened; before, it could succeed
over one. Its cost grows with whatever else is waiting to be written on that filesystem.

A blob is renamed into place before it is durable (always, on the syncfs path), so a put
holds its digests from the look for the file until the blob is durable or removed again: a
put that fails to make a blob durable unlinks it (or, where even that fails, marks it for the
next put to write and sync again), and any other put of that digest waits meanwhile. A blob
found in place is therefore a durable one, and needs no sync.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar, cast

from tesserad.config import format_size
from tesserad.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from tesserad.store.space import no_space, space_checked

A = TypeVar("A")
R = TypeVar("R")

# Matched with fullmatch: `$` also matches before a final newline.
_SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 1 << 20
# Threads that fsync the files of one `put_many` in parallel: the disk takes many flushes at
# once, and a batch of small blobs would otherwise wait out each in turn.
SYNC_THREADS = 8


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobCensus:
    count: int
    bytes: int


def check_sha256(value: str, field: str = "sha256") -> str:
    """A lowercase hex sha256, or InvalidArgument naming the field."""
    if not _SHA256.fullmatch(value):
        raise InvalidArgument(f"{field} must be 64 lowercase hex digits, got {value[:80]!r}")
    return value


def _syncfs_call() -> Callable[[int], int] | None:
    """libc's syncfs where it reports writeback errors (Linux 5.8 and later); else None."""
    if sys.platform != "linux":
        return None
    try:
        major, minor = (int(part) for part in platform.release().split(".")[:2])
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (ValueError, OSError, AttributeError):
        return None
    if (major, minor) < (5, 8):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return cast(Callable[[int], int], syncfs)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotAsDeclared(InvalidArgument):
    """The bytes received are not the size or sha256 their sender declared. Nothing stored was
    lost: the sender declared the wrong file, or sent another (one that changed as it was read),
    and sending it again as declared mends it. Its status is therefore INVALID_ARGUMENT, not
    DATA_LOSS, which says stored data is damaged and pages the operator."""


def _check_declared(digest: str, size: int, expected_sha256: str | None, expected_size: int | None) -> None:
    """NotAsDeclared unless the received bytes are what the sender declared."""
    if expected_size is not None and expected_size != size:
        raise NotAsDeclared(
            f"received {size} bytes but the header declared {expected_size}; declare the size of "
            "the file sent, or send it again"
        )
    if expected_sha256 and expected_sha256 != digest:
        raise NotAsDeclared(
            f"checksum mismatch: received data has sha256 {digest}, the header declared "
            f"{expected_sha256}; declare the sha256 of the file sent, or send it again if it "
            "changed while it was read"
        )


def checked_digest(
    data: bytes,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    max_size: int | None = None,
    limit_name: str = "the upload limit",
) -> str:
    """The sha256 of bytes at hand once they pass a `writer()`'s checks (ResourceExhausted
    over `max_size`, NotAsDeclared when they are not what was declared), for `put_each`."""
    if max_size is not None and len(data) > max_size:
        raise _too_large(limit_name, max_size)
    digest = hashlib.sha256(data).hexdigest()
    _check_declared(digest, len(data), expected_sha256, expected_size)
    return digest


def _too_large(limit_name: str, max_size: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the upload is larger than {limit_name} ({format_size(max_size)}); "
        "send a smaller file or raise the limit"
    )


class BlobWriter:
    """Streams one blob in; `commit()` makes it visible, `abort()` (or an exception) drops it."""

    def __init__(
        self, store: BlobStore, max_size: int | None, limit_name: str, expected_size: int | None
    ) -> None:
        self._store = store
        self._max_size = max_size
        self._limit_name = limit_name
        self._expected_size = expected_size
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0
        self._handed_off = False

    def hand_off(self) -> None:
        """From now on the caller's `commit` (or `abort`) decides: leaving the `with` block no
        longer aborts, so a commit already running in another thread is not cut short."""
        self._handed_off = True

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError("blob writer is closed")
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            self.abort()
            raise _too_large(self._limit_name, self._max_size)
        self._hash.update(data)
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            self._raise_no_space(exc)
            raise

    def commit(self, expected_sha256: str | None = None, expected_size: int | None = None) -> BlobRef:
        """Check what the sender declared, then move the blob into place."""
        if self._file is None:
            raise RuntimeError("blob writer is closed")
        digest = self._hash.hexdigest()
        try:
            _check_declared(digest, self.size, expected_sha256, expected_size)
        except NotAsDeclared:
            self.abort()
            raise
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            # A disk that filled up shows here too (buffered bytes, delayed allocation); the
            # caller may have handed off, so nothing else would remove the temp file.
            self.abort()
            self._raise_no_space(exc)
            raise
        self._file = None
        self._store._move_into_place(self._tmp, digest)
        return BlobRef(digest, self.size)

    def _raise_no_space(self, exc: OSError) -> None:
        """Raise no_space's error when `exc` says the disk has no room (after the abort, so that
        the free space it reports counts the temp file's bytes as freed again)."""
        error = no_space(exc.errno, self._store.root_dir, "the blob", self._expected_size)
        if error is not None:
            raise error from None

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                # Its flush fails again on a full disk; the temp file goes all the same.
                with contextlib.suppress(OSError):
                    file.close()
            finally:
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever ends the block without a commit (error, cancellation) leaves nothing behind.
        if not self._handed_off:
            self.abort()


class BlobStore:
    """The blob directory: `<root>/sha256/ab/cdef...` plus `<root>/tmp` for uploads in flight.

    Claims: a blob is content-addressed, so a new upload may find its bytes already in place,
    held by a version that is being deleted at that moment. Every put therefore claims its
    digest before it looks for the file, and `delete` leaves a claimed blob alone; the claim
    lasts until the caller, having recorded a holder in the store (or given up), calls
    `release`. A claim never released only keeps a blob until the next start.
    """

    def __init__(self, root: Path, *, syncfs: bool = True, read_only: bool = False) -> None:
        """`syncfs`: make `put_each`'s blobs durable by syncfs(2) where it reports errors and
        the blob directory is one filesystem; else (or with False) by an fsync of each.
        `read_only`: to read alone (`tesserad verify`, a read-only mount too): no directory is
        made and no upload's debris removed, and a put fails."""
        # Absolute, as tempfile and the exporter name the files made in tmp_dir: with a relative
        # --data-dir (`make run` gives ./var) put_moved took them for files elsewhere.
        root = root.absolute()
        self.root = root
        self.tmp_dir = root / "tmp"
        self._root = str(root)
        if not read_only:
            # Every shard directory exists from the start, so that storing a blob never has to
            # create one (a small registration's blob write is mostly system calls).
            for shard in range(256):
                (root / "sha256" / f"{shard:02x}").mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_names = itertools.count()
        self._syncfs = _syncfs_call() if syncfs and not read_only and self._one_filesystem() else None
        self._sync_pool: ThreadPoolExecutor | None = None
        self._sync_pool_lock = threading.Lock()
        self._claims: Counter[str] = Counter()
        self._claims_lock = threading.Lock()
        self._placing: set[str] = set()  # digests a put holds until its blob is durable or gone
        # Digests whose file a failed sync left in place because it could not be removed either
        # (a filesystem gone read-only, say): the next put of one writes and syncs it again.
        self._unsynced: set[str] = set()
        self._placing_changed = threading.Condition()
        # Bumped whenever a blob appears or goes (no lock: any lost bump still leaves it changed),
        # so that `census` walks the directory again only then.
        self._changes = 0
        self._census_lock = threading.Lock()
        self._census: BlobCensus | None = None
        self._census_changes = 0
        self._census_due = 0.0
        if not read_only:
            # The data directory lock guarantees no other daemon is mid-upload: what is here is debris.
            for stale in self.tmp_dir.iterdir():
                stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    @property
    def root_dir(self) -> str:
        return self._root

    def writer(
        self,
        max_size: int | None = None,
        limit_name: str = "the upload limit",
        expected_size: int | None = None,
    ) -> BlobWriter:
        """A writer for one blob; `expected_size` (the size the sender declared, when it did) is
        what a disk-full error says the blob needed."""
        with space_checked(self._root, "the blob", expected_size):
            return BlobWriter(self, max_size, limit_name, expected_size)

    def put_many(self, blobs: Mapping[str, bytes]) -> None:
        """Blobs by their digest (from `checked_digest`), stored by `put_each`; raises the first
        failure. Every digest is claimed first, and stays claimed for the caller to `release`
        even when this raises."""
        for failure in self.put_each(list(blobs.items())):
            if failure is not None:
                raise failure

    def put_each(self, blobs: Sequence[tuple[str, bytes]]) -> list[Exception | None]:
        """Blobs by their digest (from `checked_digest`; a digest may repeat), each with the
        promises of `writer()` (written to a temp file, renamed into place only once complete,
        durable before this returns), made durable together (see the module's doc: one
        syncfs, or fsyncs running in parallel and each shard directory fsynced once). Each
        entry's outcome: None once its blob is durable in place, else the error that kept it
        from being so, and then no blob of its is left in place (nor any temp file); a blob
        that was in place already stays. Every entry claims its digest first, and the claim
        stays for the caller to `release` whatever the outcome."""
        self.claim(*(digest for digest, _ in blobs))
        distinct: dict[str, bytes] = {}
        for digest, data in blobs:
            distinct.setdefault(digest, data)
        with self._placing_all(distinct):
            if self._syncfs is not None:
                failed = self._place_all(distinct, self._syncfs)
            else:
                failed = self._place_each_synced(distinct)
        return [self._no_space_or(failed.get(digest), len(data)) for digest, data in blobs]

    def _no_space_or(self, failure: Exception | None, size: int) -> Exception | None:
        """`failure`, or no_space's error in its place when it says the disk has no room."""
        if isinstance(failure, OSError):
            return no_space(failure.errno, self._root, "the blob", size) or failure
        return failure

    @contextlib.contextmanager
    def _placing_all(self, digests: Iterable[str]) -> Iterator[None]:
        """Hold `digests` until the block ends, once no other put holds any of them (all at
        once, so two puts sharing digests never wait on each other)."""
        wanted = set(digests)
        with self._placing_changed:
            self._placing_changed.wait_for(lambda: self._placing.isdisjoint(wanted))
            self._placing |= wanted
        try:
            yield
        finally:
            with self._placing_changed:
                self._placing -= wanted
                self._placing_changed.notify_all()

    def _place_all(self, blobs: dict[str, bytes], syncfs: Callable[[int], int]) -> dict[str, Exception]:
        """Place every blob unsynced, then make those renamed into place durable by one
        syncfs; the failures. Found in place, a blob is durable already (module doc)."""
        # Opened before the writes: its syncfs reports any writeback error since.
        fd = os.open(self._root, os.O_RDONLY)
        try:
            failed: dict[str, Exception] = {}
            renamed: list[str] = []
            for digest, placed in zip(blobs, self._each(self._place_unsynced, blobs.items()), strict=True):
                if isinstance(placed, Exception):
                    failed[digest] = placed
                elif placed is not None:
                    renamed.append(digest)
            if renamed and syncfs(fd) != 0:
                errno = ctypes.get_errno()
                self._unplace(renamed)
                failed.update(dict.fromkeys(renamed, OSError(errno, f"syncfs: {os.strerror(errno)}")))
            elif renamed:
                self._synced(renamed)
            return failed
        finally:
            os.close(fd)

    def _place_each_synced(self, blobs: dict[str, bytes]) -> dict[str, Exception]:
        """Place every blob fsynced, then fsync each shard directory once; the failures."""
        failed: dict[str, Exception] = {}
        shards: dict[str, list[str]] = {}
        for digest, placed in zip(blobs, self._each(self._place, blobs.items()), strict=True):
            if isinstance(placed, Exception):
                failed[digest] = placed
            elif placed is not None:
                shards.setdefault(placed, []).append(digest)
        for digests, synced in zip(shards.values(), self._each(fsync_dir, shards), strict=True):
            if isinstance(synced, Exception):
                self._unplace(digests)
                failed.update(dict.fromkeys(digests, synced))
            else:
                self._synced(digests)
        return failed

    def _unplace(self, digests: Iterable[str]) -> None:
        """Remove blobs this put renamed into place but could not make durable: their pages
        may never reach the disk, and a later put would take them for durable ones. One that
        cannot be removed is marked unsynced instead (called holding the digests)."""
        for digest in digests:
            try:
                os.unlink(self._file(digest))
                self._changes += 1
            except FileNotFoundError:
                pass
            except OSError:
                with self._placing_changed:
                    self._unsynced.add(digest)

    def _synced(self, digests: Iterable[str]) -> None:
        """These blobs, renamed into place by this put, are durable now."""
        if self._unsynced:
            with self._placing_changed:
                self._unsynced.difference_update(digests)

    def _durable_in_place(self, digest: str) -> bool:
        """Whether the blob is in place and durable (called holding the digest): any blob in
        place is, but one a failed sync left behind (see _unplace)."""
        return digest not in self._unsynced and os.path.exists(self._file(digest))

    def _place(self, blob: tuple[str, bytes], fsync: bool = True) -> str | None:
        """Store a blob not in place yet: written to a temp file, fsynced (unless not `fsync`)
        and renamed into place; its shard directory, to fsync (None when the blob was there
        already). Every system call of a blob's in one task: each hands the GIL back, and a
        thread waits its turn for it again."""
        digest, data = blob
        if self._durable_in_place(digest):
            return None
        return self._rename_into_place(self._write_temp(data, fsync), digest)

    def _place_unsynced(self, blob: tuple[str, bytes]) -> str | None:
        return self._place(blob, fsync=False)

    def close(self) -> None:
        """End the sync threads once the work handed to them is done."""
        with self._sync_pool_lock:
            pool, self._sync_pool = self._sync_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _one_filesystem(self) -> bool:
        """Whether the temp and shard directories all lie on the root's filesystem."""
        device = os.stat(self._root).st_dev
        shards = (os.path.join(self._root, "sha256", f"{shard:02x}") for shard in range(256))
        return all(os.stat(path).st_dev == device for path in (str(self.tmp_dir), *shards))

    def _each(self, work: Callable[[A], R], items: Iterable[A]) -> list[R | Exception]:
        """`work` on every item, in parallel on the sync threads when there are several (a lone
        one runs here: the hop would cost more than it saves); each one's result or error."""
        pending = list(items)
        if len(pending) == 1:
            try:
                return [work(pending[0])]
            except Exception as exc:
                return [exc]
        with self._sync_pool_lock:
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="blob-sync")
            pool = self._sync_pool
        futures = [pool.submit(work, item) for item in pending]
        outcomes: list[R | Exception] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _move_into_place(self, tmp: Path, digest: str) -> None:
        """Rename a complete, fsynced temp file to the blob's path and make the rename durable;
        when the blob is already there (same content), drop the temp file instead. Claims the
        digest for the caller first; on a failure here the claim ends with it."""
        self.claim(digest)
        try:
            with self._placing_all((digest,)):
                if self._durable_in_place(digest):
                    tmp.unlink()
                    return
                shard = self._rename_into_place(tmp, digest)
                try:
                    fsync_dir(shard)
                except BaseException:
                    self._unplace((digest,))
                    raise
                self._synced((digest,))
        except BaseException:
            self.release(digest)
            raise

    def claim(self, *digests: str) -> None:
        """Keep each blob from `delete` until `release`: a put's claim, or a backup's pin on
        the blobs it is streaming."""
        with self._claims_lock:
            self._claims.update(digests)

    def release(self, *digests: str) -> None:
        """End a claim on each digest: from now on `delete` may remove the blob."""
        with self._claims_lock:
            self._claims.subtract(digests)
            for digest in digests:
                if self._claims[digest] <= 0:
                    self._claims.pop(digest, None)

    def claimed(self, sha256: str) -> bool:
        with self._claims_lock:
            return self._claims[sha256] > 0

    def _rename_into_place(self, tmp: Path, digest: str) -> str:
        """Rename the temp file to the blob's path; its shard directory, to fsync. The temp file
        is removed when the rename fails."""
        final = self._file(digest)
        try:
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                # A shard directory removed by hand since the start.
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._changes += 1
        return os.path.dirname(final)

    def _file(self, digest: str) -> str:
        # Plain strings: pathlib's joins cost a small upload more than its system calls.
        return os.path.join(self._root, "sha256", digest[:2], digest[2:])

    def _write_temp(self, data: bytes, fsync: bool) -> Path:
        """A new temp file holding `data`, fsynced unless not `fsync`."""
        tmp = self.tmp_dir / f"put-{os.getpid()}-{id(self):x}-{next(self._tmp_names)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def put_bytes(self, data: bytes) -> BlobRef:
        with self.writer(expected_size=len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def put_file(self, source: Path) -> BlobRef:
        with self.writer(expected_size=source.stat().st_size) as writer, source.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                writer.write(chunk)
            return writer.commit()

    def put_moved(self, source: Path) -> BlobRef:
        """Store a file written in `tmp_dir` by moving it into place: hashed, fsynced and renamed,
        so that it needs no second copy's room (a put_file of it would). The file is gone
        afterwards, whether the put succeeded or not."""
        try:
            if source.parent != self.tmp_dir:
                raise ValueError(f"put_moved takes a file in {self.tmp_dir}, got {source}")
            with source.open("rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
                size = os.fstat(file.fileno()).st_size
                os.fsync(file.fileno())
        except BaseException:
            source.unlink(missing_ok=True)
            raise
        self._move_into_place(source, digest)
        return BlobRef(digest, size)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is missing from the blob directory") from None

    def read_chunks(self, sha256: str, chunk_size: int = CHUNK_BYTES, offset: int = 0) -> Iterator[bytes]:
        """Stream the blob from byte `offset` (see `from_offset`); the last chunk is held back
        until the whole hash checks out."""
        yield from self.open_chunks(sha256, chunk_size, offset)

    def open_chunks(self, sha256: str, chunk_size: int = CHUNK_BYTES, offset: int = 0) -> Iterator[bytes]:
        """`read_chunks` with the file opened now rather than at the first chunk: a delete after
        this returns leaves the stream whole, as the open file outlives its name."""
        try:
            file = self.path(sha256).open("rb")
        except FileNotFoundError:
            raise DataLoss(f"blob {sha256} is missing from the blob directory") from None
        chunks = self._chunks(file, sha256, chunk_size)
        return from_offset(chunks, offset) if offset else chunks

    @staticmethod
    def _chunks(file: BinaryIO, sha256: str, chunk_size: int) -> Iterator[bytes]:
        digest = hashlib.sha256()
        with file:
            previous = file.read(chunk_size)
            digest.update(previous)
            while chunk := file.read(chunk_size):
                digest.update(chunk)
                yield previous
                previous = chunk
        if digest.hexdigest() != sha256:
            raise DataLoss(f"blob {sha256} is damaged on disk (its content hash no longer matches)")
        if previous:
            yield previous

    def read_bytes(self, sha256: str) -> bytes:
        return b"".join(self.read_chunks(sha256))

    def verify(self, sha256: str) -> bool:
        try:
            for _ in self.read_chunks(sha256):
                pass
        except DataLoss:
            return False
        return True

    @contextlib.contextmanager
    def open_verified(self, sha256: str) -> Iterator[Path]:
        """The blob's path after checking its hash, for readers that need a file (numpy, onnxruntime)."""
        if not self.verify(sha256):
            raise DataLoss(f"blob {sha256} is missing or damaged in the blob directory")
        yield self.path(sha256)

    def delete(self, sha256: str) -> bool:
        """Remove the blob unless a put has claimed it; whether a file was removed."""
        path = self.path(sha256)
        with self._claims_lock:
            if self._claims[sha256] > 0:
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        self._changes += 1
        return True

    def all(self) -> Iterator[str]:
        shards = self.root / "sha256"
        if not shards.is_dir():
            return  # read-only, where no blob was ever stored
        for shard in sorted(shards.iterdir()):
            for blob in sorted(shard.iterdir()):
                yield shard.name + blob.name

    def collect(self, live: set[str], min_age_s: float = 3600.0) -> list[str]:
        """Delete blobs nothing references; young ones are spared (an upload may be recording them)."""
        now = time.time()
        removed = []
        for sha256 in self.all():
            path = self.path(sha256)
            if sha256 not in live and now - path.stat().st_mtime >= min_age_s:
                path.unlink(missing_ok=True)
                removed.append(sha256)
        self._changes += len(removed)
        return removed

    def census(self) -> BlobCensus:
        """How many blobs there are and their bytes, for /metrics. Counted by a walk of the blob
        directory, made again only once blobs were added or removed since the last, and then
        no sooner than nine times the last walk's duration after it: on a store whose walk
        takes long, scrapes spend at most a tenth of their time walking, and the figures may
        lag the directory by that long."""
        with self._census_lock:
            if self._census is None or (
                self._changes != self._census_changes and time.monotonic() >= self._census_due
            ):
                changes = self._changes
                started = time.monotonic()
                self._census = self._count()
                ended = time.monotonic()
                self._census_changes = changes
                self._census_due = ended + 9 * (ended - started)
            return self._census

    def _count(self) -> BlobCensus:
        count = size = 0
        if not os.path.isdir(os.path.join(self._root, "sha256")):
            return BlobCensus(0, 0)  # read-only, where no blob was ever stored
        with os.scandir(os.path.join(self._root, "sha256")) as shards:
            for shard in shards:
                if not shard.is_dir():
                    continue
                with os.scandir(shard.path) as blobs:
                    for blob in blobs:
                        with contextlib.suppress(FileNotFoundError):
                            size += blob.stat().st_size
                            count += 1
        return BlobCensus(count, size)

    def usage(self) -> int:
        """Bytes held by blobs."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total


def from_offset(chunks: Iterator[bytes], offset: int) -> Iterator[bytes]:
    """The bytes of `chunks` from `offset` on, one item a chunk. Those before it are still read, so
    that the sha256 of the whole file is checked before the last chunk goes out, as for a download
    from the start; each such chunk is an empty item (nothing to send, see stream_chunks): read all
    in one step, they held a worker thread that a cancelled call cannot stop for the whole file."""
    skipped = 0
    for chunk in chunks:
        if skipped >= offset:
            yield chunk
            continue
        skipped += len(chunk)
        yield chunk[len(chunk) - (skipped - offset) :] if skipped > offset else b""

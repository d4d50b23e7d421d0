"""The LMDB store: named tables, short transactions, group commit for hot-path writes.

One environment per daemon (the daemon is its only writer). Readers take a snapshot with
`read()`; `write()` is one atomic transaction; `submit()` queues a small write for the
committer thread, which commits everything queued in one transaction: a lone write is
committed at once, and the writes that arrive while a commit (and its fsync) runs share the
next one, so thousands of metric points or job events per second cost a handful of fsyncs.
`group_commit_interval_s` adds a wait for more writes to join, for disks where fsync is cheap. Each submitted write runs in
its own nested transaction: one that fails is rolled back alone and its caller gets the
error, the others commit.

Part of the map is kept for writes that end something (a job's or a sweep's terminal state):
an ordinary write that would leave fewer than `reserve_pages` of it free is refused as if the
map were full, so a job whose checkpoint no longer fits can still be stored as FAILED.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from tesserad.config import format_size
from tesserad.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted, TesseraError
from tesserad.store.keys import Key, pack, prefix_range, unpack
from tesserad.store.space import disk_full

T = TypeVar("T")

# LMDB refuses keys longer than this (its compile-time default).
MAX_KEY_BYTES = 511


@dataclass(frozen=True)
class StoreUsage:
    file_bytes: int  # size of the data file on disk
    used_bytes: int  # pages in use: the map's high-water mark, freed pages LMDB reuses included
    live_bytes: int  # pages the tables hold now: what the full-store check counts against the map
    map_size: int  # how far the file may grow
    reserve_bytes: int  # the map's last part, kept for writes that end a job or sweep


def _map_full(map_size: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the store is full (store.map_size = {format_size(map_size)}); raise it with "
        "TESSERA_STORE_MAP_SIZE or [store] map_size and restart tesserad"
    )


# Free bytes under which an I/O error writing the store is taken for a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def _out_of_room(exc: lmdb.Error, path: Path) -> bool:
    """Whether LMDB's `exc` means the disk under `path` had no room: ENOSPC, or the EIO that
    LMDB gives for a write cut short, which is how a disk with a few blocks left fills up."""
    if isinstance(exc, lmdb.DiskError):
        return True
    io_error = getattr(exc, "code", None) == errno.EIO or os.strerror(errno.EIO) in str(exc)
    if not io_error:
        return False
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL_BYTES


# What to do about a store file that cannot be read: one clause, said to an operator.
_RESTORE = (
    "restore the data directory from a backup into a new one (`tesserad restore BACKUP --data-dir "
    "NEW_DIR`) and run tesserad on that, keeping this one until the restored one serves"
)


# LMDB's errors that mean the store file itself is damaged (or is no LMDB file): a restore mends
# them. The rest come of the system it runs on (memory, limits, access) and are said as such.
_DAMAGE = (
    lmdb.BadChecksumError,
    lmdb.CorruptedError,
    lmdb.IncompatibleError,
    lmdb.InvalidError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
    lmdb.ProblemError,
    lmdb.VersionMismatchError,
)

# What to do about an error number LMDB gives, opening or reading the store.
_ERRNO_ADVICE = {
    errno.EIO: (
        "the disk or device under it failed to read or write: check the system's log (`dmesg`) and "
        "the disk's health, and move the data directory to a sound disk (or restore a backup there)"
    ),
    errno.EACCES: "give the user tesserad runs as access to it and to its directory",
    errno.EPERM: "give the user tesserad runs as access to it and to its directory",
    errno.ENOMEM: (
        "its map (store.map_size, or the file's size where larger) does not fit in the memory or "
        "address space this process may use: raise that limit (`ulimit -v`, the container's memory "
        "limit) or lower TESSERA_STORE_MAP_SIZE"
    ),
    errno.EMFILE: "this process has every file it may open open: raise its limit (`ulimit -n`)",
    errno.ENFILE: "the system has every file it may open open: close some, or raise fs.file-max",
    errno.ENOENT: "it is not there: name the data directory that holds store/data.mdb",
    errno.ENOSPC: "the disk is full: free space on it",
}


def unreadable_store(path: Path, exc: lmdb.Error) -> TesseraError:
    """What LMDB's `exc`, met opening or reading the store at `path`, means to an operator: damage
    (or no LMDB file at all), which a restore from a backup mends; else what the system refused
    (access, memory, limits), in LMDB's words with what to change."""
    data_file = path / "data.mdb"
    # LMDB's message starts with the store's directory, which ours names already.
    said = str(exc).removeprefix(f"{path}: ")
    if isinstance(exc, _DAMAGE):
        return DataLoss(
            f"the store file {data_file} is damaged or is not a tesserad store (LMDB says: {said}); {_RESTORE}"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        advice = "every reader slot of its lock file is taken: stop the other processes that read it"
    else:
        advice = _ERRNO_ADVICE.get(
            getattr(exc, "code", None) or 0,
            "what it says is no sign of damage to the file: fix that, and try again",
        )
    return FailedPrecondition(f"the store file {data_file} cannot be opened (LMDB says: {said}); {advice}")


@contextlib.contextmanager
def store_errors(path: Path) -> Iterator[None]:
    """LMDB's errors opening or reading the store at `path` as `unreadable_store` says them; a
    full map or disk as the store's writes say them already."""
    try:
        yield
    except (lmdb.MapFullError, lmdb.DiskError):
        raise
    except lmdb.Error as exc:
        raise unreadable_store(path, exc) from None


def _check_length(env: lmdb.Environment, path: Path) -> None:
    """DataLoss when the data file is shorter than the pages its header says are in use (a copy
    cut short): reading one of those through the map would be a SIGBUS, which kills the process."""
    used = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    data_file = path / "data.mdb"
    size = data_file.stat().st_size
    if size < used:
        raise DataLoss(
            f"the store file {data_file} is damaged: it is cut short, {size} bytes where its header "
            f"says {used} are in use; {_RESTORE}"
        )


def reserve_pages(map_size: int, page_size: int) -> int:
    """The pages only `reserved` writes may use: a twentieth of the map, and at least enough
    for a terminal write on a small map (each table it touches copies a path of pages, and a
    job's end touches a dozen: its record, events, run, metric summaries and order index,
    dataset holds)."""
    return max(map_size // 20, min(512 << 10, map_size // 2)) // page_size


def _allocate(path: Path, size: int) -> None:
    """Give the file (created if missing) disk blocks for its first `size` bytes: OSError
    (ENOSPC) now rather than a fault on a mapped page later."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _check_existing(env: lmdb.Environment, tables: list[str], check: Callable[[ReadTxn], None]) -> None:
    """Run `check` on a read snapshot of those of `tables` that `env` already has."""
    with env.begin(buffers=False) as txn:
        existing: dict[str, Any] = {}
        for name in tables:
            try:
                existing[name] = env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                continue
        check(ReadTxn(txn, existing))


class ReadTxn:
    """A consistent snapshot of every table; valid only inside its `with` block."""

    def __init__(
        self, txn: lmdb.Transaction[bytes], tables: dict[str, Any], empty: frozenset[str] = frozenset()
    ) -> None:
        """`empty`: tables the store lacks, read as empty (a read-only store cannot create them)."""
        self._txn = txn
        self._tables = tables
        self._empty = empty

    def _db(self, table: str) -> Any:
        """The table's handle; None for one of the `empty` tables."""
        try:
            return self._tables[table]
        except KeyError:
            if table in self._empty:
                return None
            raise KeyError(f"unknown store table {table!r}; add it to STORE_TABLES") from None

    def get(self, table: str, key: Key) -> bytes | None:
        return self.get_packed(table, pack(key))

    def get_packed(self, table: str, key: bytes) -> bytes | None:
        """`get` for a key already packed (hot paths pack a shared prefix once)."""
        db = self._db(table)
        return None if db is None else self._txn.get(key, db=db)

    def has_table(self, table: str) -> bool:
        """Whether `table` is in this snapshot: always, except in a `Store.open` check, which
        sees only the tables the store already had."""
        return table in self._tables

    def exists(self, table: str, key: Key) -> bool:
        return self.get(table, key) is not None

    def scan(
        self,
        table: str,
        prefix: Key = (),
        *,
        start: Key | None = None,
        after: Key | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Key, bytes]]:
        """Keys beginning with `prefix`, in key order (or reversed).

        `start` is an inclusive bound and `after` an exclusive one, both full keys, in the
        direction of the scan: forward they are lower bounds, reversed upper bounds.
        """
        low, high = prefix_range(prefix)
        if not reverse:
            if start is not None:
                low = max(low, pack(start))
            if after is not None:
                low = max(low, pack(after) + b"\x00")
        else:
            if start is not None:
                high = min(high, pack(start) + b"\x00")
            if after is not None:
                high = min(high, pack(after))
        yield from self._range(table, low, high, reverse, limit)

    def packed_range(
        self, table: str, first: bytes, last: bytes, *, reverse: bool = False, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Packed keys from `first` to `last` (both included, keys of one shape) with their
        values: for hot reads that decode only what they need (see `trailing_int`)."""
        # Of keys shaped like `last`, exactly those <= last sort before last + 0x00.
        yield from self._packed(table, first, last + b"\x00", reverse, limit)

    def _range(
        self, table: str, low: bytes, high: bytes, reverse: bool, limit: int | None
    ) -> Iterator[tuple[Key, bytes]]:
        for raw_key, value in self._packed(table, low, high, reverse, limit):
            yield unpack(raw_key), value

    def _packed(
        self, table: str, low: bytes, high: bytes, reverse: bool, limit: int | None
    ) -> Iterator[tuple[bytes, bytes]]:
        db = self._db(table)
        if db is None or (limit is not None and limit <= 0):
            return
        seen = 0
        with self._txn.cursor(db=db) as cursor:
            if not reverse:
                if not cursor.set_range(low):
                    return
                items = cursor.iternext()
            else:
                positioned = cursor.prev() if cursor.set_range(high) else cursor.last()
                if not positioned:
                    return
                items = cursor.iterprev()
            for raw_key, value in items:
                if raw_key < low or raw_key >= high:
                    return
                yield raw_key, value
                seen += 1
                if limit is not None and seen >= limit:
                    return

    def counts(self) -> dict[str, int]:
        """Entries in each table."""
        return {table: self.count(table) for table in self._tables}

    def count(self, table: str, prefix: Key = ()) -> int:
        db = self._db(table)
        if db is None:
            return 0
        if not prefix:
            return int(self._txn.stat(db)["entries"])
        # Packed keys alone, neither unpacked nor their values copied: a model's aliases are
        # counted on every new alias, up to a thousand of them.
        low, high = prefix_range(prefix)
        with self._txn.cursor(db=db) as cursor:
            if not cursor.set_range(low):
                return 0
            return sum(1 for _ in itertools.takewhile(lambda key: key < high, cursor.iternext(values=False)))


class WriteTxn(ReadTxn):
    """A write transaction: everything in it commits together or not at all."""

    def __init__(self, txn: lmdb.Transaction[bytes], tables: dict[str, Any], map_size: int) -> None:
        super().__init__(txn, tables)
        self._map_size = map_size

    def put(self, table: str, key: Key, value: bytes, *, overwrite: bool = True) -> bool:
        """Store `value`; with overwrite=False, return False instead if the key exists."""
        return self.put_packed(table, pack(key), value, overwrite=overwrite)

    def put_packed(self, table: str, raw: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """`put` for a key already packed."""
        if len(raw) > MAX_KEY_BYTES:
            raise InvalidArgument(
                f"a key of {len(raw)} bytes is too long for the store (max {MAX_KEY_BYTES})"
            )
        try:
            return bool(self._txn.put(raw, value, db=self._db(table), overwrite=overwrite))
        except lmdb.MapFullError:
            raise _map_full(self._map_size) from None

    def delete(self, table: str, key: Key) -> bool:
        return self.delete_packed(table, pack(key))

    def delete_packed(self, table: str, raw: bytes) -> bool:
        """`delete` for a key already packed."""
        return bool(self._txn.delete(raw, db=self._db(table)))

    def clear(self, table: str) -> None:
        """Delete every key of `table`: LMDB frees its pages without reading them."""
        self._txn.drop(self._db(table), delete=False)

    def delete_range(self, table: str, prefix: Key) -> int:
        """Delete every key beginning with `prefix`; returns how many went."""
        keys = [key for key, _ in self.scan(table, prefix)]
        for key in keys:
            self.delete(table, key)
        return len(keys)


@dataclass
class _Pending:
    work: Callable[[WriteTxn], Any]
    future: Future[Any]
    reserved: bool = False


class ReadOnlyStore:
    """A store opened only to be read, as the check of a stopped daemon's data directory opens
    it: LMDB read-only and without its lock file (the caller holds the data directory's lock),
    so that nothing in the store's directory is written, a read-only mount or a full map can be
    read, and a table the store lacks (an older store) reads as empty rather than being made."""

    def __init__(self, env: lmdb.Environment, tables: dict[str, Any], empty: frozenset[str]) -> None:
        self._env = env
        self._tables = tables
        self._empty = empty

    @classmethod
    def open(
        cls, path: Path, *, tables: list[str], check: Callable[[ReadTxn], None] | None = None
    ) -> ReadOnlyStore:
        """Open the store at `path` (a TesseraError, from `unreadable_store`, when it cannot be
        read); `check` as `Store.open`'s, on the tables the store has."""
        # LMDB raises the map size to the data file's when it is smaller.
        with store_errors(path):
            env = lmdb.open(
                str(path),
                readonly=True,
                lock=False,
                create=False,
                max_dbs=max(len(tables), 1) + 4,
                readahead=False,
            )
            try:
                _check_length(env, path)
                handles: dict[str, Any] = {}
                for name in tables:
                    # Each in a transaction of its own that commits: one aborted closes its handles.
                    try:
                        handles[name] = env.open_db(name.encode(), create=False)
                    except lmdb.NotFoundError:
                        continue
                if check is not None:
                    with env.begin(buffers=False) as txn:
                        check(ReadTxn(txn, handles))
            except BaseException:
                env.close()
                raise
        return cls(env, handles, frozenset(tables) - handles.keys())

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadTxn]:
        with self._env.begin(buffers=False) as txn:
            yield ReadTxn(txn, self._tables, self._empty)

    def close(self) -> None:
        self._env.close()


def _no_progress_hook() -> None:
    return


class Store:
    """An open LMDB environment with its tables and its group-commit thread."""

    def __init__(
        self,
        env: lmdb.Environment,
        tables: dict[str, Any],
        map_size: int,
        path: Path,
        group_commit_interval_s: float,
        sync_interval_s: float | None,
    ) -> None:
        self._env = env
        self._tables = tables
        self._main = env.open_db(None)
        self._map_size = map_size
        page_size = int(env.stat()["psize"])
        self._limit_pages = map_size // page_size - reserve_pages(map_size, page_size)
        self.path = path
        self._interval = group_commit_interval_s
        self._sync_interval = sync_interval_s
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        # Per thread: the writes it submitted inside `together`, queued at its end.
        self._held = threading.local()
        self._closing = False
        self.group_commits = 0
        # Called after each batch a start-up upgrade commits (`each_row_once`), from its thread:
        # the daemon tells systemd its start is still moving (tesserad.systemd.StartProgress).
        self.upgrade_progressed: Callable[[], None] = _no_progress_hook
        self._committer = threading.Thread(target=self._run_committer, name="store-group-commit", daemon=True)
        self._committer.start()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        map_size: int,
        durability: str = "full",
        tables: list[str],
        group_commit_interval_s: float = 0.0,
        sync_interval_s: float = 1.0,
        max_readers: int = 256,
        check: Callable[[ReadTxn], None] | None = None,
    ) -> Store:
        """Open (creating if needed) the environment at `path` with the given tables.

        durability "full" fsyncs every commit; "relaxed" leaves commits to the OS and
        fsyncs every `sync_interval_s` (a daemon crash loses nothing, a power cut may lose
        the last interval). `check` reads a snapshot of the tables the store already has
        before any missing one is created: what it raises is raised with the store closed
        and left as it was.
        """
        if durability not in ("full", "relaxed"):
            raise ValueError(f"durability must be full or relaxed, not {durability!r}")
        path.mkdir(parents=True, exist_ok=True)
        relaxed = durability == "relaxed"
        # LMDB writes its lock file through a shared mapping, where a page the disk has no room
        # for is a SIGBUS that kills the daemon (a write would just fail): its first page is
        # allocated before the open writes the header there, the rest (reader slots) after.
        lock_file = path / "lock.mdb"
        _allocate(lock_file, mmap.PAGESIZE)
        with store_errors(path):
            env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=max(len(tables), 1) + 4,
                max_readers=max_readers,
                sync=not relaxed,
                metasync=not relaxed,
                readahead=False,
            )
        try:
            _allocate(lock_file, lock_file.stat().st_size)
        except OSError:
            env.close()
            raise
        try:
            with store_errors(path):
                _check_length(env, path)
                # Readers left in the lock table by a process that died would pin old pages forever.
                env.reader_check()
                if check is not None:
                    _check_existing(env, tables, check)
        except BaseException:
            env.close()
            raise
        try:
            handles = {name: env.open_db(name.encode(), create=True) for name in tables}
        except lmdb.MapFullError:
            env.close()
            raise _map_full(map_size) from None
        except lmdb.DiskError:
            env.close()
            raise disk_full(str(path), "to the database") from None
        except lmdb.Error as exc:
            env.close()
            raise unreadable_store(path, exc) from None
        return cls(
            env, handles, map_size, path, group_commit_interval_s, sync_interval_s if relaxed else None
        )

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadTxn]:
        with self._env.begin(buffers=False) as txn:
            yield ReadTxn(txn, self._tables)

    def copy_snapshot(self, fd: int, first: Callable[[ReadTxn], T]) -> T:
        """Write the store, compacted, to the file open at `fd` as one read transaction sees
        it (a point in time); `first(snapshot)` runs on that transaction before any later write
        can commit, so that what it pins (a backup's blobs) is pinned before a write can free
        it. Its result is returned once the copy is complete."""
        with self._write_lock:
            txn = self._env.begin(buffers=False)
            try:
                result = first(ReadTxn(txn, self._tables))
            except BaseException:
                txn.abort()
                raise
        try:
            self._env.copyfd(fd, compact=True, txn=txn)
        except lmdb.DiskError as exc:
            # With its errno, so that the caller can say which disk is full.
            raise OSError(errno.ENOSPC, f"cannot copy the store: {exc}") from None
        except lmdb.Error as exc:
            raise OSError(f"cannot copy the store: {exc}") from None
        finally:
            txn.abort()
        return result

    def _live_pages(self, txn: lmdb.Transaction[bytes]) -> int:
        """Pages the tables hold as `txn` sees them (freed pages LMDB may reuse not counted)."""
        total = 0
        for db in [self._main, *self._tables.values()]:
            stat = txn.stat(db)
            total += int(stat["branch_pages"]) + int(stat["leaf_pages"]) + int(stat["overflow_pages"])
        return total

    def _near_full(self) -> bool:
        """Whether the map's high-water mark is in the reserve: only then can an ordinary write
        eat into it, and only then is it worth counting live pages."""
        return int(self._env.info()["last_pgno"]) + 1 > self._limit_pages

    def _check_room(self, txn: lmdb.Transaction[bytes], before: int) -> None:
        """Refuse an ordinary write that leaves its transaction in the reserve and took pages."""
        after = self._live_pages(txn)
        if after > self._limit_pages and after > before:
            raise _map_full(self._map_size)

    @contextlib.contextmanager
    def write(self, *, reserved: bool = False) -> Iterator[WriteTxn]:
        """One atomic write transaction; an exception inside rolls everything back.
        `reserved`: a write that ends something, which may use the map's reserve."""
        self._refuse_inside_together("write", "would commit before the writes held there")
        with self._write_lock:
            txn = self._env.begin(write=True)
            try:
                checked = not reserved and self._near_full()
                before = self._live_pages(txn) if checked else 0
                yield WriteTxn(txn, self._tables, self._map_size)
                if checked:
                    self._check_room(txn, before)
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.MapFullError:
                raise _map_full(self._map_size) from None
            except lmdb.Error as exc:
                if not _out_of_room(exc, self.path):
                    raise
                raise disk_full(str(self.path), "to the database") from None

    def submit(self, work: Callable[[WriteTxn], T], *, reserved: bool = False) -> Future[T]:
        """Queue `work` for the next group commit; the future resolves once it is durable.
        Cancelling the future before that commit begins drops the write; once it has begun,
        cancel() fails and the future gives the outcome. `reserved`: as for `write`."""
        future: Future[T] = Future()
        held: list[_Pending] | None = getattr(self._held, "writes", None)
        if held is not None:
            held.append(_Pending(work, future, reserved))
            return future
        with self._cond:
            if self._closing:
                raise RuntimeError("the store is closed")
            self._pending.append(_Pending(work, future, reserved))
            self._cond.notify()
        return future

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """The writes this thread submits inside are queued at its end, all at once, so that one
        group commit takes them (each its own nested transaction and future, as `submit_all`),
        and waited for: it raises as `flush` does when that commit failed as a whole. If the
        body raises, its writes are cancelled (none is made) and its error goes on. Inside,
        `write`, `submit_all` and `flush` raise RuntimeError: the first two would commit before
        the held writes, the last would wait for them forever. So does another `together`: its
        writes would wait for the outer one's end, so its own end could neither wait for them
        nor, if its body raised, cancel them alone. Held per thread: no awaits inside."""
        self._refuse_inside_together(
            "together", "would end before its writes were committed: they wait for the outer one's end"
        )
        held: list[_Pending] = []
        self._held.writes = held
        try:
            yield
        except BaseException:
            for item in held:
                item.future.cancel()
            raise
        finally:
            self._held.writes = None
        if not held:
            return
        done: Future[None] = Future()
        with self._cond:
            if self._closing:
                for item in held:
                    item.future.set_exception(RuntimeError("the store is closed"))
                raise RuntimeError("the store is closed")
            self._pending.extend([*held, _Pending(lambda _txn: None, done)])
            self._cond.notify()
        done.result()

    def _holding(self) -> bool:
        """Whether this thread is inside `together`."""
        return getattr(self._held, "writes", None) is not None

    def _refuse_inside_together(self, what: str, why: str) -> None:
        if self._holding():
            raise RuntimeError(f"Store.{what} inside Store.together() {why}")

    def submit_all(self, works: Sequence[Callable[[WriteTxn], T]]) -> list[Future[T]]:
        """`submit` each of `works`, all queued at once so that they share a commit; each its
        own nested transaction and future."""
        self._refuse_inside_together("submit_all", "would commit before the writes held there")
        pending = [_Pending(work, Future()) for work in works]
        with self._cond:
            if self._closing:
                raise RuntimeError("the store is closed")
            self._pending.extend(pending)
            self._cond.notify()
        return [item.future for item in pending]

    def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        self._refuse_inside_together("flush", "would wait forever for the writes held there")
        self.submit(lambda _txn: None).result()

    def _run_committer(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._cond:
                timeout = self._sync_interval
                if not self._pending and not self._closing:
                    self._cond.wait(timeout)
                if self._pending and not self._closing and self._interval > 0:
                    # Let more writes gather, unless the store is closing.
                    self._cond.wait_for(lambda: self._closing, self._interval)
                batch, self._pending = self._pending, []
                closing = self._closing
            if batch:
                self._commit_batch(batch)
            if self._sync_interval is not None and time.monotonic() - last_sync >= self._sync_interval:
                self._env.sync(True)
                last_sync = time.monotonic()
            if closing and not batch:
                return

    def _commit_batch(self, queued: list[_Pending]) -> None:
        # A caller that stopped waiting (an RPC its client cancelled) cancels its future: its
        # write is not made. The rest are claimed before any work runs, so that no cancel can
        # come between a write and its outcome (setting a cancelled future's outcome raises,
        # which would end this thread and leave every later write waiting forever).
        batch = [item for item in queued if item.future.set_running_or_notify_cancel()]
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        try:
            with self._write_lock:
                txn = self._env.begin(write=True)
                try:
                    # Checked once a batch: a batch that starts below the reserve may end a
                    # little into it, which the reserve's size allows for.
                    near_full = self._near_full()
                    for item in batch:
                        child = self._env.begin(write=True, parent=txn)
                        try:
                            checked = near_full and not item.reserved
                            before = self._live_pages(child) if checked else 0
                            result = item.work(WriteTxn(child, self._tables, self._map_size))
                            if checked:
                                self._check_room(child, before)
                        except BaseException as exc:
                            child.abort()
                            outcomes.append((item, None, exc))
                        else:
                            child.commit()
                            outcomes.append((item, result, None))
                    txn.commit()
                except BaseException:
                    txn.abort()
                    raise
        except lmdb.Error as exc:
            if isinstance(exc, lmdb.MapFullError):
                error: BaseException = _map_full(self._map_size)
            elif _out_of_room(exc, self.path):
                error = disk_full(str(self.path), "to the database")
            else:
                error = exc
            for item in batch:
                item.future.set_exception(error)
            return
        except BaseException as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        self.group_commits += 1
        for item, result, failure in outcomes:
            if failure is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(failure)

    def reader_check(self) -> int:
        """Clear reader slots of dead processes; returns how many were cleared."""
        return int(self._env.reader_check())

    def usage(self) -> StoreUsage:
        info = self._env.info()
        stat = self._env.stat()
        data_file = self.path / "data.mdb"
        page_size = int(stat["psize"])
        map_size = int(info["map_size"])
        with self._env.begin() as txn:
            live_pages = self._live_pages(txn)
        return StoreUsage(
            file_bytes=data_file.stat().st_size if data_file.exists() else 0,
            used_bytes=(int(info["last_pgno"]) + 1) * page_size,
            live_bytes=live_pages * page_size,
            map_size=map_size,
            reserve_bytes=reserve_pages(map_size, page_size) * page_size,
        )

    def table_counts(self) -> dict[str, int]:
        with self._env.begin() as txn:
            return {name: int(txn.stat(db)["entries"]) for name, db in self._tables.items()}

    def close(self) -> None:
        """Commit what is queued, sync and close; safe to call twice."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._committer.join()
        self._env.sync(True)
        self._env.close()

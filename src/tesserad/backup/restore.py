"""`tesserad restore`: a backup archive made into a new data directory, offline.

Nothing is put in place before everything is checked: the manifest must name only tables this
tesserad knows and fit in the disk's free space; the archive is read into a staging directory
on the target's disk (in it when it exists, since it may be a mount point; else beside it),
every member against the manifest's sha256 and size, none missing; the store copy is opened and
its record counts compared with the manifest's, and every blob it references must be among
those restored. Only then does the staging directory become the data directory (a rename; into
an existing empty directory, under its lock, its blobs and then its store, each rename durable
before the next: a store in the data directory is what says the restore finished, and it never
stands there without its blobs). Any failure removes the staging directory, and blobs already
moved go back into it first, so a refused or interrupted archive leaves nothing behind.

A restore killed outright (SIGKILL, a power cut) cannot remove its staging directory; the next
restore into the same directory does, and takes back the blobs the dead one had moved into the
data directory without its store (its INSTALLING mark says it had begun to). Each restore holds
a `flock` on a lock file in its staging directory while it runs, so one whose lock can be taken
was left by a dead restore, and one whose lock is held belongs to a restore still running,
which is left alone. A staging directory that becomes a new data directory trades that lock for
the data directory's own (tesserad.lock), taken first and held through the rename: at no moment
may another restore or a daemon take it. Until a restore is finished or removed, a daemon does
not start a new store in its data directory (see unfinished_restore).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import lmdb

from tessera.backup import BLOB_PREFIX, STORE_NAME, ArchiveError, Entry, Manifest, read_archive
from tesserad import __version__
from tesserad.config import format_size
from tesserad.datasets.references import BLOB_HOLDERS
from tesserad.errors import DataLoss, FailedPrecondition
from tesserad.signal_wakeup import WakeableReader
from tesserad.store import DataDirLock, pack, unpack
from tesserad.store.blobs import fsync_dir
from tesserad.store.incarnation import INCARNATION_KEY, new_incarnation_record
from tesserad.store.lockfile import LOCK_NAME
from tesserad.store.schema import SCHEMA_KEY, STORE_SCHEMA, decode_schema_record

log = logging.getLogger(__name__)

# In a staging directory: held by its restore while it runs, with its pid.
STAGING_LOCK_NAME = "restore.lock"
# In a staging directory inside the data directory: its blobs may be there already, its store not.
INSTALLING_NAME = "installing"
# A write that found the disk full, or the user's quota used up.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class RestoreError(Exception):
    """The restore was refused or failed; nothing was put in place. The message says why."""


class InterruptedAfterRestore(BaseException):
    """An interruption (Ctrl-C, SIGTERM: the `__cause__`) that came once the restore was in
    place: the data directory holds the restored archive, whose manifest is `manifest`."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.manifest = manifest


class DurabilityUnconfirmed(Exception):
    """The fsync that was to make the restore's last rename durable failed (its OSError: the
    `__cause__`): the restore is in place, and a crash before the disk's next good sync may
    still undo it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.directory = directory

    def __str__(self) -> str:
        return f"the fsync of {self.directory} failed ({self.__cause__})"


class FailedAfterRestore(Exception):
    """An error (the `__cause__`: a full disk as the lock file took the store's token, a
    DurabilityUnconfirmed) that came once the restore was in place: the data directory holds
    the restored archive, whose manifest is `manifest`, and a retry would find it not empty."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.manifest = manifest


Progress = Callable[[int, int], None]
"""Told the bytes staged and how many the archive's files hold, after each piece."""


class _SyncedFile:
    """A new file that is fsynced as it is closed; `wrote` is told each piece's size."""

    def __init__(self, path: Path, wrote: Callable[[int], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("xb")
        self._wrote = wrote

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self._wrote(written)
        return written

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()


def restore(
    archive: Path | BinaryIO,
    data_dir: Path,
    tables: Collection[str],
    progress: Progress | None = None,
    wakeup: int | None = None,
    owner: tuple[int, int] | None = None,
) -> Manifest:
    """Restore `archive` (a path, or an open binary file such as stdin, read as a stream) into
    `data_dir` (missing, or empty); its manifest. `tables`: those of this tesserad's store;
    `progress`, told how much is staged; `wakeup`, the pipe signal_wakeup gives: an archive
    that is a pipe is read waiting on it too, so that a signal's handler runs however it lands;
    `owner`, the uid and gid the data directory and all it holds are given to (root's to give)."""
    data_dir = data_dir.absolute()
    _remove_dead_staging(data_dir)
    _check_target(data_dir)
    # A pipe reads as well as a file (`<(ssh host cat b.tar)`): only a directory cannot be read.
    if isinstance(archive, Path) and not archive.exists():
        raise RestoreError(f"{archive} does not exist; pass the backup archive's path")
    if isinstance(archive, Path) and archive.is_dir():
        raise RestoreError(f"{archive} is a directory; pass the backup archive's path")
    if not data_dir.parent.is_dir():
        raise RestoreError(f"{data_dir.parent} does not exist; create it, or pass another --data-dir")
    staging = _Staging(data_dir, tables, progress)
    # The manifest once the archive is staged and checked, its store ready to put in place.
    staged: Manifest | None = None
    try:
        try:
            try:
                with _archive_stream(archive, wakeup) as stream:
                    manifest = read_archive(stream, staging.place, staging.check_manifest)
                store_token = _check_store(staging.path / "store", manifest)
                _new_incarnation(staging.path / "store")
            except ArchiveError as exc:
                raise RestoreError(
                    f"{archive_name(archive)} cannot be restored: {exc}; nothing was written"
                ) from None
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise
                raise RestoreError(f"{staging.no_room()}; nothing was written") from None
            if owner is not None:
                # Owners are inode metadata, which the directories' fsyncs below do not make
                # durable: a crash may undo some, which a `chown -R` mends (no data is lost).
                for path in [staging.path, *staging.path.rglob("*")]:
                    os.chown(path, *owner)
            _sync_dirs(staging.path)
            staged = manifest
            _put_in_place(staging.path, data_dir, store_token, owner)
        except BaseException:
            if staged is None or not _store_moved(staging.path, data_dir):
                _take_back_blobs(staging.path, data_dir)
            shutil.rmtree(staging.path, ignore_errors=True)
            raise
        finally:
            staging.unlock()
    except BaseException as exc:
        # Whatever came once the restore was in place (its staging directory gone by now,
        # whichever way) is not "nothing was written": the directory holds the restore.
        if staged is None or not _store_moved(staging.path, data_dir):
            raise
        if isinstance(exc, Exception):
            raise FailedAfterRestore(staged) from exc
        raise InterruptedAfterRestore(staged) from exc
    return manifest


@contextlib.contextmanager
def _archive_stream(archive: Path | BinaryIO, wakeup: int | None) -> Iterator[Path | BinaryIO]:
    """`archive` as read_archive takes it: a pipe (a FIFO, `<(cmd)`, stdin) read through a
    WakeableReader when there is a `wakeup`; else as it is."""
    if wakeup is None:
        yield archive
        return
    with contextlib.ExitStack() as opened:
        file = opened.enter_context(archive.open("rb")) if isinstance(archive, Path) else archive
        try:
            fd = file.fileno()
        except (OSError, io.UnsupportedOperation):
            yield file  # in memory: it never waits
            return
        if stat.S_ISREG(os.fstat(fd).st_mode):
            yield file
        else:
            yield io.BufferedReader(WakeableReader(fd, wakeup))


def archive_name(archive: Path | BinaryIO) -> str:
    """The archive as a message names it: its path, or "standard input" for a stream."""
    return str(archive) if isinstance(archive, Path) else "standard input"


class _Staging:
    """The directory an archive is read into, on the target's disk so that putting it in place
    is a rename: in the target when it exists (it may be a mount point), else beside it."""

    def __init__(self, data_dir: Path, tables: Collection[str], progress: Progress | None) -> None:
        self._tables = tables
        self._progress = progress
        self._disk = data_dir if data_dir.exists() else data_dir.parent
        self._needed: int | None = None
        self._staged = 0
        try:
            self.path = Path(tempfile.mkdtemp(dir=self._disk, prefix=_staging_prefix(data_dir)))
            try:
                self._lock = _lock_staging(self.path)
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            raise RestoreError(f"{self.no_room()}; nothing was written") from None

    def unlock(self) -> None:
        """End the restore's hold on its staging directory (put in place, or removed, by now)."""
        os.close(self._lock)

    def check_manifest(self, manifest: Manifest) -> None:
        """ArchiveError for a store of a newer schema or of tables this tesserad does not know;
        RestoreError when the disk has no room for what the manifest names."""
        if manifest.store_schema is not None and manifest.store_schema > STORE_SCHEMA:
            raise ArchiveError(
                f"it was made by tesserad {manifest.tesserad_version}, whose store has schema "
                f"{manifest.store_schema}, and this tesserad ({__version__}) opens schema "
                f"{STORE_SCHEMA} at most; restore it with tesserad {manifest.tesserad_version} or later"
            )
        unknown = sorted(manifest.records.keys() - set(self._tables))
        if unknown:
            raise ArchiveError(
                f"it was made by tesserad {manifest.tesserad_version}, whose store has tables this "
                f"tesserad ({__version__}) does not know ({', '.join(unknown)}); restore it with "
                f"tesserad {manifest.tesserad_version} or later"
            )
        self._needed = manifest.store.size + manifest.blob_bytes
        free = _free_bytes(self._disk)
        if self._needed > free:
            raise RestoreError(f"{self.no_room()}; nothing was written")

    def no_room(self) -> str:
        free = _free_bytes(self._disk)
        if self._needed is not None and self._needed > free:
            why = f"it needs {format_size(self._needed)}, and {format_size(free)} is free"
        else:
            why = f"it ran out of room with {format_size(free)} free (its inodes or a quota may be used up)"
        return (
            f"the disk of {self._disk} has no room for the restore: {why}; free space there, or "
            "restore onto another disk"
        )

    def place(self, name: str, _entry: Entry) -> _SyncedFile:
        return _SyncedFile(_staged(self.path, name), self._wrote)

    def _wrote(self, size: int) -> None:
        self._staged += size
        if self._progress is not None and self._needed is not None:
            self._progress(self._staged, self._needed)


def _staging_prefix(data_dir: Path) -> str:
    return f".{data_dir.name}.restore-"


def _lock_staging(staging: Path) -> int:
    """The open lock file of this restore's staging directory, held, with its pid for another
    restore to name. It goes before the staging directory is put in place; the hold, with the
    restore."""
    fd = os.open(staging / STAGING_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_dead_staging(data_dir: Path) -> None:
    """Remove the staging directories that restores into `data_dir` killed outright left (in it,
    or beside it); RestoreError for one whose restore is still running."""
    for staging in _stagings(data_dir):
        owner = _staging_owner(staging)
        if owner is None:
            # No lock file: made by a tesserad before this one, which may be restoring still.
            continue
        pid, running = owner
        if running:
            raise RestoreError(
                f"{staging} is the staging directory of a restore into {data_dir} that is still "
                f"running (pid {pid}); let it finish, or stop it, before restoring again"
            )
        _take_back_blobs(staging, data_dir)
        shutil.rmtree(staging)
        log.warning(
            "removed %s, left by a restore into %s (pid %s) that was killed before it finished",
            staging,
            data_dir,
            pid,
        )


def unfinished_restore(data_dir: Path) -> str | None:
    """Why a daemon must not make a new store in `data_dir`: a restore into it that runs, or that
    was killed before it finished, whose staging directory (in it, or beside it) a new store
    would stand beside, its blobs perhaps put in place already; None when there is none."""
    for staging in _stagings(data_dir):
        owner = _staging_owner(staging)
        if owner is not None and owner[1]:
            return (
                f"a `tesserad restore` into {data_dir} is running (pid {owner[0]}, staging in "
                f"{staging}); let it finish, then start the daemon on the restored directory"
            )
        left = f"{staging} and {data_dir / 'blobs'}" if _blobs_moved(staging) else str(staging)
        if owner is None:
            # _remove_dead_staging leaves it alone: its restore may be running still.
            return (
                f"a `tesserad restore` into {data_dir} by an older tesserad left {left} (it has no lock "
                "file to say whether that restore still runs, so no restore removes it); once no "
                f"restore into it runs, remove {left} by hand, then start the daemon or restore again"
            )
        return (
            f"a `tesserad restore` into {data_dir} did not finish: it left {left}; run `tesserad "
            f"restore ARCHIVE --data-dir {data_dir}` again to finish it (it removes what the "
            f"unfinished one left first), or remove {left} to start without it"
        )
    return None


def remove_finished_stagings(data_dir: Path) -> None:
    """Remove the staging directories in `data_dir`, whose store is there, that restores killed
    once in place left (only their lock file and INSTALLING mark remain). Called by a daemon
    holding the data directory's lock: no restore into it can be running."""
    for staging in _stagings(data_dir):
        owner = _staging_owner(staging)
        if staging.parent != data_dir or owner is None or owner[1] or not _store_moved(staging, data_dir):
            continue
        shutil.rmtree(staging)
        log.warning(
            "removed %s, left by a restore into %s that was killed once in place (pid %s); "
            "the restore was complete",
            staging,
            data_dir,
            owner[0],
        )


def _stagings(data_dir: Path) -> Iterator[Path]:
    """The staging directories of restores into `data_dir`: in it, and beside it."""
    for place in (data_dir.parent, data_dir):
        try:
            entries = sorted(place.iterdir())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            # Missing, or not listable: no staging directory can be found there.
            continue
        for staging in entries:
            ours = staging.name.startswith(_staging_prefix(data_dir))
            if ours and not staging.is_symlink() and staging.is_dir():
                yield staging


def _staging_owner(staging: Path) -> tuple[str, bool] | None:
    """The pid in a staging directory's lock file, and whether that restore is running (holds
    it); None when it has no lock file, unless it is empty: a restore killed between making it
    and its lock file. The lock file is restore.lock, and from just before a new data directory
    is put in place, its tesserad.lock: held through the rename, taken before restore.lock goes."""
    for name in (STAGING_LOCK_NAME, LOCK_NAME):
        try:
            fd = os.open(staging / name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            pid = os.read(fd, 32).decode(errors="replace").partition("\n")[0].strip() or "unknown"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return pid, True
            return pid, False
        finally:
            os.close(fd)
    return None if any(staging.iterdir()) else ("unknown", False)


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _check_target(data_dir: Path) -> None:
    """RestoreError unless `data_dir` is missing or empty (an unheld lock file and a
    lost+found aside)."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise RestoreError(f"{data_dir} is not a directory; pass --data-dir a new or empty directory")
    if (data_dir / LOCK_NAME).exists():
        _check_unlocked(data_dir)
    _check_empty(data_dir)


def _check_empty(data_dir: Path, staging: Path | None = None) -> None:
    ours = {LOCK_NAME} | ({staging.name} if staging is not None else set())
    others = sorted(
        entry.name for entry in data_dir.iterdir() if entry.name not in ours and not _fsck_dir(entry)
    )
    if others:
        raise RestoreError(
            f"{data_dir} is not empty (it holds {', '.join(others[:5])}); restore into a new or empty "
            "directory, so that no data is overwritten"
        )


def _fsck_dir(entry: Path) -> bool:
    """Whether `entry` is the lost+found that mkfs puts at a new ext disk's root: a mount point
    holding only it is empty, and the restore goes beside it."""
    return entry.name == "lost+found" and entry.is_dir() and not entry.is_symlink()


def _check_unlocked(data_dir: Path) -> None:
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except FailedPrecondition as exc:
        raise RestoreError(str(exc)) from None
    lock.release()


def _staged(staging: Path, name: str) -> Path:
    if name == STORE_NAME:
        return staging / "store" / "data.mdb"
    sha256 = name.removeprefix(BLOB_PREFIX)
    return staging / "blobs" / "sha256" / sha256[:2] / sha256[2:]


def _check_store(store_dir: Path, manifest: Manifest) -> str | None:
    """ArchiveError unless the staged store opens, holds the manifest's record counts, and
    references only blobs the archive held. Returns the token for the data directory's lock file
    (see _trusted_token)."""
    try:
        env = lmdb.open(
            str(store_dir), readonly=True, lock=False, max_dbs=len(manifest.records) + 1, readahead=False
        )
    except lmdb.Error as exc:
        raise ArchiveError(f"its store copy does not open as an LMDB store ({exc})") from None
    try:
        with env.begin() as txn:
            for table, expected in manifest.records.items():
                try:
                    db = env.open_db(table.encode(), txn=txn, create=False)
                except lmdb.NotFoundError:
                    raise ArchiveError(
                        f"its manifest counts records in table {table!r}, which its store copy does not have"
                    ) from None
                count = int(txn.stat(db)["entries"])
                if count != expected:
                    raise ArchiveError(
                        f"its store copy holds {count} records in {table}, and its manifest says {expected}"
                    )
            holders = env.open_db(BLOB_HOLDERS.encode(), txn=txn, create=False)
            missing = {str(unpack(key)[0]) for key in txn.cursor(holders).iternext(values=False)}
            missing -= manifest.blobs.keys()
            token = _trusted_token(env, txn, manifest)
    except lmdb.Error as exc:
        raise ArchiveError(f"its store copy cannot be read ({exc})") from None
    finally:
        env.close()
    if missing:
        raise ArchiveError(
            f"its store references {len(missing)} blobs it does not hold (e.g. {min(missing)})"
        )
    return token


def _trusted_token(env: lmdb.Environment, txn: lmdb.Transaction, manifest: Manifest) -> str | None:
    """The token of the store copy's schema record when the daemon that made the archive wrote
    that record (it recorded its schema in the manifest too; one from before schema versions
    leaves another's record in place), else None. Kept in the restored directory's lock file, it
    lets the first start trust the start-up markers that daemon kept, instead of running every
    start-up upgrade again and logging that an older tesserad may have written the store."""
    if manifest.store_schema is None or "meta" not in manifest.records:
        return None
    raw = txn.get(pack(SCHEMA_KEY), db=env.open_db(b"meta", txn=txn, create=False))
    if raw is None:
        return None
    try:
        record = decode_schema_record(bytes(raw))
    except DataLoss:
        return None  # trusted with nothing: the daemon's start reports the damage
    return record.token if record.schema == manifest.store_schema else None


def _new_incarnation(store_dir: Path) -> None:
    """Give the staged store a new incarnation (tesserad.store.incarnation): the restored
    registry is another history than the one backed up, which may go on changing, and replicas
    must not take the one for the other."""
    data_file = store_dir / "data.mdb"
    try:
        # Room for the pages the write copies beside those the store copy holds.
        env = lmdb.open(str(store_dir), lock=False, max_dbs=1, map_size=data_file.stat().st_size + (1 << 20))
    except lmdb.Error as exc:
        raise ArchiveError(f"its store copy does not open as an LMDB store ({exc})") from None
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.put(pack(INCARNATION_KEY), new_incarnation_record(), db=meta)
    except lmdb.Error as exc:
        if isinstance(exc, lmdb.DiskError):  # the disk is full: said as for the archive's files
            raise OSError(errno.ENOSPC, str(exc)) from None
        raise ArchiveError(f"its store copy cannot be written ({exc})") from None
    finally:
        env.close()


def _sync_dirs(staging: Path) -> None:
    """fsync every staged directory, so that the files' names are as durable as their bytes."""
    for dirpath, _dirs, _files in os.walk(staging, topdown=False):
        fsync_dir(Path(dirpath))


def _put_in_place(
    staging: Path, data_dir: Path, store_token: str | None, owner: tuple[int, int] | None
) -> None:
    if not data_dir.exists():
        # Held through the rename: until the staging directory is the data directory, a daemon
        # started on it is refused, and another restore finds it held (see _staging_owner). Its
        # restore.lock goes first, as no part of the data directory.
        lock = DataDirLock(staging)
        try:
            lock.acquire()
        except FailedPrecondition as exc:
            raise RestoreError(str(exc)) from None
        try:
            if store_token is not None:
                lock.keep_store_token(store_token)
            if owner is not None:
                os.chown(lock.path, *owner)
            (staging / STAGING_LOCK_NAME).unlink()
            staging.chmod(_new_dir_mode())
            staging.rename(data_dir)
        finally:
            lock.release()
        renamed_in = data_dir.parent
    else:
        lock = DataDirLock(data_dir)
        try:
            lock.acquire()
        except FailedPrecondition as exc:
            raise RestoreError(str(exc)) from None
        # (path, its uid and gid before the restore handed it to `owner`)
        handed: list[tuple[Path, int, int]] = []
        try:
            # Checked again under the lock: a daemon may have started on it meanwhile.
            _check_empty(data_dir, staging)
            if owner is not None:
                for path in (data_dir, lock.path):
                    was = path.stat()
                    os.chown(path, *owner)
                    handed.append((path, was.st_uid, was.st_gid))
            if (staging / "blobs").exists():
                (staging / INSTALLING_NAME).touch()
                fsync_dir(staging)
                (staging / "blobs").rename(data_dir / "blobs")
                fsync_dir(data_dir)
            # The rename that finishes the restore: a store never stands without its blobs.
            (staging / "store").rename(data_dir / "store")
            if store_token is not None:
                lock.keep_store_token(store_token)
        except BaseException:
            if not _store_moved(staging, data_dir):
                # Not restored: the (empty) directory goes back to whom it was.
                for path, uid, gid in handed:
                    with contextlib.suppress(OSError):
                        os.chown(path, uid, gid)
            raise
        finally:
            lock.release()
        # What is left: its lock file, its INSTALLING mark.
        shutil.rmtree(staging)
        renamed_in = data_dir
    try:
        fsync_dir(renamed_in)
    except OSError as exc:
        raise DurabilityUnconfirmed(renamed_in) from exc


def _store_moved(staging: Path, data_dir: Path) -> bool:
    """Whether the staged store (there once the archive was read) is now the data directory's:
    the restore is in place."""
    return not (staging / "store").exists() and (data_dir / "store").exists()


def _take_back_blobs(staging: Path, data_dir: Path) -> None:
    """Move the blobs a restore stopped before its store (interrupted, or killed outright) had
    put in the data directory back into its staging directory, which is removed next."""
    if _blobs_moved(staging) and (data_dir / "blobs").exists():
        (data_dir / "blobs").rename(staging / "blobs")


def _blobs_moved(staging: Path) -> bool:
    """Whether a restore stopped before its store had put its blobs in the data directory."""
    return (
        (staging / INSTALLING_NAME).exists()
        and not (staging / "blobs").exists()
        and (staging / "store").exists()
    )


def _new_dir_mode() -> int:
    """The mode the data directory that tesserad serve makes gets (0700 less the umask); the
    staging directory, from mkdtemp, is 0700."""
    # os.umask only reads by setting: set a stricter one for the moment it is read.
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o700 & ~umask

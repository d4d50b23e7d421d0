"""`tesserad restore`: a backup archive made into a new data directory, offline.

Nothing is put in place before everything is checked: the manifest must name only tables this
tesserad knows and fit in the disk's free space; the archive is read into a staging directory
on the target's disk (in it when it exists, since it may be a mount point; else beside it),
every member against the manifest's sha256 and size, none missing; the store copy is opened and
its record counts compared with the manifest's, and every blob it references must be among
those restored. Only then does the staging directory become the data directory (a rename; into
an existing empty directory, under its lock). Any failure removes the staging directory, so a
refused archive leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import lmdb

from tessera.backup import BLOB_PREFIX, STORE_NAME, ArchiveError, Entry, Manifest, read_archive
from tesserad import __version__
from tesserad.config import format_size
from tesserad.datasets.references import BLOB_HOLDERS
from tesserad.errors import FailedPrecondition
from tesserad.store import DataDirLock, unpack
from tesserad.store.lockfile import LOCK_NAME
from tesserad.store.schema import STORE_SCHEMA

# What a data directory holds besides its lock: the store and the blobs.
_PARTS = ("store", "blobs")
# A write that found the disk full, or the user's quota used up.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class RestoreError(Exception):
    """The restore was refused or failed; nothing was put in place. The message says why."""


class _SyncedFile:
    """A new file that is fsynced as it is closed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("xb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()


def restore(archive: Path, data_dir: Path, tables: Collection[str]) -> Manifest:
    """Restore `archive` into `data_dir` (missing, or empty); its manifest. `tables`: those of
    this tesserad's store."""
    data_dir = data_dir.absolute()
    _check_target(data_dir)
    # A pipe reads as well as a file (`<(ssh host cat b.tar)`): only a directory cannot be read.
    if not archive.exists():
        raise RestoreError(f"{archive} does not exist; pass the backup archive's path")
    if archive.is_dir():
        raise RestoreError(f"{archive} is a directory; pass the backup archive's path")
    if not data_dir.parent.is_dir():
        raise RestoreError(f"{data_dir.parent} does not exist; create it, or pass another --data-dir")
    staging = _Staging(data_dir, tables)
    try:
        try:
            manifest = read_archive(archive, staging.place, staging.check_manifest)
            _check_store(staging.path / "store", manifest)
        except ArchiveError as exc:
            raise RestoreError(f"{archive} cannot be restored: {exc}; nothing was written") from None
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            raise RestoreError(f"{staging.no_room()}; nothing was written") from None
        _sync_dirs(staging.path)
        _put_in_place(staging.path, data_dir)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    return manifest


class _Staging:
    """The directory an archive is read into, on the target's disk so that putting it in place
    is a rename: in the target when it exists (it may be a mount point), else beside it."""

    def __init__(self, data_dir: Path, tables: Collection[str]) -> None:
        self._tables = tables
        self._disk = data_dir if data_dir.exists() else data_dir.parent
        self._needed: int | None = None
        try:
            self.path = Path(tempfile.mkdtemp(dir=self._disk, prefix=f".{data_dir.name}.restore-"))
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            raise RestoreError(f"{self.no_room()}; nothing was written") from None

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
        return _SyncedFile(_staged(self.path, name))


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


def _check_store(store_dir: Path, manifest: Manifest) -> None:
    """ArchiveError unless the staged store opens, holds the manifest's record counts, and
    references only blobs the archive held."""
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
    except lmdb.Error as exc:
        raise ArchiveError(f"its store copy cannot be read ({exc})") from None
    finally:
        env.close()
    if missing:
        raise ArchiveError(
            f"its store references {len(missing)} blobs it does not hold (e.g. {min(missing)})"
        )


def _sync_dirs(staging: Path) -> None:
    """fsync every staged directory, so that the files' names are as durable as their bytes."""
    for dirpath, _dirs, _files in os.walk(staging, topdown=False):
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _put_in_place(staging: Path, data_dir: Path) -> None:
    if not data_dir.exists():
        staging.chmod(_new_dir_mode())
        staging.rename(data_dir)
        renamed_in = data_dir.parent
    else:
        lock = DataDirLock(data_dir)
        try:
            lock.acquire()
        except FailedPrecondition as exc:
            raise RestoreError(str(exc)) from None
        try:
            # Checked again under the lock: a daemon may have started on it meanwhile.
            _check_empty(data_dir, staging)
            for part in _PARTS:
                if (staging / part).exists():
                    (staging / part).rename(data_dir / part)
        finally:
            lock.release()
        staging.rmdir()
        renamed_in = data_dir
    fd = os.open(renamed_in, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_dir_mode() -> int:
    """The mode a directory gets from mkdir (0777 less the umask), as the data directory that
    tesserad serve makes does; the staging directory, from mkdtemp, is 0700."""
    # os.umask only reads by setting: set a stricter one for the moment it is read.
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o777 & ~umask

"""`tesserad restore`: a backup archive made into a new data directory, offline.

Nothing is put in place before everything is checked: the archive is read into a staging
directory beside the target (every member against the manifest's sha256 and size, none
missing), the store copy is opened and its record counts compared with the manifest's, and
every blob it references must be among those restored. Only then does the staging directory
become the data directory (a rename; into an existing empty directory, under its lock). Any
failure removes the staging directory, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import lmdb

from tessera.backup import BLOB_PREFIX, STORE_NAME, ArchiveError, Manifest, read_archive
from tesserad.datasets.references import BLOB_HOLDERS
from tesserad.errors import FailedPrecondition
from tesserad.store import DataDirLock, unpack
from tesserad.store.lockfile import LOCK_NAME

# What a data directory holds besides its lock: the store and the blobs.
_PARTS = ("store", "blobs")


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


def restore(archive: Path, data_dir: Path) -> Manifest:
    """Restore `archive` into `data_dir` (missing, or empty); its manifest."""
    data_dir = data_dir.absolute()
    _check_target(data_dir)
    if not archive.is_file():
        raise RestoreError(f"{archive} is not a file")
    if not data_dir.parent.is_dir():
        raise RestoreError(f"{data_dir.parent} does not exist; create it, or pass another --data-dir")
    staging = Path(tempfile.mkdtemp(dir=data_dir.parent, prefix=f".{data_dir.name}.restore-"))
    try:
        try:
            manifest = read_archive(archive, lambda name, _entry: _SyncedFile(_staged(staging, name)))
            _check_store(staging / "store", manifest)
        except ArchiveError as exc:
            raise RestoreError(f"{archive} cannot be restored: {exc}; nothing was written") from None
        _sync_dirs(staging)
        _put_in_place(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _check_target(data_dir: Path) -> None:
    """RestoreError unless `data_dir` is missing or empty (an unheld lock file aside)."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise RestoreError(f"{data_dir} is not a directory; pass --data-dir a new or empty directory")
    if (data_dir / LOCK_NAME).exists():
        _check_unlocked(data_dir)
    _check_empty(data_dir)


def _check_empty(data_dir: Path) -> None:
    others = sorted(entry.name for entry in data_dir.iterdir() if entry.name != LOCK_NAME)
    if others:
        raise RestoreError(
            f"{data_dir} is not empty (it holds {', '.join(others[:5])}); restore into a new or empty "
            "directory, so that no data is overwritten"
        )


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
        staging.rename(data_dir)
    else:
        lock = DataDirLock(data_dir)
        try:
            lock.acquire()
        except FailedPrecondition as exc:
            raise RestoreError(str(exc)) from None
        try:
            # Checked again under the lock: a daemon may have started on it meanwhile.
            _check_empty(data_dir)
            for part in _PARTS:
                if (staging / part).exists():
                    (staging / part).rename(data_dir / part)
        finally:
            lock.release()
        staging.rmdir()
    fd = os.open(data_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

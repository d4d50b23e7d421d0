"""What an LMDB error met opening the store tells an operator: damage (restore a backup) or what
of the system to fix."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb
import pytest

from tesserad.errors import DataLoss, FailedPrecondition
from tesserad.store.database import unreadable_store

STORE = Path("/data/store")


def lmdb_error(cls: type[lmdb.Error], message: str, code: int | None = None) -> lmdb.Error:
    """`cls` as LMDB raises it: its message after the store's directory, its error number on it."""
    exc = cls(f"{STORE}: {message}")
    if code is not None:
        exc.code = code  # type: ignore[misc]
    return exc


@pytest.mark.parametrize(
    "cls",
    [
        lmdb.BadChecksumError,
        lmdb.CorruptedError,
        lmdb.IncompatibleError,
        lmdb.InvalidError,
        lmdb.PageNotFoundError,
        lmdb.PanicError,
        lmdb.ProblemError,
        lmdb.VersionMismatchError,
    ],
)
def test_a_damaged_or_foreign_store_file_is_data_loss_to_restore(cls: type[lmdb.Error]) -> None:
    said = unreadable_store(STORE, lmdb_error(cls, "MDB_SOMETHING"))
    assert isinstance(said, DataLoss), said
    assert "is damaged or is not a tesserad store" in str(said) and "tesserad restore" in str(said)


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.EIO, "the disk or device under it failed"),
        (errno.EACCES, "give the user tesserad runs as access"),
        (errno.ENOENT, "name the data directory"),
        (errno.EINVAL, "no sign of damage to the file"),
    ],
)
def test_a_system_error_says_what_of_the_system_to_fix(code: int, advice: str) -> None:
    said = unreadable_store(STORE, lmdb_error(lmdb.Error, os.strerror(code), code))
    assert isinstance(said, FailedPrecondition), said
    assert advice in str(said)
    assert f"LMDB says: {os.strerror(code)})" in str(said)

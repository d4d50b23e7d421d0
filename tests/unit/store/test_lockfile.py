from __future__ import annotations

import os
from pathlib import Path

import pytest

from tesserad.errors import FailedPrecondition
from tesserad.store import DataDirLock
from tesserad.store.lockfile import LOCK_NAME


def test_second_lock_fails_naming_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(FailedPrecondition, match=rf"in use by another tesserad \(pid {os.getpid()}\)"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()
    again.release()


def test_a_tesserad_from_before_the_token_refused_by_the_lock_reads_the_pid_alone(tmp_path: Path) -> None:
    held = DataDirLock(tmp_path)
    held.acquire()
    try:
        held.keep_store_token("0123456789abcdef")
        # How such a tesserad names the holder in its refusal: the first 32 bytes, stripped.
        with (tmp_path / LOCK_NAME).open("rb") as file:
            assert file.read(32).decode().strip() == str(os.getpid())
        assert held.path.read_text().splitlines()[1] == "store 0123456789abcdef"
    finally:
        held.release()
    again = DataDirLock(tmp_path)
    again.acquire()
    try:
        assert again.store_token == "0123456789abcdef"
    finally:
        again.release()

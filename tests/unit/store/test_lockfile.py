from __future__ import annotations

import os
from pathlib import Path

import pytest

from tesserad.errors import FailedPrecondition
from tesserad.store import DataDirLock


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

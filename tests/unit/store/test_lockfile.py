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


def test_a_readers_shared_lock_writes_nothing_and_a_daemon_it_keeps_out_is_told_so(tmp_path: Path) -> None:
    daemon = DataDirLock(tmp_path)
    daemon.acquire()
    daemon.keep_store_token("0123456789abcdef")
    daemon.release()
    lock_file = tmp_path / LOCK_NAME
    before = (lock_file.read_bytes(), lock_file.stat().st_mtime_ns)
    reader = DataDirLock(tmp_path)
    assert reader.acquire_to_read()
    try:
        assert (lock_file.read_bytes(), lock_file.stat().st_mtime_ns) == before
        # Not the pid in the file, which is the last daemon's.
        with pytest.raises(
            FailedPrecondition,
            match=r"is held shared by another process \(a `tesserad verify` reading it\?\)",
        ):
            DataDirLock(tmp_path).acquire()
        other = DataDirLock(tmp_path)
        assert other.acquire_to_read()
        other.release()
    finally:
        reader.release()


def test_a_reader_makes_no_lock_file_where_there_is_none(tmp_path: Path) -> None:
    assert not DataDirLock(tmp_path).acquire_to_read()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_holder_that_never_let_go_is_reported_by_the_next_and_one_that_did_is_not(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    first.keep_store_token("0123456789abcdef")
    assert first.unclean_stop is None  # a new file
    first.release()
    second = DataDirLock(tmp_path)
    second.acquire()
    assert second.unclean_stop is None
    assert second.store_token == "0123456789abcdef"
    # As a SIGKILL ends it: the kernel drops the flock, and the file still names the holder.
    assert second._fd is not None
    os.close(second._fd)
    second._fd = None
    third = DataDirLock(tmp_path)
    third.acquire()
    try:
        assert third.unclean_stop == str(os.getpid())
        assert third.store_token == "0123456789abcdef"
    finally:
        third.release()


def test_a_release_cut_short_keeps_the_store_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kill during release (a stop timeout's SIGKILL) must not leave the file without its token:
    # release writes the holder line in place, never truncating first.
    first = DataDirLock(tmp_path)
    first.acquire()
    first.keep_store_token("0123456789abcdef")

    def cut_short(fd: int, data: bytes, offset: int) -> int:
        raise OSError("killed here")

    monkeypatch.setattr(os, "pwrite", cut_short)
    first.release()
    monkeypatch.undo()
    second = DataDirLock(tmp_path)
    second.acquire()
    try:
        assert second.store_token == "0123456789abcdef"
        assert second.unclean_stop == str(os.getpid())
    finally:
        second.release()

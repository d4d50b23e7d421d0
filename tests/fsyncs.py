"""The paths a test's code fsyncs, for tests that a file is on the disk before it takes its name."""

from __future__ import annotations

import os

import pytest


def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each path `os.fsync` is called on from now, in order (as /proc names it: resolved); the
    real fsync still runs."""
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced

"""systemd notifications never block the daemon: a STATUS= line sent while systemd reads none is
dropped; READY=1 and STOPPING=1, which systemd acts on, reach it once it reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tesserad.systemd import EXTEND_EVERY_S, EXTEND_S, StartProgress, notify


def test_a_notification_to_a_full_queue_is_dropped_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # sendall waited for room, on the event loop, as long as systemd read nothing.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        path = tmp_path / "notify"
        unread.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        sender = threading.Thread(
            target=lambda: [notify(f"STATUS=line {n}") for n in range(2000)], daemon=True
        )
        sender.start()
        sender.join(30)
        assert not sender.is_alive(), "notify waited for systemd to read"
        assert unread.recv(4096) == b"STATUS=line 0"
    assert any("cannot tell systemd STATUS=line" in record.getMessage() for record in caplog.records)


def test_ready_and_stopping_sent_to_a_full_queue_reach_systemd_once_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # They were dropped like STATUS= lines: systemd, never told READY=1, killed the daemon.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as slow:
        path = tmp_path / "notify"
        slow.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        sent = 0
        while not any("cannot tell systemd STATUS=" in record.getMessage() for record in caplog.records):
            notify(f"STATUS=line {sent}")
            sent += 1
            assert sent < 100_000, "the queue never filled"
        notify("READY=1")
        notify("STOPPING=1")
        slow.settimeout(30)
        got = {slow.recv(4096) for _ in range(sent + 1)}
        for thread in threading.enumerate():
            if thread.name == "sd-notify":
                thread.join(30)
    assert {b"READY=1", b"STOPPING=1"} <= got


def test_start_progress_extends_the_timeout_at_most_once_a_period_until_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        path = tmp_path / "notify"
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        now = [100.0]
        progress = StartProgress(clock=lambda: now[0])
        for moment in (100.0, 100.0 + EXTEND_EVERY_S / 2, 100.0 + EXTEND_EVERY_S, 200.0):
            now[0] = moment
            progress.progressed()
        progress.finished()
        now[0] = 1000.0
        progress.progressed()
        told = []
        while True:
            try:
                told.append(systemd.recv(4096, socket.MSG_DONTWAIT).decode())
            except BlockingIOError:
                break
    assert told == [f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1_000_000)}"] * 3


# In a process of its own: a lowered descriptor limit in the test worker would also refuse what
# any other thread of it opened meanwhile.
OUT_OF_DESCRIPTORS = """
import logging, os, resource, sys
from tesserad.systemd import notify
logging.basicConfig(stream=sys.stdout, format="%(message)s")
lowest_free = os.open(os.devnull, os.O_RDONLY)
os.close(lowest_free)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
notify("READY=1")
print("returned")
"""


def test_a_socket_refused_for_want_of_descriptors_is_logged_not_raised(tmp_path: Path) -> None:
    # socket() sat outside the try: EMFILE escaped through StartProgress and aborted the start.
    ended = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ended.returncode == 0, ended.stderr
    assert "cannot tell systemd READY=1" in ended.stdout
    assert ended.stdout.rstrip().endswith("returned")

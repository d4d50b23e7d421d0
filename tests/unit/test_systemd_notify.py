"""systemd notifications never block the daemon: one sent while systemd reads none is dropped."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tesserad.systemd import notify


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

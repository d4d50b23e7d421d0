"""A replica's STATUS= line for systemd says where it follows its primary: a line held back
because one was told less than STATUS_REPEAT_S before is told once that is up."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings


def next_status(notify: socket.socket, starting: str) -> str:
    """The next STATUS= line systemd would hear that starts with `starting` (the primary, in this
    process too, tells it its own)."""
    while True:
        for field in notify.recv(4096).decode().split("\n"):
            if field.startswith(f"STATUS={starting}"):
                return field


def test_a_status_held_back_is_told_once_its_time_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A change applied less than a second after the status was told was never told: systemctl
    # status said an older change until another line came (a heartbeat, 20 s later by default).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        path = tmp_path / "notify"
        notify.bind(str(path))
        notify.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        primary = InProcessDaemon(daemon_settings(tmp_path / "primary")).start()
        replica = None
        try:
            address = primary.target
            # No heartbeat (nor the line it says) before the test's wait ends.
            followed = {"replica.primary": address, "replica.keepalive_s": 600}
            replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **followed)).start()
            assert next_status(notify, "following") == f"STATUS=following primary {address} at change 0"
            with grpc.insecure_channel(address) as channel:
                registry_pb2_grpc.RegistryStub(channel).CreateModel(
                    registry_pb2.CreateModelRequest(name="told"), timeout=10
                )
            assert next_status(notify, "following") == f"STATUS=following primary {address} at change 1"
        finally:
            if replica is not None:
                replica.stop()
            primary.stop()

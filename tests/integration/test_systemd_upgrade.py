"""A start-up upgrade of the store tells systemd EXTEND_TIMEOUT_USEC as it commits its batches, so
an upgrade that runs past the unit's TimeoutStartSec is not killed while it moves; a start with
nothing to upgrade tells none."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tessera.v1 import registry_pb2_grpc
from tesserad.registry.backfill import MEMBERS_INDEXED
from tesserad.systemd import EXTEND_S
from tests.integration.older_store import daemon_on, written_while_stopped
from tests.integration.registry.conftest import upload_versions


def told(notify: socket.socket) -> list[str]:
    """Every line systemd was told since the last call."""
    lines: list[str] = []
    while True:
        try:
            lines += notify.recv(4096, socket.MSG_DONTWAIT).decode().split("\n")
        except BlockingIOError:
            return lines


def test_a_start_up_upgrade_extends_systemds_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    with daemon_on(data_dir) as first:
        upload_versions(registry_pb2_grpc.RegistryStub(first.channel()), "m", 1)
    # As an older tesserad leaves the store: the pass over the versions runs again at the next start.
    written_while_stopped(data_dir, lambda txn: txn.delete("meta", MEMBERS_INDEXED))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        path = tmp_path / "notify"
        notify.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with daemon_on(data_dir):
            upgraded = told(notify)
        with daemon_on(data_dir):
            again = told(notify)
    extend = f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1_000_000)}"
    assert extend in upgraded and "READY=1" in upgraded
    assert upgraded.index(extend) < upgraded.index("READY=1")
    assert again == ["READY=1"]

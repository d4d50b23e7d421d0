"""The data directory a daemon makes is its user's alone (0700, as PostgreSQL's), whatever the
umask: its files are the models and datasets, which backups also keep from other users. One that
was there keeps its mode (the operator's choice, a group's under systemd or Kubernetes)."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import InProcessDaemon, daemon_settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_data_directory_the_daemon_makes_is_its_users_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "made" / "var"
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    daemon.stop()
    assert _mode(data_dir) == 0o700
    # The parents it made are made as mkdir -p makes them.
    assert _mode(tmp_path / "made") != 0o700


def test_a_data_directory_that_was_there_keeps_its_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    daemon.stop()
    assert _mode(data_dir) == 0o755

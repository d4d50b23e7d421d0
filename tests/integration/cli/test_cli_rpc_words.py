"""The daemon's messages name RPCs ("create it with CreateModel"); the CLI shows the command a
CLI user runs instead, while the SDK keeps the API's words."""

from __future__ import annotations

import pytest

import tessera
from tessera.cli import EXIT_DAEMON

SPEC = """\
task = "classification"
[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
[data]
dataset = "absent"
"""


def test_daemon_messages_name_cli_commands_in_the_cli(tessera_cli, tmp_path):
    missing_model = tessera_cli("models", "show", "absent")
    assert missing_model.code == EXIT_DAEMON
    assert "create it with `tessera models push MODEL FILE`" in missing_model.err
    assert "CreateModel" not in missing_model.err
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    missing_dataset = tessera_cli("train", str(spec))
    assert missing_dataset.code == EXIT_DAEMON
    assert "upload it with `tessera datasets push NAME FILE`" in missing_dataset.err
    assert "UploadDataset" not in missing_dataset.err


def test_the_sdk_keeps_the_api_words(client):
    with pytest.raises(tessera.NotFound, match="create it with CreateModel"):
        client.models.get("absent")

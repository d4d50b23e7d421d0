"""The daemon's messages name RPCs ("create it with CreateModel"); the CLI shows the command a
CLI user runs instead, while the SDK keeps the API's words."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.cli import EXIT_DAEMON
from tests.integration.sdk.affine import affine_onnx

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


def test_a_missing_version_names_the_newest_and_the_command_that_lists_them(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "a.onnx"))
    client.models.push("affine", affine_onnx(tmp_path / "b.onnx", scale=3.0))
    for words in (("models", "show", "affine", "--version", "7"), ("models", "alias", "affine", "prod", "7")):
        missing = tessera_cli(*words)
        assert missing.code == EXIT_DAEMON
        assert (
            "model 'affine' has no version 7 (the newest is 2; `tessera models versions MODEL` lists them)"
            in missing.err
        )
    client.datasets.push("frames", x=np.zeros((2, 3), np.float32))
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    for words in (("datasets", "rm", "frames:7"), ("datasets", "show", "frames:7")):
        missing = tessera_cli(*words)
        assert missing.code == EXIT_DAEMON
        assert (
            "dataset 'frames' has no version 7 (the newest is 2; `tessera datasets versions NAME` lists them)"
            in missing.err
        )
    listed = tessera_cli("--json", "datasets", "versions", "frames").json()
    assert [v["version"] for v in listed] == [2, 1]


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (("runs", "show", "run-absent"), "run 'run-absent' does not exist; `tessera runs ls` lists them"),
        (("jobs", "watch", "job-absent"), "job 'job-absent' does not exist; `tessera jobs ls` lists them"),
        (
            ("sweeps", "show", "sweep-absent"),
            "sweep 'sweep-absent' does not exist; `tessera sweeps ls` lists them",
        ),
        (
            ("runs", "ls", "--experiment", "absent"),
            "experiment 'absent' does not exist; `tessera experiments ls` lists them",
        ),
    ],
)
def test_an_id_or_name_not_found_says_where_they_are_listed(tessera_cli, words, said):
    """As a missing model says how to make one: an id mistyped or copied from another daemon
    was only "does not exist"."""
    missing = tessera_cli(*words)
    assert missing.code == EXIT_DAEMON
    assert said in missing.err, missing.err


def test_the_sdk_says_the_fix_as_its_call_and_keeps_the_api_words_apart(client):
    with pytest.raises(tessera.NotFound) as missing:
        client.models.get("absent")
    assert missing.value.message.endswith("create it with `client.models.push(name, path)`")
    assert missing.value.daemon_message.endswith("create it with CreateModel")


@pytest.mark.parametrize("group", ["models", "datasets", "experiments"])
def test_a_prefix_no_name_can_start_with_names_the_flag_typed(tessera_cli, group):
    """The daemon names the request field (name_prefix); the user typed --prefix."""
    refused = tessera_cli(group, "ls", "--prefix", "A!")
    assert refused.code == EXIT_DAEMON
    assert "INVALID_ARGUMENT: --prefix 'A!' can start no name, so it would match nothing" in refused.err
    assert "name_prefix" not in refused.err


def test_the_sdk_names_the_argument_of_a_refused_prefix_and_keeps_the_request_field_apart(client):
    with pytest.raises(tessera.InvalidArgument) as refused:
        list(client.models.list(prefix="A!"))
    assert refused.value.message.startswith("`prefix=` 'A!' can start no name")
    assert refused.value.daemon_message.startswith("name_prefix 'A!' can start no name")


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (
            ("models", "show", "force"),
            "model 'force' does not exist; create it with `tessera models push MODEL FILE`",
        ),
        (
            ("datasets", "show", "allow_nonfinite"),
            "dataset 'allow_nonfinite' does not exist; upload it with `tessera datasets push NAME FILE`",
        ),
        (
            ("runs", "show", "ListVersions lists them"),
            "run 'ListVersions lists them' does not exist; `tessera runs ls` lists them",
        ),
        (
            ("runs", "ls", "--experiment", "name_prefix"),
            "experiment 'name_prefix' does not exist; `tessera experiments ls` lists them",
        ),
    ],
)
def test_a_name_the_message_quotes_stays_as_given_though_it_reads_as_an_rpc_or_a_field(
    tessera_cli, words, said
):
    """The CLI puts the daemon's fix in its own words, not the user's names: a model called force
    was shown as '--force', a run id holding an RPC's name as the command."""
    missing = tessera_cli(*words)
    assert missing.code == EXIT_DAEMON
    assert said in missing.err, missing.err

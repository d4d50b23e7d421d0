"""`tessera models rm`: a version or a whole model deleted from the CLI, each refusal naming the
commands that free what is in use."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx


@pytest.fixture
def affine(client, tmp_path):
    """Model affine: v1 (alias production), v2 (latest, deployed)."""
    client.models.push("affine", affine_onnx(tmp_path / "a.onnx"), set_alias="production")
    client.models.push("affine", affine_onnx(tmp_path / "b.onnx", scale=3.0))
    client.models.deploy("affine", {2: 100})


def test_a_version_in_use_is_refused_with_the_commands_that_free_it(tessera_cli, affine):
    aliased = tessera_cli("models", "rm", "affine", "1")
    assert aliased.code == EXIT_DAEMON
    assert "version 1 of model 'affine' is in use by alias 'production'" in aliased.err
    assert "`tessera models alias MODEL ALIAS VERSION`" in aliased.err
    assert "`tessera models unalias MODEL ALIAS`" in aliased.err
    deployed = tessera_cli("models", "rm", "affine", "2")
    assert deployed.code == EXIT_DAEMON
    assert (
        "deployment revision 1" in deployed.err and "`tessera models deploy MODEL ROUTE...`" in deployed.err
    )

    assert tessera_cli("models", "unalias", "affine", "production").code == 0
    removed = tessera_cli("models", "rm", "affine", "1")
    assert removed.code == 0 and removed.out.strip() == "deleted affine v1"
    assert [v["version"] for v in tessera_cli("--json", "models", "versions", "affine").json()] == [2]
    missing = tessera_cli("models", "rm", "affine", "1")
    assert missing.code == EXIT_DAEMON
    assert "has no version 1 (the newest is 2; `tessera models versions MODEL` lists them)" in missing.err


def test_a_model_in_use_goes_only_with_force(tessera_cli, affine):
    refused = tessera_cli("models", "rm", "affine")
    assert refused.code == EXIT_DAEMON
    assert "in use by alias 'production' and a deployment; pass --force to delete them" in refused.err
    removed = tessera_cli("--json", "models", "rm", "affine", "--force")
    assert removed.code == 0
    # A whole model has no version number: the key is left out, not 0 (no version has number 0).
    assert removed.json() == {"model": "affine", "deleted_versions": 2}
    assert tessera_cli("--json", "models", "ls").json() == []


def test_force_is_for_a_model_and_versions_count_from_1(tessera_cli, affine, capsys):
    forced = tessera_cli("models", "rm", "affine", "2", "--force")
    assert forced.code == EXIT_USAGE and "--force deletes a whole model" in forced.err
    with pytest.raises(SystemExit) as usage:
        tessera_cli("models", "rm", "affine", "0")
    assert (
        usage.value.code == EXIT_USAGE and "a version is a number from 1, got '0'" in capsys.readouterr().err
    )
    assert [v["version"] for v in tessera_cli("--json", "models", "versions", "affine").json()] == [2, 1]

"""`--alias` means one thing on every command, the version an alias points at; `--set-alias`
moves an alias onto the version a command makes (export onnx, models push, models ensemble)."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_USAGE
from tests.integration.cli.test_cli_export import MLP, MLP_SIGNATURE
from tests.integration.registry.conftest import mlp_weights
from tests.integration.sdk.affine import affine_onnx


def refused(tessera_cli, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        tessera_cli(*args)
    assert exited.value.code == EXIT_USAGE
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture
def two_weights(client, tmp_path):
    """Model mlp with safetensors v1 (alias staging) and v2 (the latest)."""
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    weights.write_bytes(mlp_weights(seed=1))
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    client.models.set_alias("mlp", "staging", 1)


def test_export_alias_exports_the_version_the_alias_points_at_and_moves_nothing(
    tessera_cli, client, two_weights
):
    exported = tessera_cli("--json", "export", "onnx", "mlp", "--alias", "staging")
    assert exported.code == 0, exported.err
    made = exported.json()
    assert made["version"]["lineage"]["parent_version"] == 1, made
    assert not made.get("alias_moved", {}).get("alias"), made
    assert client.models.version("mlp", "staging").version == 1
    # --alias once moved the alias onto the export: a script written then is told it did not.
    said = " ".join(exported.err.split())
    assert "exported mlp v3 from staging's v1; staging was not moved" in said, said
    assert "add --set-alias staging to move it" in said, said


def test_export_version_and_alias_refused_naming_set_alias(tessera_cli, capsys, two_weights):
    said = refused(tessera_cli, capsys, "export", "onnx", "mlp", "--version", "1", "--alias", "production")
    assert "not allowed with argument --version" in said, said
    assert "--set-alias NAME moves an alias onto the export" in said, said


def test_export_set_alias_moves_the_alias_onto_the_export(tessera_cli, client, two_weights):
    exported = tessera_cli("export", "onnx", "mlp", "--alias", "staging", "--set-alias", "staging")
    assert exported.code == 0, exported.err
    assert "exported mlp v3" in exported.out and "alias staging: v1 -> v3" in exported.out
    assert "was not moved" not in exported.err, exported.err
    assert client.models.version("mlp", 3).lineage.parent_version == 1


def test_push_and_ensemble_refuse_alias_naming_set_alias(tessera_cli, capsys, client, tmp_path):
    model = affine_onnx(tmp_path / "a.onnx")
    pushed = refused(tessera_cli, capsys, "models", "push", "a", str(model), "--alias", "prod")
    assert "--set-alias NAME moves an alias onto the new version now" in pushed, pushed
    assert not list(client.models.list())
    client.models.push("a", model)
    ensembled = refused(tessera_cli, capsys, "models", "ensemble", "e", "a:1", "--alias", "prod")
    assert "--set-alias NAME moves an alias onto the new version now" in ensembled, ensembled
    moved = tessera_cli("models", "push", "a", str(model), "--set-alias", "prod")
    assert moved.code == 0 and "alias prod: (new) -> v2" in moved.out, moved.err
    ensemble = tessera_cli("models", "ensemble", "e", "a:1", "a:2", "--set-alias", "prod")
    assert ensemble.code == 0, ensemble.err
    assert client.models.version("e", "prod").version == 1


@pytest.mark.parametrize("command", [("models", "push"), ("models", "ensemble"), ("export", "onnx")])
def test_help_says_set_alias_moves_and_alias_selects(tessera_cli, capsys, command):
    with pytest.raises(SystemExit):
        tessera_cli(*command, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--set-alias NAME" in text and "move this alias onto the new version" in text, text
    if command[0] == "export":
        assert "the version this alias points at" in text, text
    else:
        assert "--alias" not in text, text

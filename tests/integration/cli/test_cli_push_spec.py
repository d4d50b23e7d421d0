"""`tessera models push W.safetensors --spec S.toml`: the daemon takes the signature from the
architecture, and refuses weights the architecture cannot load."""

from __future__ import annotations

from tessera.cli import EXIT_DAEMON
from tests.integration.registry.conftest import mlp_weights

SPEC = """\
[architecture]
input_shape = [4]
output_size = 2

[architecture.mlp]
hidden_sizes = [8]
"""


def test_push_with_a_spec_registers_the_weights_with_the_architectures_signature(
    tessera_cli, client, tmp_path
):
    spec = tmp_path / "model.toml"
    spec.write_text(SPEC)
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    result = tessera_cli("models", "push", "mlp", str(weights), "--spec", str(spec))
    assert result.code == 0, result.err
    assert "registered mlp v1" in result.out
    version = client.models.version("mlp", 1)
    assert [(t.name, list(t.shape)) for t in version.signature.inputs] == [("input", [-1, 4])]
    assert [(t.name, list(t.shape)) for t in version.signature.outputs] == [("output", [-1, 2])]


def test_push_of_weights_the_spec_cannot_load_names_the_tensor_and_both_shapes(tessera_cli, client, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text(SPEC)
    weights = tmp_path / "wide.safetensors"
    weights.write_bytes(mlp_weights(hidden=16))
    result = tessera_cli("models", "push", "mlp", str(weights), "--spec", str(spec))
    assert result.code == EXIT_DAEMON and result.err.startswith("tessera: INVALID_ARGUMENT: "), result.err
    assert "tensor '1.weight' has shape [16, 4], the architecture needs [8, 4]" in result.err, result.err
    assert [m.name for m in client.models.list()] == []


def test_push_with_an_alias_prints_where_the_alias_moved(tessera_cli, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text(SPEC)
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    first = tessera_cli("models", "push", "mlp", str(weights), "--spec", str(spec), "--set-alias", "prod")
    assert first.code == 0, first.err
    assert "alias prod: (new) -> v1" in first.out
    second = tessera_cli("models", "push", "mlp", str(weights), "--spec", str(spec), "--set-alias", "prod")
    assert "registered mlp v2" in second.out and "alias prod: v1 -> v2" in second.out
    quiet = tessera_cli("models", "push", "mlp", str(weights), "--spec", str(spec))
    assert quiet.code == 0 and "alias" not in quiet.out
    moved = tessera_cli(
        "--json", "models", "push", "mlp", str(weights), "--spec", str(spec), "--set-alias", "prod"
    ).json()
    assert (moved["alias_moved"]["from_version"], moved["alias_moved"]["to_version"]) == (2, 4)

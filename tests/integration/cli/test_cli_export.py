"""`tessera export onnx --set-alias` says where the alias moved, and when the export already existed."""

from __future__ import annotations

from tests.integration.registry.conftest import mlp_weights

MLP = {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}}
MLP_SIGNATURE = {
    "inputs": [{"name": "input", "dtype": "DATA_TYPE_FLOAT32", "shape": [-1, 4]}],
    "outputs": [{"name": "output", "dtype": "DATA_TYPE_FLOAT32", "shape": [-1, 2]}],
}


def test_export_with_set_alias_prints_where_the_alias_moved(tessera_cli, client, tmp_path):
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    client.models.set_alias("mlp", "staging", 1)
    exported = tessera_cli("export", "onnx", "mlp", "--version", "1", "--set-alias", "staging")
    assert exported.code == 0, exported.err
    assert "exported mlp v2" in exported.out and "alias staging: v1 -> v2" in exported.out
    again = tessera_cli("export", "onnx", "mlp", "--version", "1", "--set-alias", "canary")
    assert "already exported as mlp v2" in again.out and "alias canary: (new) -> v2" in again.out
    quiet = tessera_cli("export", "onnx", "mlp", "--version", "1")
    assert quiet.code == 0 and "alias" not in quiet.out
    moved = tessera_cli("--json", "export", "onnx", "mlp", "--version", "1", "--set-alias", "staging").json()
    assert moved["reused"] and moved["alias_moved"]["alias"] == "staging"
    assert (moved["alias_moved"]["from_version"], moved["alias_moved"]["to_version"]) == (2, 2)


def test_export_again_with_another_description_says_it_was_not_applied(tessera_cli, client, tmp_path):
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    client.models.push("mlp", weights, architecture=MLP, signature=MLP_SIGNATURE)
    first = tessera_cli("export", "onnx", "mlp", "--version", "1", "--description", "for the edge box")
    assert first.code == 0 and "not applied" not in first.out, first.err
    assert client.models.version("mlp", 2).description == "for the edge box"
    again = tessera_cli("export", "onnx", "mlp", "--version", "1", "--description", "for the cloud")
    assert again.code == 0 and "already exported as mlp v2" in again.out
    assert "description not applied: v2 keeps its own ('for the edge box')" in again.out
    same = tessera_cli("export", "onnx", "mlp", "--version", "1", "--description", "for the edge box")
    assert "already exported" in same.out and "not applied" not in same.out
    assert client.models.version("mlp", 2).description == "for the edge box"

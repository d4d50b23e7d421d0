"""`tessera models show` names a deleted lineage parent as deleted, with what it was."""

from __future__ import annotations

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.registry.conftest import mlp_weights, safetensors_header, upload


def parent_cell(out: str) -> str:
    """The value in the "parent" row of a `models show` table."""
    [line] = [line for line in out.splitlines() if " parent " in line]
    return line.split("│")[2].strip()


def test_show_says_the_parent_was_deleted(tessera_cli, daemon):
    stub = registry_pb2_grpc.RegistryStub(daemon.channel())
    base = upload(stub, safetensors_header("base", mlp_weights()), mlp_weights())
    child = mlp_weights(seed=1)
    lineage = registry_pb2.Lineage(parent_model="base", parent_version=1)
    upload(stub, safetensors_header("tuned", child, lineage=lineage), child)
    assert parent_cell(tessera_cli("models", "show", "tuned").out) == "base v1"

    stub.DeleteModel(registry_pb2.DeleteModelRequest(name="base", force=True))
    upload(stub, safetensors_header("base", mlp_weights(seed=2)), mlp_weights(seed=2))
    shown = tessera_cli("models", "show", "tuned")
    assert shown.code == 0
    shown_parent = parent_cell(shown.out)
    assert shown_parent.startswith("base v1 (deleted 20") and shown_parent.endswith(
        f", sha256 {base.sha256})"
    )
    assert tessera_cli("--json", "models", "show", "tuned").json()["lineage"]["parent_deleted"]["sha256"] == (
        base.sha256
    )

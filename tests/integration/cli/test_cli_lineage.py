"""`tessera models show` names a deleted lineage parent as deleted, with what it was."""

from __future__ import annotations

import io
import re

from rich.console import Console

from tessera.cli import EXIT_DAEMON, main
from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.registry.conftest import mlp_weights, safetensors_header, upload
from tests.integration.sdk.affine import affine_onnx
from tests.integration.serving.serving_models import delete_model_numbered_as_before


def cell(out: str, field: str) -> str:
    """The value in the `field` row of a `models show` table."""
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    [value] = [cells[2].strip() for cells in rows if cells[1].strip() == field]
    return value


def test_show_says_the_parent_was_deleted(tessera_cli, daemon):
    stub = registry_pb2_grpc.RegistryStub(daemon.channel())
    base = upload(stub, safetensors_header("base", mlp_weights()), mlp_weights())
    child = mlp_weights(seed=1)
    lineage = registry_pb2.Lineage(parent_model="base", parent_version=1)
    upload(stub, safetensors_header("tuned", child, lineage=lineage), child)
    shown = tessera_cli("models", "show", "tuned").out
    assert cell(shown, "parent") == "base v1" and "parent sha256" not in shown

    # Deleted as a tesserad from before numbers went on across a delete did it: the new base's
    # v1 is another version, which the parent must not be taken for.
    delete_model_numbered_as_before(daemon, "base", force=True)
    assert upload(stub, safetensors_header("base", mlp_weights(seed=2)), mlp_weights(seed=2)).version == 1
    shown = tessera_cli("models", "show", "tuned")
    assert shown.code == 0
    assert re.fullmatch(r"base v1 \(deleted 20[0-9-]+ [0-9:]+\)", cell(shown.out, "parent")), shown.out
    assert cell(shown.out, "parent sha256") == base.sha256
    assert tessera_cli("--json", "models", "show", "tuned").json()["lineage"]["parent_deleted"]["sha256"] == (
        base.sha256
    )

    # At 80 columns the parent's sha256, a deleted parent's only sure name, was folded inside
    # its row; it goes whole on a line below the table where the table cannot hold it, as the
    # version's own does.
    for width in (60, 80):
        screen = io.StringIO()
        console = Console(file=screen, width=width, force_terminal=False, color_system=None)
        assert main(["--target", daemon.target, "models", "show", "tuned"], console=console) == 0
        text = screen.getvalue()
        assert f"parent sha256: {base.sha256}" in text.splitlines(), text
        assert re.search(r"│ parent +│ base v1 \(deleted", text), text
        if width >= 80:
            assert all(len(line) <= width for line in text.splitlines()), text


def test_show_and_rm_name_the_versions_derived_from_a_version(tessera_cli, daemon):
    stub = registry_pb2_grpc.RegistryStub(daemon.channel())
    upload(stub, safetensors_header("base", mlp_weights()), mlp_weights())
    lineage = registry_pb2.Lineage(parent_model="base", parent_version=1)
    for seed, model in ((1, "tuned"), (2, "base")):
        child = mlp_weights(seed=seed)
        upload(stub, safetensors_header(model, child, lineage=lineage), child)
    shown = tessera_cli("models", "show", "base", "--version", "1")
    assert shown.code == 0, shown.err
    assert cell(shown.out, "derived") == "base v2, tuned v1"
    assert "derived" not in tessera_cli("models", "show", "tuned").out

    removed = tessera_cli("models", "rm", "base", "1")
    assert removed.code == 0, removed.err
    assert removed.out == (
        "deleted base v1\n"
        "  derived from it: base v2, tuned v1; their lineage keeps base v1 as parent, marked deleted "
        "(`tessera models show` names it)\n"
    )
    assert cell(tessera_cli("models", "show", "tuned").out, "parent").startswith("base v1 (deleted")
    upload(stub, safetensors_header("base", mlp_weights(seed=3)), mlp_weights(seed=3))
    quiet = tessera_cli("--json", "models", "rm", "base", "3")
    assert quiet.json() == {"model": "base", "version": 3, "deleted_versions": 1, "derived": []}


def test_push_records_the_run_a_file_came_from_and_show_names_it(tessera_cli, client, tmp_path):
    artifact = str(affine_onnx(tmp_path / "mlp1.onnx"))
    run = client.training.create_run("cli-pushed", create_experiment=True)
    assert tessera_cli("models", "push", "from-run", artifact, "--run", run.id).code == 0
    assert cell(tessera_cli("models", "show", "from-run").out, "run") == f"{run.id} (experiment cli-pushed)"
    assert tessera_cli("--json", "models", "show", "from-run").json()["lineage"]["run_id"] == run.id
    missing = tessera_cli("models", "push", "from-run", artifact, "--run", "run-absent")
    assert missing.code == EXIT_DAEMON and "run 'run-absent' does not exist" in missing.err
    assert [v.version for v in client.models.versions("from-run")] == [1]
    client.training.log_artifact(run.id, artifact, "model")
    assert tessera_cli("models", "push", "from-run", f"runs:/{run.id}/model/mlp1.onnx").code == 0
    assert client.models.version("from-run", 2).lineage.run_id == run.id

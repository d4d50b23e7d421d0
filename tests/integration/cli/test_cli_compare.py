"""`tessera models compare` shows what tells two versions' artifacts apart, beside lineage, size
and signature: format, description, architecture and sha256 (equal: the same bytes)."""

from __future__ import annotations

from tests.integration.cli.test_cli import SPEC as TRAIN_SPEC
from tests.integration.cli.test_cli_push_spec import SPEC
from tests.integration.registry.conftest import mlp_weights
from tests.integration.sdk.affine import affine_onnx


def compared_cells(out: str, field: str) -> list[str]:
    """The a, b and b - a cells of the `field` row of a `models compare` table."""
    rows = [[c.strip() for c in line.split("│")] for line in out.splitlines() if line.startswith("│")]
    [cells] = [cells[2:5] for cells in rows if cells[1] == field]
    return cells


def test_compare_shows_format_description_architecture_and_sha256(tessera_cli, client, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text(SPEC)
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(mlp_weights())
    assert (
        tessera_cli("models", "push", "m", str(weights), "--spec", str(spec), "--description", "torch").code
        == 0
    )
    onnx = affine_onnx(tmp_path / "affine.onnx", scale=1.0)
    onnx_scaled = affine_onnx(tmp_path / "scaled.onnx", scale=3.0)
    assert tessera_cli("models", "push", "m", str(onnx), "--description", "exported").code == 0
    assert tessera_cli("models", "push", "m", str(onnx)).code == 0
    assert tessera_cli("models", "push", "m", str(onnx_scaled)).code == 0
    v1, v2, v4 = (client.models.version("m", n) for n in (1, 2, 4))

    shown = tessera_cli("models", "compare", "m", "1", "2")
    assert shown.code == 0, shown.err
    assert compared_cells(shown.out, "format") == ["safetensors", "onnx", ""]
    assert compared_cells(shown.out, "description") == ["torch", "exported", ""]
    assert compared_cells(shown.out, "architecture") == [
        "mlp input_shape [4], output_size 2, hidden_sizes [8], activation relu, norm none",
        "-",
        "",
    ]
    assert compared_cells(shown.out, "sha256") == [v1.sha256[:12], v2.sha256[:12], "differ"]

    same = tessera_cli("models", "compare", "m", "2", "3").out
    assert compared_cells(same, "sha256") == [v2.sha256[:12], v2.sha256[:12], "same bytes"]
    assert compared_cells(same, "description") == ["exported", "-", ""]

    document = tessera_cli("--json", "models", "compare", "m", "1", "4").json()
    assert document["artifact_differences"] == {
        "format": {"a": "safetensors", "b": "onnx"},
        "description": {"a": "torch", "b": ""},
        "architecture": {"a": document["a"]["architecture"], "b": None},
        "sha256": {"a": v1.sha256, "b": v4.sha256},
    }
    assert tessera_cli("--json", "models", "compare", "m", "2", "3").json()["artifact_differences"] == {
        "description": {"a": "exported", "b": ""}
    }


def test_compare_of_trained_versions_leaves_the_job_spec_to_json(tessera_cli, table_dataset, tmp_path):
    spec = tmp_path / "spec.toml"
    for epochs in (1, 2):
        spec.write_text(TRAIN_SPEC.format(dataset="table").replace("epochs = 2", f"epochs = {epochs}"))
        assert tessera_cli("train", str(spec), "--follow").code == 0

    shown = tessera_cli("models", "compare", "cli-mlp", "1", "2")
    assert shown.code == 0, shown.err
    assert compared_cells(shown.out, "param epochs")[:2] == ["1", "2"], shown.out
    assert "job_spec" not in shown.out and "TASK_CLASSIFICATION" not in shown.out, shown.out
    document = tessera_cli("--json", "models", "compare", "cli-mlp", "1", "2").json()
    assert "job_spec" in {item["key"] for item in document["lineage"]}, document["lineage"]


def test_compare_shows_the_job_spec_where_no_param_row_tells_the_specs_apart(
    tessera_cli, table_dataset, tmp_path
):
    # A run's name is in the spec but no param: the job_spec row, left out for the param rows
    # that show the spec's fields, was all that showed the specs differ.
    spec = tmp_path / "spec.toml"
    for name in ("first", "second"):
        spec.write_text(
            TRAIN_SPEC.format(dataset="table").replace(
                'experiment = "cli"', f'experiment = "cli"\nrun_name = "{name}"'
            )
        )
        assert tessera_cli("train", str(spec), "--follow").code == 0

    shown = tessera_cli("models", "compare", "cli-mlp", "1", "2")
    assert shown.code == 0, shown.err
    assert "param " not in shown.out, shown.out
    assert "job_spec" in shown.out and '"run_name":"first"' in shown.out, shown.out

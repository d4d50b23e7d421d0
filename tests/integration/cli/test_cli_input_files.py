"""`--input` files that are not numpy's: the one line names the file and says what is read,
never numpy's offer to unpickle it nor an unexpected error."""

from __future__ import annotations

import io

import numpy as np
import onnx
from onnx import TensorProto, helper

from tessera.cli import EXIT_DAEMON, EXIT_FAILED


def test_predict_input_that_is_not_npz_or_npy_names_the_file_and_the_formats(tessera_cli, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('experiment = "clips"\n')
    result = tessera_cli("predict", "any-model", "--input", str(spec))
    assert result.code == EXIT_FAILED and "pickle" not in result.err, result.err
    assert result.err == (
        f"tessera: {spec}: not a .npz or .npy file; write one with numpy.savez(FILE, input=x) "
        "(an array per input name) or numpy.save(FILE, x)\n"
    )
    explained = tessera_cli("explain", "any-model", "--input", str(spec))
    assert explained.code == EXIT_FAILED and f"tessera: {spec}: not a .npz or .npy file" in explained.err


def test_predict_input_damaged_or_holding_objects_says_so(tessera_cli, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, input=np.ones((2, 4), np.float32))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(buffer.getvalue()[:40])  # the zip's header, not its directory
    result = tessera_cli("predict", "any-model", "--input", str(cut))
    assert result.code == EXIT_FAILED and "unexpected" not in result.err, result.err
    assert result.err.startswith(f"tessera: {cut}: cannot be read as numpy arrays: "), result.err
    objects = tmp_path / "objects.npz"
    np.savez(objects, input=np.array([{"a": 1}], dtype=object))
    result = tessera_cli("predict", "any-model", "--input", str(objects))
    assert result.code == EXIT_FAILED
    assert result.err.startswith(f"tessera: {objects}: cannot be read as numpy arrays: "), result.err


def _identity_onnx(path, inputs: list[str]) -> str:
    """An ONNX model of float32 (batch, 4) inputs named `inputs`, whose output is their sum."""
    graph = helper.make_graph(
        [helper.make_node("Sum", inputs, ["output"])],
        "summed",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in inputs],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_predict_sends_a_lone_npy_file_to_the_models_sole_input_whatever_its_name(
    tessera_cli, client, tmp_path
):
    client.models.push("clipper", _identity_onnx(tmp_path / "one.onnx", ["clips"]))
    client.models.push("pair", _identity_onnx(tmp_path / "two.onnx", ["clips", "masks"]))
    one = tmp_path / "one.npy"
    np.save(one, np.ones((2, 4), np.float32))
    predicted = tessera_cli("--json", "predict", "clipper", "--input", str(one))
    assert predicted.code == 0, predicted.err
    assert predicted.json()["outputs"]["output"] == [[1.0] * 4] * 2
    # Sent under the input's name at once: the daemon counts no refused request.
    (stats,) = client.inference.stats("clipper")
    assert (stats.request_count, stats.error_count) == (1, 0), stats
    # Of two inputs, which one a file is for is the user's to say.
    refused = tessera_cli("predict", "pair", "--input", str(one))
    said = " ".join(refused.err.split())
    assert refused.code == EXIT_DAEMON and "input 'input' is not an input of model 'pair'" in said, said
    assert "a .npy file is sent to a model's sole input, and as 'input' to one of several" in said, said


def test_a_lone_npy_file_the_loaded_versions_misname_is_sent_again_to_the_aliased_version(
    tessera_cli, client, tmp_path
):
    client.models.push("moved", _identity_onnx(tmp_path / "a.onnx", ["a"]))
    client.models.push("moved", _identity_onnx(tmp_path / "b.onnx", ["b"]))
    client.models.set_alias("moved", "prod", 1)
    client.inference.load("moved", 2)  # the lookup finds input 'b'; prod routes to version 1's 'a'
    one = tmp_path / "one.npy"
    np.save(one, np.ones((2, 4), np.float32))
    predicted = tessera_cli("--json", "predict", "moved", "--alias", "prod", "--input", str(one))
    assert predicted.code == 0, predicted.err
    assert predicted.json()["outputs"]["output"] == [[1.0] * 4] * 2

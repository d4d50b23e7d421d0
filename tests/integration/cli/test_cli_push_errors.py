"""`tessera models push` of a file that is not what it claims: the daemon's reason, and no path
on the server in it; of a file whose format it cannot tell, the flags that tell it; of the bytes
of an earlier version, which versions have them."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tessera.cli.models import SAME_BYTES_SCAN, same_bytes
from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.registry.conftest import onnx_header, onnx_identity
from tests.integration.sdk.affine import affine_onnx


def test_a_garbage_onnx_push_says_why_and_names_no_server_path(tessera_cli, tmp_path, data_dir):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"garbage, not onnx" * 10)
    result = tessera_cli("models", "push", "m", str(model))
    assert result.code == EXIT_DAEMON and result.err.startswith("tessera: INVALID_ARGUMENT: "), result.err
    assert "not a valid ONNX model" in result.err
    assert str(data_dir) not in result.err and "blobs" not in result.err, result.err


def test_a_file_of_no_known_suffix_or_weights_without_a_spec_are_told_in_the_cli_s_words(
    tessera_cli, tmp_path
):
    model = affine_onnx(tmp_path / "affine.onnx")
    unnamed = tmp_path / "model.bin"
    unnamed.write_bytes(model.read_bytes())
    refused = tessera_cli("models", "push", "m", str(unnamed))
    assert (
        refused.code == EXIT_USAGE and "name the file .onnx or .safetensors, or pass --format" in refused.err
    )
    assert "format=" not in refused.err
    pushed = tessera_cli("models", "push", "m", str(unnamed), "--format", "onnx")
    assert pushed.code == 0 and "registered m v1" in pushed.out, pushed.err
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    refused = tessera_cli("models", "push", "m", str(weights))
    assert refused.code == EXIT_USAGE and "safetensors weights need --spec SPEC.toml" in refused.err
    assert "architecture=" not in refused.err


def test_a_torch_pickle_is_refused_saying_how_to_export_it(tessera_cli, tmp_path):
    # Renaming it would not help: the daemon never unpickles (loading a pickle runs its code).
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not read")
    refused = tessera_cli("models", "push", "m", str(checkpoint))
    assert refused.code == EXIT_USAGE
    assert (
        f"{checkpoint}: a torch pickle (.pt) is not loaded: unpickling runs the code it carries; "
        "export the model to ONNX in one file (torch.onnx.export(model, (example_input,), 'model.onnx', "
        "external_data=False)) or save its "
        "weights (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), pushed with "
        "--spec SPEC.toml naming the [architecture] that builds it)"
    ) in refused.err


def test_a_torchscript_archive_or_torch_export_program_is_told_apart_and_its_export_route_works(
    tessera_cli, client, tmp_path, monkeypatch
):
    import torch

    net = torch.nn.Linear(4, 5).eval()
    scripted = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(scripted))
    (tmp_path / "tiny_ts.torchscript").write_bytes(scripted.read_bytes())
    (tmp_path / "lite.ptl").write_bytes(b"not read")
    for name in ("tiny.pt", "tiny_ts.torchscript", "lite.ptl"):
        refused = tessera_cli("models", "push", "m", str(tmp_path / name))
        assert refused.code == EXIT_USAGE
        assert f"{tmp_path / name}: a TorchScript archive is not served" in refused.err, refused.err
        assert "torch pickle" not in refused.err and "cannot tell the format" not in refused.err
    with pytest.raises(
        ValueError, match=r"a TorchScript archive is not served.*architecture= naming what builds"
    ):
        client.models.push("m", scripted)
    program = tmp_path / "program.pt"
    # The entries torch.export.save writes (torch 2.13), as a zip: exporting a real program takes
    # over a second, and the push reads no more than the names.
    with zipfile.ZipFile(program, "w") as archive:
        for entry in ("archive_format", "models/model.json", "data/weights/weight_0", "byteorder"):
            archive.writestr(f"program/{entry}", b"")
    (tmp_path / "program.pt2").write_bytes(b"not read")
    for name in ("program.pt", "program.pt2"):
        refused = tessera_cli("models", "push", "m", str(tmp_path / name))
        assert refused.code == EXIT_USAGE
        assert f"{tmp_path / name}: a torch.export program is not served" in refused.err, refused.err
        assert "torch.export.load" in refused.err
    pickled = tmp_path / "weights.pt"
    torch.save(net.state_dict(), str(pickled))
    assert "a torch pickle (.pt) is not loaded" in tessera_cli("models", "push", "m", str(pickled)).err
    # The export the message gives, as it gives it, makes an ONNX model that serves any batch size.
    advice = tessera_cli("models", "push", "m", str(scripted)).err
    export = re.search(r"TorchScript exporter, (torch\.onnx\.export\(.*\)), and push model\.onnx", advice)
    assert export is not None, advice
    monkeypatch.chdir(tmp_path)
    eval(export.group(1), {"torch": torch, "example_input": torch.ones(1, 4)})
    pushed = tessera_cli("models", "push", "m", "model.onnx")
    assert pushed.code == 0 and "registered m v1" in pushed.out, pushed.err
    x = np.ones((3, 4), np.float32)
    (served,) = client.inference.predict("m", {"input": x}).outputs.values()
    np.testing.assert_allclose(served, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_push_of_the_bytes_of_an_earlier_version_says_so(tessera_cli, tmp_path):
    model = affine_onnx(tmp_path / "affine.onnx")
    assert tessera_cli("models", "push", "m", str(model)).code == 0
    again = tessera_cli("models", "push", "m", str(model))
    assert again.code == 0
    assert "registered m v2" in again.out
    assert "the same bytes as v1 (sha256" in again.out, again.out


def _versions_of_other_bytes(daemon, model: str, count: int) -> None:
    """`count` more versions of `model`, of bytes of their own (one batch)."""
    data = onnx_identity(3)
    item = registry_pb2.UploadVersionInlineRequest(header=onnx_header(model, data), artifact=data)
    stub = registry_pb2_grpc.RegistryStub(daemon.channel())
    stub.UploadVersionBatch(registry_pb2.UploadVersionBatchRequest(items=[item] * count), timeout=120)


def test_a_push_of_the_bytes_of_a_version_older_than_the_newest_200_names_it(tessera_cli, daemon, tmp_path):
    model = affine_onnx(tmp_path / "affine.onnx")
    assert tessera_cli("models", "push", "m", str(model)).code == 0
    _versions_of_other_bytes(daemon, "m", SAME_BYTES_SCAN)
    again = tessera_cli("models", "push", "m", str(model))
    assert again.code == 0
    assert f"registered m v{SAME_BYTES_SCAN + 2}" in again.out
    assert "the same bytes as v1 (sha256" in again.out, again.out


def test_a_push_to_a_tesserad_that_does_not_say_which_versions_hold_its_bytes_lists_them(client, tmp_path):
    model = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("m", model)
    pushed = client.models.push("m", model)
    # The answer as a tesserad from before same_bytes gives it.
    pushed.ClearField("same_bytes")
    assert same_bytes(client, pushed) == ([1], 0)

"""push of an ONNX model whose tensors torch.onnx.export wrote to model.onnx.data beside it: the
SDK inlines them and the daemon serves the one file; a model too large for one file is refused."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tessera
from tests.integration.sdk.affine import affine_onnx


def with_sidecar(path: Path, scale: float = 2.0) -> onnx.ModelProto:
    """The affine model at `path`, its tensors saved as torch writes them (raw bytes, which onnx
    moves) to model.onnx.data beside it; returns the model, each tensor's location set."""
    affine_onnx(path, scale=scale)
    model = onnx.load(str(path))
    raw = [numpy_helper.from_array(numpy_helper.to_array(t), t.name) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(raw)
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0
    )
    return model


def test_a_model_with_an_external_data_sidecar_is_pushed_as_one_file(
    client: tessera.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = tmp_path / "export"
    exported.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = exported / "model.onnx"
    with_sidecar(path, scale=3.0)
    assert (exported / "model.onnx.data").stat().st_size > 0
    version = client.models.push("sidecar", path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        client.inference.predict("sidecar", x, version=version.version)["output"], x * 3 + 1
    )
    assert sorted(os.listdir(exported)) == ["model.onnx", "model.onnx.data"]
    assert os.listdir(scratch) == []  # the inlined copy was temporary


@pytest.mark.parametrize("location", ["secret.bin", "../secret.bin", "sub/model.onnx.data"])
def test_a_tensor_whose_data_names_another_file_is_refused_before_it_is_read(
    client: tessera.Client, tmp_path: Path, location: str
) -> None:
    exported = tmp_path / "export"
    (exported / "sub").mkdir(parents=True)
    path = exported / "model.onnx"
    model = with_sidecar(path)
    secret = np.arange(4, dtype=np.float32).tobytes()
    for where in (exported / "secret.bin", tmp_path / "secret.bin", exported / "sub" / "model.onnx.data"):
        where.write_bytes(secret * 4)
    weight = model.graph.initializer[0]
    for entry in weight.external_data:
        if entry.key == "location":
            entry.value = location
        elif entry.key == "offset":
            entry.value = "0"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(
        ValueError, match=rf"model\.onnx: a tensor's data is in '{re.escape(location)}'; push reads"
    ):
        client.models.push("sidecar", path)
    with pytest.raises(tessera.NotFound):
        client.models.get("sidecar")


def test_a_file_that_is_not_onnx_beside_a_sidecar_is_refused_naming_it(
    client: tessera.Client, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xff not protobuf")
    (tmp_path / "model.onnx.data").write_bytes(b"0000")
    with pytest.raises(ValueError, match=r"model\.onnx: not an ONNX model"):
        client.models.push("sidecar", path)


def test_a_sidecar_past_what_one_file_holds_is_refused_before_a_byte_is_read(
    client: tessera.Client, tmp_path: Path
) -> None:
    path = affine_onnx(tmp_path / "big.onnx")
    with open(tmp_path / "big.onnx.data", "wb") as sparse:
        sparse.truncate(2**31)
    with pytest.raises(
        ValueError, match=r"big\.onnx: with its tensors from big\.onnx\.data the model is .* past the 2 GiB"
    ):
        client.models.push("sidecar", path)
    with pytest.raises(tessera.NotFound):
        client.models.get("sidecar")

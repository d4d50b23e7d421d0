"""push of an ONNX model whose tensors torch.onnx.export wrote to model.onnx.data beside it: the
SDK inlines them and the daemon serves the one file; a model too large for one file is refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tessera
from tests.integration.sdk.affine import affine_onnx


def test_a_model_with_an_external_data_sidecar_is_pushed_as_one_file(
    client: tessera.Client, tmp_path: Path
) -> None:
    exported = tmp_path / "export"
    exported.mkdir()
    path = affine_onnx(exported / "model.onnx", scale=3.0)
    model = onnx.load(str(path))
    # As torch writes them: raw bytes, which onnx moves to the sidecar.
    raw = [numpy_helper.from_array(numpy_helper.to_array(t), t.name) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(raw)
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    assert (exported / "model.onnx.data").stat().st_size > 0
    version = client.models.push("sidecar", path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        client.inference.predict("sidecar", x, version=version.version)["output"], x * 3 + 1
    )
    assert sorted(os.listdir(exported)) == ["model.onnx", "model.onnx.data"]  # the inlined copy was temporary


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

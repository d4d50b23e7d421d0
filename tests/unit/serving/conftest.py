"""Small ONNX models built with onnx.helper (no torch, quick to build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from serving_fakes import LINEAR_B, LINEAR_W, save


@pytest.fixture
def linear_onnx(tmp_path: Path) -> Path:
    """y = x @ W + b: x float32 (N, 4) -> y float32 (N, 3)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(LINEAR_W, "W"), numpy_helper.from_array(LINEAR_B, "b")],
    )
    return save(graph, tmp_path / "linear.onnx")


@pytest.fixture
def lookup_onnx(tmp_path: Path) -> Path:
    """A table lookup that fails at run time for an id outside 0..4: ids int64 (N,) -> (N, 2)."""
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(table, "table")],
    )
    return save(graph, tmp_path / "lookup.onnx")

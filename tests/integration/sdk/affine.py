"""A tiny ONNX model for SDK and CLI tests: output = input * scale + bias."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def affine_onnx(
    path: Path, features: int = 4, scale: float = 2.0, bias: float = 1.0, elem_type: int = TensorProto.FLOAT
) -> Path:
    """An ONNX model output = input * scale + bias over (batch, features) of `elem_type` (float32)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["output"]),
        ],
        "affine",
        [helper.make_tensor_value_info("input", elem_type, ["batch", features])],
        [helper.make_tensor_value_info("output", elem_type, ["batch", features])],
        initializer=[
            helper.make_tensor("scale", elem_type, [1], [scale]),
            helper.make_tensor("bias", elem_type, [1], [bias]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path

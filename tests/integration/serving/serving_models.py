"""Models for the serving tests: ONNX graphs built with onnx.helper, uploaded through Registry."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tessera.v1 import common_pb2, inference_pb2, registry_pb2, registry_pb2_grpc

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _model_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_model(scale: float) -> bytes:
    """y = x @ (W * scale): x float32 (N, 4) -> y float32 (N, 3); versions differ by scale."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W * scale, "W")],
    )
    return _model_bytes(graph)


def slow_model(layers: int = 24, width: int = 384) -> bytes:
    """A stack of matmuls: milliseconds per row batch, so requests queue up behind it."""
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array((rng.standard_normal((width, width)) / width).astype(np.float32), f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"]))
        name = f"h{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return _model_bytes(graph)


def half_model() -> bytes:
    """y = x * 2 in float16: x (N, 2) -> y (N, 2)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 2])],
        [numpy_helper.from_array(np.array(2, dtype=np.float16), "two")],
    )
    return _model_bytes(graph)


def upload(channel: grpc.Channel, model: str, artifact: bytes, alias: str = "") -> int:
    """Register an ONNX artifact as a new version of `model` (created if missing)."""
    stub = registry_pb2_grpc.RegistryStub(channel)
    header = registry_pb2.UploadVersionHeader(
        model=model,
        create_model=True,
        format=registry_pb2.ARTIFACT_FORMAT_ONNX,
        sha256=hashlib.sha256(artifact).hexdigest(),
        size_bytes=len(artifact),
        alias=alias,
    )
    parts = [registry_pb2.UploadVersionRequest(header=header)]
    parts += [
        registry_pb2.UploadVersionRequest(chunk=artifact[i : i + 65536])
        for i in range(0, len(artifact), 65536)
    ]
    return stub.UploadVersion(iter(parts)).version


def tensor(name: str, array: np.ndarray) -> common_pb2.Tensor:
    dtypes = {np.dtype(np.float32): common_pb2.DATA_TYPE_FLOAT32, np.dtype(np.float64): common_pb2.DATA_TYPE_FLOAT64,
              np.dtype(np.int64): common_pb2.DATA_TYPE_INT64, np.dtype(np.float16): common_pb2.DATA_TYPE_FLOAT16}  # fmt: skip
    return common_pb2.Tensor(name=name, dtype=dtypes[array.dtype], shape=array.shape, data=array.tobytes())


def to_array(t: common_pb2.Tensor) -> np.ndarray:
    dtypes = {common_pb2.DATA_TYPE_FLOAT32: np.float32, common_pb2.DATA_TYPE_FLOAT16: np.float16}
    return np.frombuffer(t.data, dtype=dtypes[t.dtype]).reshape(t.shape)


def predict_request(model: str, x: np.ndarray, **target: object) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=model, **target), inputs=[tensor("x", x)]
    )

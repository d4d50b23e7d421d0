"""Damaged or foreign artifacts are refused with INVALID_ARGUMENT saying what is wrong, store
nothing, and no message names a path on the server (the data directory)."""

from __future__ import annotations

import io
import json
import struct

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.integration.registry.conftest import (
    mlp_weights,
    onnx_header,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def onnx_bytes(model: onnx.ModelProto) -> bytes:
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def matmul_model(weight: TensorProto, node: str = "MatMul", domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(node, ["input", "W"], ["output"], domain=domain)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def external_weight() -> TensorProto:
    """A weight whose data lives in a file beside the model (ONNX external data)."""
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 2])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    return weight


WEIGHT = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
GOOD = mlp_weights()

SAFETENSORS_CASES = {
    "random bytes": (b"\xff" * 100, "its first 8 bytes do not give a plausible header length"),
    "too short": (b"\x01\x02\x03", "too short to hold a safetensors header"),
    "header not JSON": (safetensors_bytes(b"{not json"), "invalid JSON in header"),
    "tensor without shape": (
        safetensors_bytes({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4),
        "missing field `shape`",
    ),
    "unknown dtype": (
        safetensors_bytes({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "unknown variant `F99`",
    ),
    "shape that does not fit its bytes": (
        safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "invalid shape, data type, or offset for tensor",
    ),
    "offsets past the data": (
        safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        "truncated or damaged",
    ),
    "truncated": (GOOD[:-5], "truncated or damaged"),
}

ONNX_CASES = {
    "random bytes": (b"not an onnx model at all" * 4, "not an ONNX protobuf"),
    "no ir_version": (b"\x3a\x00", "ir_version"),
    "dangling input": (
        onnx_bytes(matmul_model(numpy_helper.from_array(np.ones((4, 2), np.float32), "V"))),
        "input 'W' of node: name: OpType: MatMul is not output of any previous nodes",
    ),
    "external data": (onnx_bytes(matmul_model(external_weight())), "external data file"),
}


def assert_names_no_server_path(error: grpc.RpcError, data_dir) -> None:
    details = error.details()
    assert str(data_dir) not in details and "blobs" not in details and "/tmp" not in details, details


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_bad_safetensors_say_what_is_wrong(stub, data_dir, case):
    data, reason = SAFETENSORS_CASES[case]
    error = rpc_error(upload, stub, safetensors_header("mlp", data), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the artifact is not a valid safetensors file: " in error.details() and reason in error.details()
    assert_names_no_server_path(error, data_dir)
    assert stored_blobs(data_dir) == []


@pytest.mark.parametrize("case", ONNX_CASES)
def test_bad_onnx_says_what_is_wrong(stub, data_dir, case):
    data, reason = ONNX_CASES[case]
    error = rpc_error(upload, stub, onnx_header("tiny", data), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()
    assert_names_no_server_path(error, data_dir)
    assert stored_blobs(data_dir) == []


def test_a_good_safetensors_file_counts_its_parameters(stub):
    version = upload(stub, safetensors_header("mlp", GOOD), GOOD)
    assert version.parameter_count == 4 * 8 + 8 + 8 * 2 + 2  # the MLP 4 -> 8 -> 2


def test_a_model_onnxruntime_cannot_load_names_no_server_path(stub, channel, data_dir):
    # onnx.checker accepts an operator from an unknown domain; onnxruntime has no kernel for it.
    data = onnx_bytes(matmul_model(WEIGHT, node="Mystery", domain="example.custom"))
    upload(stub, onnx_header("custom", data), data)
    inference = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="custom", version=1))
    error = rpc_error(inference.LoadModel, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "onnxruntime cannot load this model" in error.details() and "Mystery" in error.details()
    assert_names_no_server_path(error, data_dir)

"""Registry test helpers: tiny real artifacts (safetensors MLP weights, ONNX graphs) and uploads."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tessera.v1 import architecture_pb2, common_pb2, registry_pb2, registry_pb2_grpc

CHUNK = 64 * 1024


def mlp_architecture(hidden: int = 8) -> architecture_pb2.Architecture:
    return architecture_pb2.Architecture(
        input_shape=[4], output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=[hidden])
    )


def mlp_signature() -> common_pb2.Signature:
    return common_pb2.Signature(
        inputs=[common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])],
        outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
    )


def mlp_weights(hidden: int = 8, seed: int = 0) -> bytes:
    """safetensors bytes of the MLP that mlp_architecture(hidden) builds."""
    import torch
    from safetensors.torch import save

    from tesserad.nn import build_model, spec_from_dict

    torch.manual_seed(seed)
    model = build_model(
        spec_from_dict({"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [hidden]})
    )
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def onnx_identity(width: int = 4) -> bytes:
    """An ONNX graph: output = input @ W, input float32 [-1, width], output [-1, 2]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((width, 2), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def upload_requests(
    header: registry_pb2.UploadVersionHeader, data: bytes
) -> Iterator[registry_pb2.UploadVersionRequest]:
    yield registry_pb2.UploadVersionRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield registry_pb2.UploadVersionRequest(chunk=data[start : start + CHUNK])


def safetensors_header(model: str, data: bytes, **fields) -> registry_pb2.UploadVersionHeader:
    values = {
        "model": model,
        "create_model": True,
        "format": registry_pb2.ARTIFACT_FORMAT_SAFETENSORS,
        "signature": mlp_signature(),
        "architecture": mlp_architecture(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    values.update(fields)
    return registry_pb2.UploadVersionHeader(**values)


def onnx_header(model: str, data: bytes, **fields) -> registry_pb2.UploadVersionHeader:
    values = {
        "model": model,
        "create_model": True,
        "format": registry_pb2.ARTIFACT_FORMAT_ONNX,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    values.update(fields)
    return registry_pb2.UploadVersionHeader(**values)


def upload(stub: registry_pb2_grpc.RegistryStub, header, data: bytes) -> registry_pb2.ModelVersion:
    return stub.UploadVersion(upload_requests(header, data), timeout=60)


def upload_versions(
    stub: registry_pb2_grpc.RegistryStub, model: str, count: int, width: int = 4
) -> list[registry_pb2.ModelVersion]:
    """`count` versions of `model`, each an ONNX identity of `width` inputs."""
    data = onnx_identity(width)
    return [upload(stub, onnx_header(model, data), data) for _ in range(count)]


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """The grpc.RpcError that call(*args, **kwargs) raises (fails the test if it raises none)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def stored_blobs(data_dir: Path) -> list[str]:
    """Every blob file, finished ("sha256/...") or in flight ("tmp/..."), relative to the blob root."""
    root = data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def stub(channel: grpc.Channel) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(channel)


@pytest.fixture(scope="session")
def weights() -> bytes:
    return mlp_weights()

"""An ONNX version registered with an architecture: the architecture is what fine-tuning, export
and explanations rebuild the model from (through the version's lineage), so one that builds
another model than the graph is refused at upload instead of stored as a fact about it."""

from __future__ import annotations

import grpc

from tessera.v1 import architecture_pb2, registry_pb2
from tests.integration.registry.conftest import (
    mlp_architecture,
    onnx_header,
    onnx_identity,
    rpc_error,
    upload,
)


def test_an_architecture_of_other_shapes_than_the_graph_is_refused(stub):
    data = onnx_identity(4)
    architecture = architecture_pb2.Architecture(
        input_shape=[8], output_size=3, mlp=architecture_pb2.MlpSpec(hidden_sizes=[8])
    )
    error = rpc_error(upload, stub, onnx_header("m", data, architecture=architecture), data)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the architecture builds input [-1, 8] -> output [-1, 3], but the ONNX graph is input [-1, 4] -> "
        "output [-1, 2]; send the architecture that built this graph, or none (an ONNX version serves "
        "without one)",
    )
    assert list(stub.ListModels(registry_pb2.ListModelsRequest()).models) == []


def test_an_architecture_of_the_graphs_shapes_is_kept(stub):
    data = onnx_identity(4)
    version = upload(stub, onnx_header("m", data, architecture=mlp_architecture()), data)
    assert version.architecture.input_shape == [4]

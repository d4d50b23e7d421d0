"""Models for the serving tests: ONNX graphs built with onnx.helper and tesserad.nn safetensors
weights, uploaded through Registry."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tessera.v1 import architecture_pb2, common_pb2, inference_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.tables import RETIRED_NUMBERS
from tests.conftest import InProcessDaemon

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _model_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def label_model() -> bytes:
    """An ai.onnx.ml LabelEncoder: text string (N,) -> label int64 (N,); cat 0, dog 1, bird 2,
    anything else -1."""
    encoder = helper.make_node(
        "LabelEncoder",
        ["text"],
        ["label"],
        domain="ai.onnx.ml",
        keys_strings=["cat", "dog", "bird"],
        values_int64s=[0, 1, 2],
        default_int64=-1,
    )
    graph = helper.make_graph(
        [encoder],
        "labels",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def upper_model() -> bytes:
    """A StringNormalizer: text string (N,) -> upper string (N,), upper-cased."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer", ["text"], ["upper"], case_change_action="UPPER", locale="C.UTF-8"
            )
        ],
        "upper",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, ["batch"])],
    )
    return _model_bytes(graph)


def spelled_model() -> bytes:
    """A number in, its text out: x float32 (N, 2) -> y string (N, 2) (Cast to string)."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)],
        "spelled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 2])],
    )
    return _model_bytes(graph)


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
    """A stack of matmuls: ~0.3 ms a row alone on the 2-core dev box, ~60 ms for 2048 rows, so
    requests queue up behind a large one."""
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


def pairwise_model(width: int = 16384, depth: int = 128) -> bytes:
    """y_i = sum over j and k of tanh applied `depth` times to x_ik * x_jk: x float32 (N, width)
    -> y (N, 1). Its work grows with the square of the batch, so a row in a batch of N costs ~N
    times a row alone: batching never pays. A row alone is compute (0.47 ms on the 2-core dev box),
    not memory: with a cheap row (x @ x.T over 512 KiB rows, 22 us) the daemon measured a row alone
    at 10x that in some runs and judged batches of 3-8 cheaper per row, which made the
    never-batching test fail in 2-7 of 20 runs."""
    nodes = [
        helper.make_node("Unsqueeze", ["x", "one"], ["rows"]),
        helper.make_node("Unsqueeze", ["x", "zero"], ["others"]),
        helper.make_node("Mul", ["rows", "others"], ["pairs0"]),
    ]
    nodes += [helper.make_node("Tanh", [f"pairs{i}"], [f"pairs{i + 1}"]) for i in range(depth)]
    nodes += [
        helper.make_node("ReduceSum", [f"pairs{depth}", "pair_axes"], ["sums"], keepdims=0),
        helper.make_node("Unsqueeze", ["sums", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pairwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "pair_axes"),
        ],
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


def two_output_model() -> bytes:
    """a = x @ W and b = x + x: x float32 (N, 4) -> a (N, 3), b (N, 4)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Add", ["x", "x"], ["b"])],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [numpy_helper.from_array(W, "W")],
    )
    return _model_bytes(graph)


def reshape_model(shape: list[int], node_name: str = "", declared: list[int | str] | None = None) -> bytes:
    """y = x reshaped to `shape`: x float32 (N, 4), y declared `declared` (default: `shape`).
    onnxruntime fails at run time on an x with another number of values, with a message that
    names its C++ source and the node, `node_name` ([1, 4]: a request of more than one row fails;
    [3]: every run fails, so the version cannot warm up; [-1, 3] declared ["batch", 3]: runs of
    rows not a multiple of 3 fail, a warm-up's among them)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name=node_name)],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape if declared is None else declared)],
        [numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")],
    )
    return _model_bytes(graph)


def one_row_model() -> bytes:
    """y = x reshaped to (1, 4), declared batchable as x float32 (N, 4) -> y (N, 4): a run of one
    row answers it, a run of more rows fails (so does a warm-up with max_batch_size above 1).
    The shape is an input with a default, so shape inference leaves y's first dimension free."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "one_row",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")],
    )
    return _model_bytes(graph)


def one_row_linear_model() -> bytes:
    """y = (x @ W) reshaped to (1, 3), declared as linear_model's x (N, 4) -> y (N, 3): a run of
    one row answers it as linear_model(1.0) does, a run of more rows fails."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Reshape", ["xw", "shape"], ["y"])],
        "one_row_linear",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "shape")],
    )
    return _model_bytes(graph)


def upload(
    channel: grpc.Channel,
    model: str,
    artifact: bytes,
    alias: str = "",
    lineage: registry_pb2.Lineage | None = None,
) -> int:
    """Register an ONNX artifact as a new version of `model` (created if missing)."""
    header = registry_pb2.UploadVersionHeader(
        format=registry_pb2.ARTIFACT_FORMAT_ONNX, alias=alias, lineage=lineage
    )
    return _upload(channel, model, artifact, header)


# A cnn4d classifier on clips shaped (channel, time, depth, height, width), as the README trains.
CNN4D_ARCHITECTURE = architecture_pb2.Architecture(
    input_shape=[1, 3, 4, 4, 4],
    output_size=2,
    cnn4d=architecture_pb2.Cnn4dSpec(channels=[2], kernel_size=3),
)
CNN4D_SIGNATURE = common_pb2.Signature(
    inputs=[
        common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 1, 3, 4, 4, 4])
    ],
    outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
)


def cnn4d_weights() -> bytes:
    """safetensors bytes of the cnn4d CNN4D_ARCHITECTURE builds (seeded)."""
    import torch
    from safetensors.torch import save

    from tesserad.nn import build_model, spec_from_dict

    torch.manual_seed(0)
    spec = {
        "family": "cnn4d",
        "input_shape": [1, 3, 4, 4, 4],
        "output_size": 2,
        "channels": [2],
        "kernel_size": 3,
    }
    model = build_model(spec_from_dict(spec))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def upload_weights(channel: grpc.Channel, model: str, weights: bytes, alias: str = "") -> int:
    """Register CNN4D_ARCHITECTURE safetensors weights as a new version of `model`."""
    header = registry_pb2.UploadVersionHeader(
        format=registry_pb2.ARTIFACT_FORMAT_SAFETENSORS,
        architecture=CNN4D_ARCHITECTURE,
        signature=CNN4D_SIGNATURE,
        alias=alias,
    )
    return _upload(channel, model, weights, header)


def _upload(
    channel: grpc.Channel, model: str, artifact: bytes, header: registry_pb2.UploadVersionHeader
) -> int:
    header.model = model
    header.create_model = True
    header.sha256 = hashlib.sha256(artifact).hexdigest()
    header.size_bytes = len(artifact)
    stub = registry_pb2_grpc.RegistryStub(channel)
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


# Every datatype tesserad serves from ONNX (its onnxruntime serves no BF16), as the echo
# model's inputs, with their ONNX element types.
ECHO_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "INT8": TensorProto.INT8,
    "UINT16": TensorProto.UINT16,
    "INT16": TensorProto.INT16,
    "UINT32": TensorProto.UINT32,
    "INT32": TensorProto.INT32,
    "UINT64": TensorProto.UINT64,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}


def echo_model() -> bytes:
    """out_<t> = in_<t> for every datatype t, each of shape (N, 3)."""
    names = [t.lower() for t in ECHO_TYPES]
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{n}"], [f"out_{n}"]) for n in names],
        "echo",
        [
            helper.make_tensor_value_info(f"in_{n}", t, ["batch", 3])
            for n, t in zip(names, ECHO_TYPES.values(), strict=True)
        ],
        [
            helper.make_tensor_value_info(f"out_{n}", t, ["batch", 3])
            for n, t in zip(names, ECHO_TYPES.values(), strict=True)
        ],
    )
    return _model_bytes(graph)


def delete_model_numbered_as_before(daemon: InProcessDaemon, model: str, force: bool = False) -> None:
    """Delete `model` as a tesserad from before RETIRED_NUMBERS did: created again, it numbers its
    versions from 1, so its version 1 is another artifact, which serving must never take for the
    deleted one. (A model's delete now keeps its numbers, and one created again numbers on.)"""
    registry_pb2_grpc.RegistryStub(daemon.channel()).DeleteModel(
        registry_pb2.DeleteModelRequest(name=model, force=force)
    )
    with daemon.daemon._store.write() as txn:
        txn.delete(RETIRED_NUMBERS, (model,))

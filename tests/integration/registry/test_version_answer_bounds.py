"""A version travels whole in every GetVersion answer: its signature, architecture and
lineage.job_spec are bounded so that the answer stays within gRPC's default 4 MiB beside its
params, metrics, text and aliases. Unbounded, one upload could make a version no client can read:
a signature or job spec as large as a request (max_message_size, 64 MiB), an MLP's input_shape
taking twice that in the answer (the architecture, and the signature built from it), or an ONNX
graph's signature as large as the artifact. Each bound is refused by name, with nothing stored."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    job_spec_pb2,
    registry_pb2,
    training_pb2,
    training_pb2_grpc,
)
from tests.integration.registry.conftest import (
    mlp_architecture,
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)

R = registry_pb2
FLOAT = common_pb2.DATA_TYPE_FLOAT32


def tensors(prefix: str, count: int, shape: list[int]) -> list[common_pb2.TensorSpec]:
    return [common_pb2.TensorSpec(name=f"{prefix}{i}", dtype=FLOAT, shape=shape) for i in range(count)]


def onnx_with_outputs(count: int) -> bytes:
    """An ONNX graph whose one input is copied to `count` outputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(count)],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", 1]) for i in range(count)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def refused_upload(stub, data_dir, header: R.UploadVersionHeader, data: bytes) -> grpc.RpcError:
    """The error of an upload that stores nothing."""
    before = stored_blobs(data_dir)
    error = rpc_error(upload, stub, header, data)
    assert stored_blobs(data_dir) == before
    assert rpc_error(stub.GetModel, R.GetModelRequest(name=header.model)).code() == grpc.StatusCode.NOT_FOUND
    return error


@pytest.mark.parametrize(
    ("signature", "told"),
    [
        (
            common_pb2.Signature(inputs=tensors("x", 1000, [-1]), outputs=tensors("y", 25, [-1])),
            "a signature holds at most 1,024 tensors (inputs and outputs together), this one 1,025 "
            "(1,000 inputs, 25 outputs), so that a version's answer stays within 4 MiB",
        ),
        (
            common_pb2.Signature(inputs=tensors("x", 1, [-1] * 65), outputs=tensors("y", 1, [-1])),
            "signature.inputs[0] ('x0').shape has 65 dims; a tensor has at most 64",
        ),
    ],
    ids=["tensors", "dims"],
)
def test_a_declared_signature_past_its_bounds_is_refused(stub, data_dir, weights, signature, told):
    # A safetensors version's declared signature is taken as it is (an ONNX one must match its graph).
    header = safetensors_header("wide", weights, signature=signature)
    error = refused_upload(stub, data_dir, header, weights)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, told)


def test_an_onnx_graph_whose_signature_is_past_the_bound_is_refused(stub, data_dir):
    data = onnx_with_outputs(1024)
    error = refused_upload(stub, data_dir, onnx_header("wide", data), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "a signature holds at most 1,024 tensors (inputs and outputs together), "
    )
    # At the bound it is taken, from the graph.
    data = onnx_with_outputs(1023)
    version = upload(stub, onnx_header("wide", data), data)
    assert (len(version.signature.inputs), len(version.signature.outputs)) == (1, 1023)


def test_an_mlp_input_shape_past_63_dims_is_refused(stub, data_dir, weights):
    architecture = architecture_pb2.Architecture(
        input_shape=[4] + [1] * 63, output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=[8])
    )  # the weights of input_shape [4] fit it: the MLP flattens a sample
    header = safetensors_header("deep", weights, architecture=architecture, signature=common_pb2.Signature())
    error = refused_upload(stub, data_dir, header, weights)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "architecture.input_shape: must have at most 63 dims (no batch dim), got 64",
    )


def big_job_spec() -> job_spec_pb2.JobSpec:
    """A job spec that registers a version, of just over 256 KiB serialized."""
    spec = job_spec_pb2.JobSpec(
        architecture=mlp_architecture(),
        freeze=["x" * 1000] * 262,
        register_as=job_spec_pb2.RegisterAs(model="trained"),
    )
    assert 256 * 2**10 < spec.ByteSize() < 257 * 2**10
    return spec


def test_a_lineage_job_spec_past_256_kib_is_refused(stub, data_dir):
    data = onnx_identity()
    spec = big_job_spec()
    header = onnx_header("spec", data, lineage=R.Lineage(job_spec=spec))
    error = refused_upload(stub, data_dir, header, data)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"lineage.job_spec takes 257 KiB ({spec.ByteSize():,} bytes) serialized; the job spec a model "
        "version keeps (its lineage.job_spec) takes at most 256 KiB, as it travels whole in every "
        "answer with the version; keep large values in a file and name it",
    )


def test_a_lineage_job_spec_with_values_no_job_takes_is_refused(stub, data_dir):
    # Its dataset and devices are another daemon's, so only the values a spec holds on its own
    # are checked, as SubmitJob checks them.
    data = onnx_identity()
    spec = job_spec_pb2.JobSpec(epochs=-5, optimizer=job_spec_pb2.Optimizer(lr=float("nan")))
    header = onnx_header("spec", data, lineage=R.Lineage(job_spec=spec))
    error = refused_upload(stub, data_dir, header, data)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "lineage.job_spec has 2 problems:\n"
        "  lineage.job_spec.optimizer.lr: must be > 0, got nan\n"
        "  lineage.job_spec.epochs: must be >= 0, got -5",
    )
    spec = job_spec_pb2.JobSpec(epochs=3, optimizer=job_spec_pb2.Optimizer(lr=0.01))
    header = onnx_header("spec", data, lineage=R.Lineage(job_spec=spec))
    assert upload(stub, header, data).lineage.job_spec == spec


def test_a_lineage_naming_more_than_256_dataset_versions_is_refused(stub, data_dir):
    # Refused before the dataset versions are looked up: none of these exists.
    data = onnx_identity()
    datasets = [R.DatasetLineage(name="shards", version=v) for v in range(1, 258)]
    header = onnx_header("wide", data, lineage=R.Lineage(datasets=datasets))
    error = refused_upload(stub, data_dir, header, data)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "lineage.datasets names 257 dataset versions; a model version's lineage names at most 256, as "
        "it travels whole in every answer with the version; put data trained on together in one "
        "dataset (a dataset version holds many named arrays)",
    )


def test_a_job_spec_that_registers_a_version_past_256_kib_is_refused_at_submit(channel):
    # One that registers nothing is the run's alone: its tags may take 2 MiB (test_submit_checks).
    training = training_pb2_grpc.TrainingStub(channel)
    spec = big_job_spec()
    error = rpc_error(training.SubmitJob, training_pb2.SubmitJobRequest(spec=spec))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        f"spec (with register_as) takes 257 KiB ({spec.ByteSize():,} bytes) serialized; "
    )
    sweep = training_pb2.SweepSpec(base=spec)
    error = rpc_error(training.SubmitSweep, training_pb2.SubmitSweepRequest(spec=sweep))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("spec.base (with register_as) takes 257 KiB")
    assert not training.ListJobs(training_pb2.ListJobsRequest()).jobs

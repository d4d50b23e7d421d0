"""A lineage's run_id, job_id and experiment name what the version came from, in tessera or in
another tracker: each is kept to the rule a tag key follows (at most 250 characters, no NUL or
newline), as the lineage travels whole in every answer with the version. A refused upload
stores nothing."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs

R = registry_pb2


@pytest.mark.parametrize("field", ["run_id", "job_id", "experiment"])
def test_a_lineage_id_past_250_characters_is_refused_and_nothing_stored(stub, data_dir, field):
    graph = onnx_identity()
    header = onnx_header("m", graph, create_model=True, lineage=R.Lineage(**{field: "x" * 3_000_000}))
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=graph))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"lineage.{field}: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… "
        "(3,000,000 characters) must be at most 250 characters without NUL or newlines"
    )
    assert stub.ListModels(R.ListModelsRequest()).models == []
    assert [b for b in stored_blobs(data_dir) if not b.startswith("tmp/")] == []


def test_a_lineage_id_with_a_nul_is_refused(stub):
    graph = onnx_identity()
    header = onnx_header("m", graph, create_model=True, lineage=R.Lineage(run_id="run-1\x00"))
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=graph))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == "lineage.run_id: 'run-1\\x00' must be at most 250 characters without NUL or newlines"
    )


def test_lineage_ids_of_another_tracker_are_kept(stub):
    graph = onnx_identity()
    lineage = R.Lineage(
        run_id="0f3c9a1b2d4e5f60718293a4b5c6d7e8", job_id="slurm 4512", experiment="Vision/ResNet"
    )
    header = onnx_header("m", graph, create_model=True, lineage=lineage)
    version = stub.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=graph))
    assert (version.lineage.run_id, version.lineage.job_id, version.lineage.experiment) == (
        "0f3c9a1b2d4e5f60718293a4b5c6d7e8",
        "slurm 4512",
        "Vision/ResNet",
    )

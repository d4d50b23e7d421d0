"""A version's params follow the rule of a run's (MLflow's): keys 1 to 250 characters without
NUL or newlines, values at most 6000 characters; checked with the upload's header. They were
taken as sent: an empty key, a key over lines, a value of megabytes carried to every page and
every follower of the model."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import (
    CHUNK,
    onnx_header,
    onnx_identity,
    rpc_error,
    stored_blobs,
    upload,
    upload_requests,
)

R = registry_pb2

REFUSED = [
    ({"": "1"}, "params: key '' must be 1 to 250 characters without NUL or newlines"),
    ({"lr\nrate": "0.1"}, "params: key 'lr\\nrate' must be 1 to 250 characters"),
    ({"k" * 251: "1"}, "must be 1 to 250 characters"),
    ({"notes": "x" * 6001}, "params['notes']: value is longer than 6000 characters"),
]


@pytest.mark.parametrize(("params", "words"), REFUSED)
def test_a_streamed_upload_checks_its_params_before_taking_the_artifact(stub, data_dir, params, words):
    artifact = b"\x00" * (3 * CHUNK)
    header = onnx_header("m", artifact, params=params)
    error = rpc_error(stub.UploadVersion, iter(list(upload_requests(header, artifact))[:2]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.details()
    assert stored_blobs(data_dir) == []


@pytest.mark.parametrize(("params", "words"), REFUSED)
def test_inline_and_batch_uploads_check_their_params(stub, data_dir, params, words):
    data = onnx_identity()
    item = R.UploadVersionInlineRequest(header=onnx_header("m", data, params=params), artifact=data)
    error = rpc_error(stub.UploadVersionInline, item)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    fine = R.UploadVersionInlineRequest(header=onnx_header("m", data), artifact=data)
    error = rpc_error(stub.UploadVersionBatch, R.UploadVersionBatchRequest(items=[fine, item]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("items[1]: params") and words in error.details()
    assert stored_blobs(data_dir) == []
    assert list(stub.ListModels(R.ListModelsRequest()).models) == []


def test_params_within_the_rule_are_kept(stub):
    data = onnx_identity()
    params = {"optimizer.lr": "0.001", "k" * 250: "v", "notes": "x" * 6000}
    version = upload(stub, onnx_header("m", data, params=params), data)
    assert dict(version.params) == params

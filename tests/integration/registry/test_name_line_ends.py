"""A name is its whole string: one ending in a newline ("prod\\n", easily read from a file or a
shell line) is refused where it would be stored, not kept as a second name that prints like
the first and that no command line can type."""

from __future__ import annotations

import re
from types import SimpleNamespace

import grpc
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, registry_pb2
from tesserad import names
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs, upload

R = registry_pb2


def test_a_model_name_ending_in_a_newline_is_refused(stub):
    error = rpc_error(stub.CreateModel, R.CreateModelRequest(name="clf\n"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name 'clf\\n' is not a valid name" in error.details()

    data = onnx_identity()
    error = rpc_error(upload, stub, onnx_header("clf\n", data), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(stub.ListModels(R.ListModelsRequest()).models) == []


def test_an_alias_ending_in_a_newline_is_refused(stub, data_dir):
    data = onnx_identity()
    upload(stub, onnx_header("clf", data), data)
    error = rpc_error(stub.SetAlias, R.SetAliasRequest(model="clf", alias="prod\n", version=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "alias 'prod\\n' is not a valid name" in error.details()

    error = rpc_error(upload, stub, onnx_header("clf", data, alias="prod\n"), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(stub.GetModel(R.GetModelRequest(name="clf")).aliases) == {"latest": 1}
    assert len(stored_blobs(data_dir)) == 1


@pytest.mark.parametrize("field", ["name", "array_name"])
def test_a_dataset_name_ending_in_a_newline_is_refused(channel, data_dir, field):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    fields = {"name": "clips", "format": datasets_pb2.DATASET_FORMAT_NPY, field: "clips\n"}
    error = rpc_error(upload_dataset, ds, data=npz_bytes(4), **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} 'clips\\n' is not a valid name" in error.details()
    assert list(ds.ListDatasets(datasets_pb2.ListDatasetsRequest()).datasets) == []
    assert [b for b in stored_blobs(data_dir) if b.startswith("sha256/")] == []


def test_names_stored_with_a_newline_before_the_rule_can_still_be_deleted(stub, channel, monkeypatch):
    """No other call can name them now; a delete still can, so they need no tool to remove."""
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    before = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
    monkeypatch.setattr(names, "NAME_PATTERN", SimpleNamespace(fullmatch=before.match))
    data = onnx_identity()
    upload(stub, onnx_header("clf\n", data, alias="prod\n"), data)
    upload_dataset(ds, "clips\n", npz_bytes(4))
    monkeypatch.undo()

    missing = rpc_error(stub.GetModel, R.GetModelRequest(name="clf\n"))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.DeleteAlias(R.DeleteAliasRequest(model="clf\n", alias="prod\n"))
    assert stub.DeleteModel(R.DeleteModelRequest(name="clf\n")).deleted_versions == 1
    deleted = ds.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name="clips\n"))
    assert deleted.deleted_versions == 1
    assert list(stub.ListModels(R.ListModelsRequest()).models) == []
    assert list(ds.ListDatasets(datasets_pb2.ListDatasetsRequest()).datasets) == []
    # A name that was never valid stays refused, a final newline or not.
    refused = rpc_error(stub.DeleteModel, R.DeleteModelRequest(name="Clf\n"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT

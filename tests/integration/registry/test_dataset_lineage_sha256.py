"""A version's lineage names each dataset version by its content too: an upload that names one
by name and number alone gets its sha256 recorded, so it stays checkable whatever becomes of
the dataset (deleted with force and uploaded again, its versions go on from the old numbers)."""

from __future__ import annotations

import grpc

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc, registry_pb2
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


def test_a_dataset_named_without_sha256_is_recorded_with_it(stub, channel):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    trained_on = upload_dataset(ds, "clips", npz_bytes(10))
    data = onnx_identity()
    lineage = R.Lineage(datasets=[R.DatasetLineage(name="clips", version=1)])
    registered = upload(stub, onnx_header("clf", data, lineage=lineage), data)
    assert [(d.name, d.version, d.sha256) for d in registered.lineage.datasets] == [
        ("clips", 1, trained_on.sha256)
    ]

    ds.DeleteDataset(datasets_pb2.DeleteDatasetRequest(name="clips", force=True))
    other = upload_dataset(ds, "clips", npz_bytes(20))
    assert other.version == 2 and other.sha256 != trained_on.sha256
    stored = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="clf", version=1)))
    assert [(d.version, d.sha256) for d in stored.lineage.datasets] == [(1, trained_on.sha256)]


def test_each_upload_path_records_it(stub, channel):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    sha256 = upload_dataset(ds, "clips", npz_bytes(10)).sha256
    data = onnx_identity()
    header = onnx_header("clf", data, lineage=R.Lineage(datasets=[R.DatasetLineage(name="clips", version=1)]))
    inline = stub.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=data))
    batch = stub.UploadVersionBatch(
        R.UploadVersionBatchRequest(items=[R.UploadVersionInlineRequest(header=header, artifact=data)])
    )
    assert [v.lineage.datasets[0].sha256 for v in (inline, *batch.versions)] == [sha256, sha256]


def test_a_dataset_version_named_twice_is_refused_naming_both_places(stub, channel):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    upload_dataset(ds, "clips", npz_bytes(10))
    upload_dataset(ds, "clips", npz_bytes(20))
    data = onnx_identity()
    named = [R.DatasetLineage(name="clips", version=v) for v in (1, 2, 1)]
    header = onnx_header("clf", data, create_model=True, lineage=R.Lineage(datasets=named))
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=data))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "lineage.datasets[2] names dataset 'clips' v1 again (lineage.datasets[0] does); name each dataset "
        "version once"
    )
    assert stub.ListModels(R.ListModelsRequest()).models == []


def test_a_dataset_refused_in_a_lineage_is_named_by_its_place(stub, channel):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    sha256 = upload_dataset(ds, "clips", npz_bytes(10)).sha256
    data = onnx_identity()
    for named, code, words in (
        (
            [R.DatasetLineage(name="clips", version=1), R.DatasetLineage(name="frames", version=1)],
            grpc.StatusCode.NOT_FOUND,
            "lineage.datasets[1]: dataset 'frames' does not exist; upload it with UploadDataset",
        ),
        (
            [R.DatasetLineage(name="clips", version=1, sha256="0" * 64)],
            grpc.StatusCode.INVALID_ARGUMENT,
            f"lineage.datasets[0]: dataset 'clips' v1 has sha256 {sha256}, not {'0' * 64}",
        ),
    ):
        header = onnx_header("clf", data, create_model=True, lineage=R.Lineage(datasets=named))
        error = rpc_error(
            stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=data)
        )
        assert (error.code(), error.details()) == (code, words)
    assert stub.ListModels(R.ListModelsRequest()).models == []

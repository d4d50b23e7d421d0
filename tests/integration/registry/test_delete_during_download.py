"""A version deleted by another client just as its download starts is NOT_FOUND, as it would be
a moment later: its blob going with it is no damage, and DATA_LOSS ("damaged in transit or
on disk") sent clients and replicas after a fault that was not there."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tessera.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc, registry_pb2
from tesserad.store import BlobStore
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload


def delete_when_opened(monkeypatch: pytest.MonkeyPatch, sha256: str, delete: Callable[[], None]) -> None:
    """Run `delete` (another client's delete) the first time the daemon looks up the blob's
    file: after the download has resolved its version, before it reads a byte."""
    original = BlobStore.path
    pending = [delete]

    def path(self: BlobStore, digest: str) -> Path:
        if digest == sha256 and pending:
            pending.pop()()
        return original(self, digest)

    monkeypatch.setattr(BlobStore, "path", path)


def test_a_model_version_deleted_as_its_download_starts(stub, daemon, monkeypatch):
    data = onnx_identity()
    upload(stub, onnx_header("clf", data), data)
    registry = daemon.daemon.registry
    delete_when_opened(
        monkeypatch, hashlib.sha256(data).hexdigest(), lambda: registry.delete_version("clf", 1)
    )
    request = registry_pb2.DownloadVersionRequest(ref=common_pb2.VersionRef(model="clf", version=1))
    error = rpc_error(lambda: list(stub.DownloadVersion(request)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'clf' has no version 1" in error.details()


def test_a_dataset_version_deleted_as_its_download_starts(channel, daemon, monkeypatch):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    data = npz_bytes(10)
    upload_dataset(ds, "clips", data)
    datasets = daemon.daemon.datasets
    delete_when_opened(monkeypatch, hashlib.sha256(data).hexdigest(), lambda: datasets.delete("clips", 1))
    request = datasets_pb2.DownloadDatasetRequest(ref=common_pb2.DatasetRef(name="clips", version=1))
    error = rpc_error(lambda: list(ds.DownloadDataset(request)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "dataset 'clips' does not exist" in error.details()


def test_a_delete_once_the_header_arrived_leaves_the_download_whole(stub, data_dir):
    data = onnx_identity()
    upload(stub, onnx_header("clf", data), data)
    request = registry_pb2.DownloadVersionRequest(
        ref=common_pb2.VersionRef(model="clf", version=1), chunk_size=4096
    )
    responses = stub.DownloadVersion(request)
    header = next(responses).header
    stub.DeleteVersion(registry_pb2.DeleteVersionRequest(model="clf", version=1))
    assert not (data_dir / "blobs" / "sha256" / header.sha256[:2] / header.sha256[2:]).exists()
    assert b"".join(r.chunk for r in responses) == data

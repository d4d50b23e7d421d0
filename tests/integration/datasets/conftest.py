"""Datasets test helpers: npz/npy bytes built in memory, and uploads."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc

CHUNK = 64 * 1024


def npz_bytes(n: int = 100, compressed: bool = False, **arrays: np.ndarray) -> bytes:
    if not arrays:
        rng = np.random.default_rng(0)
        arrays = {
            "x": rng.normal(size=(n, 2, 3, 4, 4, 4)).astype(np.float32),
            "y": (np.arange(n) % 3).astype(np.int64),
        }
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def dataset_requests(
    header: datasets_pb2.UploadDatasetHeader, data: bytes
) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    yield datasets_pb2.UploadDatasetRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield datasets_pb2.UploadDatasetRequest(chunk=data[start : start + CHUNK])


def upload_dataset(stub, name: str, data: bytes, **fields) -> datasets_pb2.DatasetVersion:
    values = {
        "name": name,
        "format": datasets_pb2.DATASET_FORMAT_NPZ,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    values.update(fields)
    return stub.UploadDataset(dataset_requests(datasets_pb2.UploadDatasetHeader(**values), data), timeout=60)


@pytest.fixture
def ds(channel: grpc.Channel) -> datasets_pb2_grpc.DatasetsStub:
    return datasets_pb2_grpc.DatasetsStub(channel)

"""An upload that sends more bytes than its header declared is refused as soon as it does, not
after the rest has been received and written: a wrong file sent under another's header could
fill the disk up to the size limit before the end of its stream said so."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import grpc

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, registry_pb2
from tests.integration.datasets.conftest import npz_bytes
from tests.integration.registry.conftest import CHUNK, onnx_header, onnx_identity, rpc_error, stored_blobs

# How long a stream stays open for the test before it ends by itself; the refusal comes first.
HELD_S = 60


def held_stream(
    message: type, header: object, chunks: list[bytes], release: threading.Event
) -> Iterator[object]:
    """The header and `chunks`; then the stream stays open, as a client still sending would,
    until `release`."""
    yield message(header=header)
    for chunk in chunks:
        yield message(chunk=chunk)
    release.wait(HELD_S)


def test_a_model_upload_past_its_declared_size_is_refused_at_once(stub, data_dir):
    data = onnx_identity()
    release = threading.Event()
    # A first chunk short of the declared size, so that the upload is streamed, not taken whole.
    chunks = [data[:10], data[10:] + b"\x00" * CHUNK]
    try:
        requests = held_stream(registry_pb2.UploadVersionRequest, onnx_header("clf", data), chunks, release)
        error = rpc_error(stub.UploadVersion, requests, timeout=2 * HELD_S)
    finally:
        release.set()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than the {len(data)} bytes the header declared" in error.details()
    assert stored_blobs(data_dir) == []


def test_a_dataset_upload_past_its_declared_size_is_refused_at_once(channel, data_dir):
    ds = datasets_pb2_grpc.DatasetsStub(channel)
    data = npz_bytes(10)
    header = datasets_pb2.UploadDatasetHeader(
        name="clips",
        format=datasets_pb2.DATASET_FORMAT_NPZ,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data) - 1,
    )
    release = threading.Event()
    try:
        requests = held_stream(datasets_pb2.UploadDatasetRequest, header, [data], release)
        error = rpc_error(ds.UploadDataset, requests, timeout=2 * HELD_S)
    finally:
        release.set()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than the {len(data) - 1} bytes the header declared" in error.details()
    assert stored_blobs(data_dir) == []

"""DownloadDataset from an offset: a download cut short resumes where it stopped, and what was kept
plus what follows is the stored file, verified whole by the daemon."""

from __future__ import annotations

import hashlib
import math

import grpc
import pytest

from tessera.v1 import common_pb2, datasets_pb2
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error

D = datasets_pb2


def download(ds, offset: int, chunk_size: int = 4096) -> tuple[D.DatasetVersion, list[bytes]]:
    """The header and the chunks sent after it."""
    request = D.DownloadDatasetRequest(
        ref=common_pb2.DatasetRef(name="clips", version=1), chunk_size=chunk_size, offset=offset
    )
    responses = list(ds.DownloadDataset(request, timeout=60))
    return responses[0].header, [r.chunk for r in responses[1:]]


@pytest.mark.parametrize("offset", [1, 4095, 4096, 10_000])
def test_a_download_resumed_at_an_offset_sends_the_rest_of_the_file(ds, offset):
    data = npz_bytes(20)
    upload_dataset(ds, "clips", data)
    header, chunks = download(ds, offset)
    assert b"".join(chunks) == data[offset:] and all(chunks)
    assert (header.sha256, header.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_download_resumed_at_the_end_sends_no_chunk(ds):
    data = npz_bytes(20)
    upload_dataset(ds, "clips", data)
    header, chunks = download(ds, len(data))
    assert chunks == [] and header.size_bytes == len(data)


def test_a_download_from_an_offset_reads_a_chunk_a_step_up_to_it(ds, daemon):
    """Each step of the stream runs on a worker thread of the daemon's shared pool, which a
    cancelled call cannot stop: the bytes before the offset, read and hashed in one step, held it
    for the whole file. A step now reads one chunk, and one before the offset has nothing to send."""
    data = npz_bytes(20)
    upload_dataset(ds, "clips", data)
    datasets = daemon.daemon.datasets
    chunks = datasets.read_chunks(datasets.resolve("clips", 1), 4096, len(data))
    assert list(chunks) == [b""] * math.ceil(len(data) / 4096)


def test_a_negative_offset_is_invalid_argument(ds):
    upload_dataset(ds, "clips", npz_bytes(20))
    error = rpc_error(download, ds, -1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == "offset must be >= 0 (0: from the file's start), got -1"


def test_an_offset_past_the_end_is_out_of_range_naming_the_size(ds):
    # It was INVALID_ARGUMENT, where DownloadVersion and DownloadRunArtifact answer OUT_OF_RANGE.
    data = npz_bytes(20)
    upload_dataset(ds, "clips", data)
    error = rpc_error(download, ds, 10**9)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE, error.details()
    assert error.details() == (
        f"offset 1000000000 is past the end of clips v1's file ({len(data)} bytes); "
        f"resume at most at {len(data)}"
    )


def test_a_resumed_download_of_a_file_damaged_before_the_offset_is_data_loss(ds, data_dir):
    data = npz_bytes(20)
    version = upload_dataset(ds, "clips", data)
    blob = data_dir / "blobs" / "sha256" / version.sha256[:2] / version.sha256[2:]
    damaged = bytearray(blob.read_bytes())
    damaged[10] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    error = rpc_error(download, ds, len(data) // 2)
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()

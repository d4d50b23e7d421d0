"""DownloadVersion from an offset: a download cut short resumes where it stopped, the header
still describing the whole artifact, which the daemon verifies whole."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from tessera.v1 import common_pb2
from tessera.v1 import registry_pb2 as pb
from tests.integration.registry.conftest import (
    mlp_architecture,
    mlp_weights,
    rpc_error,
    safetensors_header,
    upload,
)

# The smallest chunk a download may ask for; the weights span several.
CHUNK = 4096
HIDDEN = 512


@pytest.fixture
def weights() -> bytes:
    return mlp_weights(HIDDEN)


def header_of(weights: bytes) -> pb.UploadVersionHeader:
    return safetensors_header("mlp", weights, architecture=mlp_architecture(HIDDEN))


def download(stub, offset: int) -> tuple[pb.ModelVersion, list[bytes]]:
    """The header and the chunks sent after it."""
    request = pb.DownloadVersionRequest(
        ref=common_pb2.VersionRef(model="mlp", version=1), chunk_size=CHUNK, offset=offset
    )
    responses = list(stub.DownloadVersion(request, timeout=60))
    return responses[0].header, [r.chunk for r in responses[1:]]


@pytest.mark.parametrize("offset", [0, 1, CHUNK - 1, CHUNK, CHUNK * 3 + 5])
def test_a_download_resumed_at_an_offset_sends_the_rest_of_the_artifact(stub, weights, offset):
    upload(stub, header_of(weights), weights)
    header, chunks = download(stub, offset)
    assert b"".join(chunks) == weights[offset:] and all(chunks)
    assert (header.sha256, header.size_bytes) == (hashlib.sha256(weights).hexdigest(), len(weights))


def test_a_download_resumed_at_the_end_sends_no_chunk(stub, weights):
    upload(stub, header_of(weights), weights)
    header, chunks = download(stub, len(weights))
    assert chunks == [] and header.size_bytes == len(weights)


def test_a_negative_offset_is_invalid_argument(stub, weights):
    upload(stub, header_of(weights), weights)
    error = rpc_error(download, stub, -1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == "offset must be >= 0 (0: from the file's start), got -1"


def test_an_offset_past_the_artifact_is_out_of_range_naming_its_size(stub, weights):
    upload(stub, header_of(weights), weights)
    error = rpc_error(download, stub, len(weights) + 1)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE, error.details()
    assert error.details() == (
        f"offset {len(weights) + 1} is past the end of mlp v1's artifact ({len(weights)} bytes); "
        f"resume at most at {len(weights)}"
    )


def test_a_resumed_download_of_an_artifact_damaged_before_the_offset_is_data_loss(stub, weights, data_dir):
    version = upload(stub, header_of(weights), weights)
    blob = data_dir / "blobs" / "sha256" / version.sha256[:2] / version.sha256[2:]
    damaged = bytearray(blob.read_bytes())
    damaged[1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    error = rpc_error(download, stub, len(weights) - 1)
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()

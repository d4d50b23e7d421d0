"""Damaged or foreign safetensors files are refused with INVALID_ARGUMENT saying what is wrong,
store nothing, and no message names a path on the server (the data directory)."""

from __future__ import annotations

import json
import struct

import grpc
import pytest

from tests.integration.registry.conftest import (
    mlp_weights,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


GOOD = mlp_weights()

SAFETENSORS_CASES = {
    "random bytes": (b"\xff" * 100, "its first 8 bytes do not give a plausible header length"),
    "too short": (b"\x01\x02\x03", "too short to hold a safetensors header"),
    "header not JSON": (safetensors_bytes(b"{not json"), "invalid JSON in header"),
    "tensor without shape": (
        safetensors_bytes({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4),
        "missing field `shape`",
    ),
    "unknown dtype": (
        safetensors_bytes({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "unknown variant `F99`",
    ),
    "shape that does not fit its bytes": (
        safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "invalid shape, data type, or offset for tensor",
    ),
    "offsets past the data": (
        safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        "truncated or damaged",
    ),
    "truncated": (GOOD[:-5], "truncated or damaged"),
}


def assert_names_no_server_path(error: grpc.RpcError, data_dir) -> None:
    details = error.details()
    assert str(data_dir) not in details and "blobs" not in details and "/tmp" not in details, details


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_bad_safetensors_say_what_is_wrong(stub, data_dir, case):
    data, reason = SAFETENSORS_CASES[case]
    error = rpc_error(upload, stub, safetensors_header("mlp", data), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the artifact is not a valid safetensors file: " in error.details() and reason in error.details()
    assert_names_no_server_path(error, data_dir)
    assert stored_blobs(data_dir) == []


def test_a_good_safetensors_file_counts_its_parameters(stub):
    version = upload(stub, safetensors_header("mlp", GOOD), GOOD)
    assert version.parameter_count == 4 * 8 + 8 + 8 * 2 + 2  # the MLP 4 -> 8 -> 2

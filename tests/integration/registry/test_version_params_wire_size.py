"""A version's params bound counts what each param adds on the wire beside its UTF-8, as a run's
does: hundreds of thousands of params of a few bytes each stayed within 2 MiB of text and took
more than the 4 MiB a GetVersion answer may take, so no client could read the version back."""

from __future__ import annotations

import itertools

import grpc

from tessera.v1 import common_pb2, registry_pb2
from tesserad.store import BlobRef
from tests.conftest import InProcessDaemon
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs, upload

R = registry_pb2

ANSWER_LIMIT = 4 * 2**20


def tiny_params(count: int) -> dict[str, str]:
    """`count` params of a 3-character key and an empty value: 3 bytes of text, 7 or more on the wire."""
    letters = [chr(c) for c in range(33, 127)]
    return {"".join(key): "" for key in itertools.islice(itertools.product(letters, repeat=3), count)}


# 2.07 MB of text, within 2 MiB; over 4.8 MB on the wire.
TINY = tiny_params(690_000)


def test_many_tiny_params_are_refused_counting_their_wire_bytes(stub, data_dir):
    data = onnx_identity()
    header = onnx_header("m", data, params=TINY)
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=data))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    size = 14 * len(TINY)
    assert error.details() == (
        f"a model version's params take at most 2 MiB together, these take 9.21 MiB ({size} bytes, "
        "counting 11 bytes a param beside its UTF-8); keep large values, or many small ones, in a file "
        "(a run artifact, UploadRunArtifact) and record its path"
    )
    assert stored_blobs(data_dir) == []
    missing = rpc_error(stub.GetModel, R.GetModelRequest(name="m"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_the_most_tiny_params_the_bound_takes_are_read_back(stub):
    data = onnx_identity()
    most = tiny_params((2 * 2**20) // 14)
    upload(stub, onnx_header("m", data, params=most), data)
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=1)))
    assert len(got.params) == len(most) and got.ByteSize() < ANSWER_LIMIT


def test_a_trained_versions_tiny_params_are_cut_to_an_answer_a_client_reads(daemon: InProcessDaemon, stub):
    data = onnx_identity()
    stored = upload(stub, onnx_header("m", data), data)
    record = daemon.daemon.registry.register_version(
        "m", format="onnx", blob=BlobRef(stored.sha256, stored.size_bytes), params=TINY
    )
    # Over the test's channel, which takes gRPC's default of 4 MiB an answer.
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=record.version)))
    assert got.ByteSize() < ANSWER_LIMIT
    left_out = got.params["tessera.params_left_out"]
    kept = len(got.params) - 1
    assert left_out.startswith(f"{len(TINY) - kept} params left out to keep a version's params within 2 MiB")
    assert sum(len(k) + len(v) + 11 for k, v in got.params.items()) <= 2 * 2**20

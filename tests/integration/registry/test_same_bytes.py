"""An upload's answer names the model's versions that already hold its bytes (same sha256): the
newest few of them and how many, read from the blob's holders in the registering transaction."""

from __future__ import annotations

from tessera.v1 import common_pb2, registry_pb2
from tesserad.registry.versions import SAME_BYTES_LISTED
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload

R = registry_pb2


def _batch(stub, model: str, data: bytes, count: int) -> list[R.ModelVersion]:
    item = R.UploadVersionInlineRequest(header=onnx_header(model, data), artifact=data)
    return list(stub.UploadVersionBatch(R.UploadVersionBatchRequest(items=[item] * count)).versions)


def test_an_upload_names_the_versions_of_its_model_that_hold_its_bytes(stub):
    first, other = onnx_identity(4), onnx_identity(5)
    v1 = upload(stub, onnx_header("m", first), first)
    assert v1.HasField("same_bytes") and list(v1.same_bytes.versions) == [] and v1.same_bytes.count == 0
    upload(stub, onnx_header("m", other), other)
    # Models whose holder names sort just before and after m's hold the bytes too.
    for neighbour in ("m-1", "ma"):
        upload(stub, onnx_header(neighbour, first), first)
    v3 = upload(stub, onnx_header("m", first), first)
    assert (list(v3.same_bytes.versions), v3.same_bytes.count) == ([1], 1)
    # Another model's versions of those bytes are its own.
    n1 = upload(stub, onnx_header("n", first), first)
    assert (list(n1.same_bytes.versions), n1.same_bytes.count) == ([], 0)
    # A deleted version holds them no more.
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=1))
    v4 = upload(stub, onnx_header("m", first), first)
    assert (list(v4.same_bytes.versions), v4.same_bytes.count) == ([3], 1)
    # Only an upload's answer says it.
    read = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=4)))
    assert not read.HasField("same_bytes")


def test_an_upload_of_bytes_many_versions_hold_names_the_newest_of_them(stub):
    data = onnx_identity(4)
    held = _batch(stub, "m", data, SAME_BYTES_LISTED + 2)
    # Each of a batch's versions names those before it.
    assert [v.same_bytes.count for v in held] == list(range(SAME_BYTES_LISTED + 2))
    latest = upload(stub, onnx_header("m", data), data)
    newest = sorted((v.version for v in held), reverse=True)[:SAME_BYTES_LISTED]
    assert list(latest.same_bytes.versions) == newest
    assert latest.same_bytes.count == SAME_BYTES_LISTED + 2

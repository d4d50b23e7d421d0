"""UploadVersionInline (the header and the whole artifact in one message) against a real daemon,
and what a registration promises once it is answered: it survives the daemon being killed right
after the reply, and a failed one leaves no version, no blob and no reference to a blob."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.datasets.references import BLOB_HOLDERS
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    mlp_weights,
    onnx_header,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)
from tests.integration.registry.test_registry_uploads import download, version_count


def inline(header: registry_pb2.UploadVersionHeader, data: bytes) -> registry_pb2.UploadVersionInlineRequest:
    return registry_pb2.UploadVersionInlineRequest(header=header, artifact=data)


def test_inline_upload_registers_the_same_version_a_stream_does(stub, weights):
    version = stub.UploadVersionInline(
        inline(safetensors_header("mlp", weights, params={"lr": "0.1"}, alias="candidate"), weights)
    )
    assert (version.model, version.version, version.size_bytes) == ("mlp", 1, len(weights))
    assert version.sha256 == hashlib.sha256(weights).hexdigest()
    assert version.parameter_count == 4 * 8 + 8 + 8 * 2 + 2
    assert sorted(version.aliases) == ["candidate", "latest"] and version.params == {"lr": "0.1"}
    header, data = download(stub, common_pb2.VersionRef(model="mlp", version=1))
    assert data == weights and header.sha256 == version.sha256
    streamed = upload(stub, safetensors_header("mlp", weights), weights)
    assert streamed.version == 2 and streamed.sha256 == version.sha256


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"sha256": "0" * 64}, grpc.StatusCode.INVALID_ARGUMENT, "checksum mismatch"),
        ({"size_bytes": 7}, grpc.StatusCode.INVALID_ARGUMENT, "header declared 7"),
        ({"sha256": "abc"}, grpc.StatusCode.INVALID_ARGUMENT, "header.sha256 must be 64 lowercase hex"),
        ({"create_model": False}, grpc.StatusCode.NOT_FOUND, "'mlp'"),
        ({"architecture": None}, grpc.StatusCode.INVALID_ARGUMENT, "architecture is required"),
    ],
)
def test_a_refused_inline_upload_stores_nothing(stub, weights, data_dir, change, code, words):
    header = safetensors_header("mlp", weights)
    for field, value in change.items():
        if value is None:
            header.ClearField(field)
        else:
            setattr(header, field, value)
    error = rpc_error(stub.UploadVersionInline, inline(header, weights))
    assert error.code() == code and words in error.details()
    assert version_count(stub, "mlp") == 0
    assert [b for b in stored_blobs(data_dir) if not b.startswith("tmp/")] == []


def test_an_invalid_artifact_inline_is_invalid_argument_and_stores_nothing(stub, data_dir):
    junk = b"not a safetensors file at all"
    error = rpc_error(stub.UploadVersionInline, inline(safetensors_header("mlp", junk), junk))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid safetensors file" in error.details()
    onnx_error = rpc_error(stub.UploadVersionInline, inline(onnx_header("graph", junk), junk))
    assert onnx_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ONNX model" in onnx_error.details()
    assert stored_blobs(data_dir) == []


def test_an_inline_upload_over_max_message_size_names_it_and_stores_nothing(data_dir, weights):
    daemon = InProcessDaemon(daemon_settings(data_dir, max_message_size="256B")).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        error = rpc_error(stub.UploadVersionInline, inline(safetensors_header("mlp", weights), weights))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_size" in error.details()
        assert version_count(stub, "mlp") == 0
    finally:
        daemon.stop()
    assert stored_blobs(data_dir) == []


def blob_holders(data_dir) -> list[tuple[str, str]]:
    """(sha256, holder) of every stored blob reference, read from the store of a stopped daemon."""
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            return sorted((str(key[0]), str(key[1])) for key, _ in txn.scan(BLOB_HOLDERS))
    finally:
        store.close()


def test_failed_registrations_among_concurrent_ones_leave_no_version_blob_or_reference(data_dir):
    """Registrations that fail inside the shared group commit (a missing lineage parent) or
    before it (a damaged artifact) leave nothing; those committed with them are whole, a blob
    that a failed one shares with one of them too."""
    good = [mlp_weights(seed=i) for i in range(6)]
    orphans = [mlp_weights(seed=100 + i) for i in range(5)] + [good[2]]
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        upload(stub, safetensors_header("mlp", good[0]), good[0])
        missing_parent = registry_pb2.Lineage(parent_version=999)

        def register(data: bytes, fail: bool) -> grpc.StatusCode:
            lineage = missing_parent if fail else registry_pb2.Lineage()
            try:
                stub.UploadVersionInline(
                    inline(safetensors_header("mlp", data, lineage=lineage), data), timeout=60
                )
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        truncated = orphans[0][:-8]
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(register, good[1:] + orphans[1:], [False] * 5 + [True] * 5))
            bad = rpc_error(stub.UploadVersionInline, inline(safetensors_header("mlp", truncated), truncated))
        assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.NOT_FOUND] * 5
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert version_count(stub, "mlp") == 6
    finally:
        daemon.stop()
    good_sha = sorted(hashlib.sha256(d).hexdigest() for d in good)
    assert [b.replace("/", "")[len("sha256") :] for b in stored_blobs(data_dir)] == good_sha
    holders = blob_holders(data_dir)
    assert sorted(sha for sha, _ in holders) == good_sha
    assert sorted(holder for _, holder in holders) == sorted(f"model:mlp:{v}" for v in range(1, 7))


def test_acknowledged_registrations_survive_sigkill_right_after_the_reply(spawn_daemon, tmp_path):
    """The daemon is killed from the callback of a reply while registrations are in flight:
    every version a client was answered for is there after a restart, its blob whole."""
    data_dir = tmp_path / "killed"
    args = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off"]
    daemon = spawn_daemon(*args)
    channel = grpc.insecure_channel(daemon.wait_serving())
    stub = registry_pb2_grpc.RegistryStub(channel)
    artifacts = [mlp_weights(seed=i) for i in range(24)]
    acknowledged: dict[int, bytes] = {}
    lock = threading.Lock()

    def answered(data: bytes, future: grpc.Future) -> None:
        if future.exception() is not None:
            return
        with lock:
            acknowledged[future.result().version] = data
            if len(acknowledged) == 8:
                daemon.process.kill()

    futures = []
    for i, data in enumerate(artifacts):
        header = safetensors_header("mlp", data)
        future = (
            stub.UploadVersionInline.future(inline(header, data), timeout=60)
            if i % 2
            else stub.UploadVersion.future(iter(_stream(header, data)), timeout=60)
        )
        future.add_done_callback(lambda f, data=data: answered(data, f))
        futures.append(future)
    for future in futures:
        # One cut off by the kill was never acknowledged: nothing is promised about it.
        with contextlib.suppress(grpc.RpcError):
            future.result()
    channel.close()
    daemon.process.wait(10)
    assert len(acknowledged) >= 8

    restarted = spawn_daemon(*args)
    channel = grpc.insecure_channel(restarted.wait_serving())
    stub = registry_pb2_grpc.RegistryStub(channel)
    for number, data in acknowledged.items():
        header, stored = download(stub, common_pb2.VersionRef(model="mlp", version=number))
        assert stored == data and header.sha256 == hashlib.sha256(data).hexdigest(), number
    channel.close()


def _stream(header: registry_pb2.UploadVersionHeader, data: bytes) -> list[registry_pb2.UploadVersionRequest]:
    return [registry_pb2.UploadVersionRequest(header=header), registry_pb2.UploadVersionRequest(chunk=data)]

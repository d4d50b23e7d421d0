"""UploadVersionBatch (many small versions in one call) against a real daemon: all or nothing,
numbered in the order sent, every item checked as UploadVersionInline checks it, and durable
once answered (the daemon killed right after replies loses none of them)."""

from __future__ import annotations

import contextlib
import hashlib
import threading

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    mlp_weights,
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
)
from tests.integration.registry.test_inline_uploads import blob_holders
from tests.integration.registry.test_registry_uploads import download, version_count


def batch(*items: tuple[registry_pb2.UploadVersionHeader, bytes]) -> registry_pb2.UploadVersionBatchRequest:
    return registry_pb2.UploadVersionBatchRequest(
        items=[registry_pb2.UploadVersionInlineRequest(header=h, artifact=d) for h, d in items]
    )


def finished_blobs(data_dir) -> list[str]:
    return [b for b in stored_blobs(data_dir) if not b.startswith("tmp/")]


def test_a_batch_registers_every_version_in_order_across_models(stub):
    artifacts = [mlp_weights(seed=i) for i in range(5)]
    graph = onnx_identity()
    items = [(safetensors_header("mlp", d, params={"i": str(i)}), d) for i, d in enumerate(artifacts)]
    items.insert(2, (onnx_header("graph", graph, alias="candidate"), graph))
    response = stub.UploadVersionBatch(batch(*items), timeout=60)
    got = [(v.model, v.version, v.params.get("i", "")) for v in response.versions]
    assert got == [
        ("mlp", 1, "0"),
        ("mlp", 2, "1"),
        ("graph", 1, ""),
        ("mlp", 3, "2"),
        ("mlp", 4, "3"),
        ("mlp", 5, "4"),
    ]
    assert "candidate" in response.versions[2].aliases
    assert version_count(stub, "mlp") == 5 and version_count(stub, "graph") == 1
    for number, data in enumerate(artifacts, start=1):
        header, stored = download(stub, common_pb2.VersionRef(model="mlp", version=number))
        assert stored == data and header.sha256 == hashlib.sha256(data).hexdigest()


def test_the_same_artifact_twice_in_a_batch_is_two_versions_of_one_blob(stub, weights, data_dir):
    response = stub.UploadVersionBatch(
        batch((safetensors_header("mlp", weights), weights), (safetensors_header("mlp", weights), weights))
    )
    assert [v.version for v in response.versions] == [1, 2]
    assert len(finished_blobs(data_dir)) == 1


def _set(field: str, value):
    def change(header: registry_pb2.UploadVersionHeader) -> None:
        if value is None:
            header.ClearField(field)
        else:
            setattr(header, field, value)

    return change


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        (_set("sha256", "0" * 64), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: checksum mismatch"),
        (_set("size_bytes", 7), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: received"),
        (_set("sha256", "abc"), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: header.sha256 must be 64"),
        (_set("model", "no spaces"), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: "),
        (_set("architecture", None), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: architecture is required"),
        (_set("create_model", False), grpc.StatusCode.NOT_FOUND, "items[2]: "),
        (
            lambda h: h.lineage.CopyFrom(registry_pb2.Lineage(parent_version=99)),
            grpc.StatusCode.NOT_FOUND,
            "items[2]: lineage.parent_version",
        ),
        (lambda h: h.metrics.update({"loss": float("nan")}), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: "),
        (_set("alias", "latest"), grpc.StatusCode.INVALID_ARGUMENT, "items[2]: "),
    ],
)
def test_one_bad_item_fails_the_batch_and_stores_nothing(stub, data_dir, change, code, words):
    artifacts = [mlp_weights(seed=i) for i in range(4)]
    headers = [safetensors_header("other" if i == 2 else "mlp", d) for i, d in enumerate(artifacts)]
    change(headers[2])
    error = rpc_error(stub.UploadVersionBatch, batch(*zip(headers, artifacts, strict=True)), timeout=60)
    assert error.code() == code, error.details()
    assert words in error.details()
    assert version_count(stub, "mlp") == 0 and version_count(stub, "other") == 0
    assert finished_blobs(data_dir) == []


def test_a_bad_artifact_in_a_batch_names_its_item_and_keeps_blobs_others_hold(stub, weights, data_dir):
    kept = stub.UploadVersionInline(
        registry_pb2.UploadVersionInlineRequest(header=safetensors_header("mlp", weights), artifact=weights)
    )
    junk = b"not a safetensors file at all"
    fresh = mlp_weights(seed=7)
    error = rpc_error(
        stub.UploadVersionBatch,
        batch(
            (safetensors_header("mlp", weights), weights),
            (safetensors_header("mlp", fresh), fresh),
            (safetensors_header("mlp", junk), junk),
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("items[2]: ") and "not a valid safetensors file" in error.details()
    assert version_count(stub, "mlp") == 1
    assert [b.replace("/", "")[len("sha256") :] for b in finished_blobs(data_dir)] == [kept.sha256]


def test_an_empty_or_oversized_batch_is_invalid_argument(stub, weights):
    empty = rpc_error(stub.UploadVersionBatch, registry_pb2.UploadVersionBatchRequest())
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "items is empty" in empty.details()
    header = safetensors_header("mlp", weights)
    too_many = rpc_error(stub.UploadVersionBatch, batch(*[(header, weights)] * 1001), timeout=60)
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 versions, got 1001" in too_many.details()
    assert version_count(stub, "mlp") == 0


def test_a_failed_batch_leaves_no_blob_reference(data_dir):
    good, orphan = mlp_weights(seed=1), mlp_weights(seed=2)
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        stub.UploadVersionBatch(batch((safetensors_header("mlp", good), good)))
        # Fails inside the shared transaction, after the first item was recorded in it.
        bad = safetensors_header("mlp", orphan, lineage=registry_pb2.Lineage(parent_version=5))
        error = rpc_error(
            stub.UploadVersionBatch, batch((safetensors_header("mlp", orphan), orphan), (bad, orphan))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("items[1]: ")
        assert version_count(stub, "mlp") == 1
    finally:
        daemon.stop()
    assert blob_holders(data_dir) == [(hashlib.sha256(good).hexdigest(), "model:mlp:1")]
    assert len(finished_blobs(data_dir)) == 1


def test_acknowledged_batches_survive_sigkill_right_after_the_reply(spawn_daemon, tmp_path):
    """The daemon is killed from the callback of a batch's reply while others are in flight:
    every version of every answered batch is there after a restart, its blob whole."""
    data_dir = tmp_path / "killed"
    args = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off"]
    daemon = spawn_daemon(*args)
    channel = grpc.insecure_channel(daemon.wait_serving())
    stub = registry_pb2_grpc.RegistryStub(channel)
    batches = [[mlp_weights(seed=10 * b + i) for i in range(6)] for b in range(8)]
    acknowledged: dict[int, bytes] = {}
    lock = threading.Lock()

    def answered(artifacts: list[bytes], future: grpc.Future) -> None:
        if future.exception() is not None:
            return
        with lock:
            for version, data in zip(future.result().versions, artifacts, strict=True):
                acknowledged[version.version] = data
            if len(acknowledged) >= 12:
                daemon.process.kill()

    futures = []
    for artifacts in batches:
        request = batch(*[(safetensors_header("mlp", d), d) for d in artifacts])
        future = stub.UploadVersionBatch.future(request, timeout=60)
        future.add_done_callback(lambda f, artifacts=artifacts: answered(artifacts, f))
        futures.append(future)
    for future in futures:
        # A batch cut off by the kill was never acknowledged: nothing is promised about it.
        with contextlib.suppress(grpc.RpcError):
            future.result()
    channel.close()
    daemon.process.wait(10)
    assert len(acknowledged) >= 12

    restarted = spawn_daemon(*args)
    channel = grpc.insecure_channel(restarted.wait_serving())
    stub = registry_pb2_grpc.RegistryStub(channel)
    for number, data in acknowledged.items():
        header, stored = download(stub, common_pb2.VersionRef(model="mlp", version=number))
        assert stored == data and header.sha256 == hashlib.sha256(data).hexdigest(), number
    channel.close()

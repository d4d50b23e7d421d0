"""UploadVersion / DownloadVersion against a real daemon: checksums, limits, cancellation, ONNX checks."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    CHUNK,
    mlp_signature,
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)


def version_count(stub, model: str) -> int:
    """How many versions the model has; 0 when it does not exist (a failed upload creates nothing)."""
    try:
        return stub.GetModel(registry_pb2.GetModelRequest(name=model)).version_count
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0


def download(
    stub, ref: common_pb2.VersionRef, chunk_size: int = 0
) -> tuple[registry_pb2.ModelVersion, bytes]:
    responses = list(
        stub.DownloadVersion(registry_pb2.DownloadVersionRequest(ref=ref, chunk_size=chunk_size))
    )
    assert responses[0].WhichOneof("part") == "header"
    return responses[0].header, b"".join(r.chunk for r in responses[1:])


def test_upload_then_download_round_trips_the_bytes(stub, weights, data_dir):
    version = upload(
        stub, safetensors_header("mlp", weights, params={"lr": "0.1"}, metrics={"acc": 0.9}), weights
    )
    assert (version.model, version.version, version.size_bytes) == ("mlp", 1, len(weights))
    assert version.sha256 == hashlib.sha256(weights).hexdigest()
    assert version.parameter_count == 4 * 8 + 8 + 8 * 2 + 2
    assert version.architecture.mlp.hidden_sizes == [8]
    assert list(version.aliases) == ["latest"]
    header, data = download(stub, common_pb2.VersionRef(model="mlp"), chunk_size=4096)
    assert data == weights
    assert header.sha256 == hashlib.sha256(data).hexdigest()
    assert header.params == {"lr": "0.1"} and header.metrics["acc"] == pytest.approx(0.9)


def test_checksum_mismatch_is_invalid_argument_and_stores_nothing(stub, weights, data_dir):
    header = safetensors_header("mlp", weights, sha256="0" * 64)
    error = rpc_error(upload, stub, header, weights)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum mismatch" in error.details() and "0" * 64 in error.details()
    assert version_count(stub, "mlp") == 0
    assert stored_blobs(data_dir) == []


def test_stream_that_ends_early_stores_nothing(stub, weights, data_dir):
    header = safetensors_header("mlp", weights)
    error = rpc_error(upload, stub, header, weights[: len(weights) // 2])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"declared {len(weights)}" in error.details()
    assert stored_blobs(data_dir) == []


def test_header_rules(stub, weights):
    cases = [
        (safetensors_header("mlp", weights, sha256="abc"), "header.sha256 must be 64 lowercase hex digits"),
        (
            # Refused before the bytes are sent, not as a checksum mismatch after them.
            safetensors_header("mlp", weights, sha256=hashlib.sha256(weights).hexdigest() + "\n"),
            "header.sha256 must be 64 lowercase hex digits",
        ),
        (safetensors_header("mlp", weights, format=0), "format must be safetensors, onnx or ensemble"),
        # A value this daemon does not know (a newer client's) is named, not called unspecified.
        (
            safetensors_header("mlp", weights, format=99),
            "format must be safetensors, onnx or ensemble, got 99",
        ),
        (safetensors_header("Bad Name", weights), "model 'Bad Name' is not a valid name"),
        (safetensors_header("mlp", weights, architecture=None), "architecture is required"),
        (
            safetensors_header("mlp", weights, signature=common_pb2.Signature(inputs=mlp_signature().inputs)),
            "signature needs at least one input and one output",
        ),
        (safetensors_header("mlp", weights, size_bytes=0), "size_bytes must be the artifact's size"),
    ]
    for header, message in cases:
        error = rpc_error(upload, stub, header, weights)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in error.details()
    missing = rpc_error(upload, stub, safetensors_header("nobody", weights, create_model=False), weights)
    assert (
        missing.code() == grpc.StatusCode.NOT_FOUND and "model 'nobody' does not exist" in missing.details()
    )
    chunk_first = rpc_error(stub.UploadVersion, iter([registry_pb2.UploadVersionRequest(chunk=b"x")]))
    assert chunk_first.code() == grpc.StatusCode.INVALID_ARGUMENT and "first message" in chunk_first.details()
    empty = rpc_error(stub.UploadVersion, iter([]))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "stream is empty" in empty.details()


def test_messages_after_a_whole_artifact_are_refused_after_the_header_checks(stub, weights, data_dir):
    """An upload whose first chunk holds every declared byte is read ahead to see whether the
    stream ends there; what follows is still refused as in any upload, and never first."""
    whole = registry_pb2.UploadVersionRequest(chunk=weights)
    header = registry_pb2.UploadVersionRequest(header=safetensors_header("mlp", weights))
    extra = rpc_error(
        stub.UploadVersion, iter([header, whole, registry_pb2.UploadVersionRequest(chunk=b"x")])
    )
    assert extra.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"received more than the {len(weights)} bytes the header declared" in extra.details()
    second_header = rpc_error(stub.UploadVersion, iter([header, whole, header]))
    assert second_header.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the first message of an upload may be a header" in second_header.details()
    bad_header = registry_pb2.UploadVersionRequest(header=safetensors_header("mlp", weights, format=0))
    both_wrong = rpc_error(stub.UploadVersion, iter([bad_header, whole, header]))
    assert both_wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format must be safetensors, onnx or ensemble" in both_wrong.details()
    assert version_count(stub, "mlp") == 0
    assert stored_blobs(data_dir) == []
    version = stub.UploadVersion(iter([header, whole]), timeout=60)
    assert (version.version, version.sha256) == (1, hashlib.sha256(weights).hexdigest())


def test_garbage_safetensors_is_invalid_argument_and_removed(stub, data_dir):
    data = b"\xff" * 100
    error = rpc_error(upload, stub, safetensors_header("mlp", data), data)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid safetensors file" in error.details()
    )
    assert stored_blobs(data_dir) == []


def test_onnx_upload_takes_the_graph_signature_and_checks_a_declared_one(stub, data_dir):
    graph = onnx_identity()
    version = upload(stub, onnx_header("tiny", graph), graph)
    assert [(t.name, list(t.shape)) for t in version.signature.inputs] == [("input", [-1, 4])]
    assert version.signature.outputs[0].dtype == common_pb2.DATA_TYPE_FLOAT32
    assert version.parameter_count == 8

    wrong = common_pb2.Signature(
        inputs=[common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 5])],
        outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT64, shape=[-1, 2])],
    )
    other = onnx_identity(width=4) + b""
    error = rpc_error(upload, stub, onnx_header("tiny", other, signature=wrong), other)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input': dim 1 is 5 but the graph fixes it at 4" in error.details()
    assert "output 'output': dtype float64 vs the graph's float32" in error.details()

    garbage = b"not an onnx model at all"
    error = rpc_error(upload, stub, onnx_header("tiny", garbage), garbage)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ONNX model" in error.details()
    assert stub.GetModel(registry_pb2.GetModelRequest(name="tiny")).version_count == 1
    assert len(stored_blobs(data_dir)) == 1


def test_cancelled_upload_stores_nothing(stub, weights, data_dir):
    sent_some = threading.Event()
    release = threading.Event()

    def requests():
        header = safetensors_header("mlp", weights + b"\0" * (4 * CHUNK))
        yield registry_pb2.UploadVersionRequest(header=header)
        yield registry_pb2.UploadVersionRequest(chunk=weights[:CHUNK])
        sent_some.set()
        release.wait(30)

    future = stub.UploadVersion.future(requests())
    assert sent_some.wait(30)
    deadline = time.monotonic() + 30
    while not list((data_dir / "blobs" / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the daemon is streaming into its temp file
    assert list((data_dir / "blobs" / "tmp").iterdir())
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    deadline = time.monotonic() + 30
    while stored_blobs(data_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stored_blobs(data_dir) == []
    assert version_count(stub, "mlp") == 0


def test_an_upload_cancelled_as_its_last_chunk_arrives_is_registered_or_leaves_nothing(
    stub, weights, data_dir
):
    """A cancel that lands between the last chunk and the registration must not leave the
    stored blob held by nobody (its put's claim kept it from deletion until a restart)."""
    for attempt in range(5):
        artifact = weights + bytes([attempt]) * (4 * CHUNK)
        sent_all = threading.Event()

        def requests(artifact: bytes = artifact, sent_all: threading.Event = sent_all):
            yield registry_pb2.UploadVersionRequest(header=safetensors_header("mlp", artifact))
            for start in range(0, len(artifact), CHUNK):
                yield registry_pb2.UploadVersionRequest(chunk=artifact[start : start + CHUNK])
            sent_all.set()

        future = stub.UploadVersion.future(requests())
        assert sent_all.wait(30)
        future.cancel()
        # Settled when every stored blob is some version's: a registration that ran holds its
        # blob, one that did not must have deleted it.
        deadline = time.monotonic() + 30
        while len(stored_blobs(data_dir)) != version_count(stub, "mlp") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(stored_blobs(data_dir)) == version_count(stub, "mlp")


@pytest.fixture
def small_limit_daemon(tmp_path):
    running = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"limits.max_artifact_size": "4KiB"})
    ).start()
    yield running
    running.stop()


def test_size_limit_is_resource_exhausted(small_limit_daemon, weights, tmp_path):
    stub = registry_pb2_grpc.RegistryStub(small_limit_daemon.channel())
    big = b"\0" * 8192
    error = rpc_error(upload, stub, onnx_header("m", big), big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over limits.max_artifact_size (4 KiB)" in error.details()
    # A header that understates the size is caught while the bytes stream in.
    error = rpc_error(upload, stub, onnx_header("m", big, size_bytes=100), big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than limits.max_artifact_size" in error.details()
    assert stored_blobs(tmp_path / "data") == []


def test_download_rules(stub, weights):
    upload(stub, safetensors_header("mlp", weights), weights)
    error = rpc_error(
        lambda: list(
            stub.DownloadVersion(
                registry_pb2.DownloadVersionRequest(
                    ref=common_pb2.VersionRef(model="mlp"), chunk_size=8 * 2**20
                )
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "chunk_size must be" in error.details()
    error = rpc_error(
        lambda: list(
            stub.DownloadVersion(
                registry_pb2.DownloadVersionRequest(ref=common_pb2.VersionRef(model="mlp", version=9))
            )
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "has no version 9" in error.details()


def test_damaged_blob_is_data_loss_on_download(stub, weights, data_dir):
    version = upload(stub, safetensors_header("mlp", weights), weights)
    path = data_dir / "blobs" / "sha256" / version.sha256[:2] / version.sha256[2:]
    path.chmod(0o644)
    path.write_bytes(b"x" * len(weights))
    error = rpc_error(download, stub, common_pb2.VersionRef(model="mlp"))
    assert error.code() == grpc.StatusCode.DATA_LOSS and "damaged" in error.details()


def test_versions_survive_a_restart(data_dir, weights):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload(stub, safetensors_header("mlp", weights), weights)
        stub.SetAlias(registry_pb2.SetAliasRequest(model="mlp", alias="production", version=1))
    finally:
        first.stop()
    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        header, data = download(stub, common_pb2.VersionRef(model="mlp", alias="production"))
        assert data == weights and header.version == 1
        assert sorted(header.aliases) == ["latest", "production"]
    finally:
        second.stop()


def test_sigkill_mid_upload_leaves_no_version_and_no_blob(spawn_daemon, tmp_path, weights):
    data_dir = tmp_path / "killed"
    args = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off"]
    daemon = spawn_daemon(*args)
    address = daemon.wait_serving()
    channel = grpc.insecure_channel(address)
    stub = registry_pb2_grpc.RegistryStub(channel)
    release = threading.Event()

    def requests():
        yield registry_pb2.UploadVersionRequest(header=safetensors_header("mlp", weights * 4))
        yield registry_pb2.UploadVersionRequest(chunk=weights)
        release.wait(30)

    future = stub.UploadVersion.future(requests())
    deadline = time.monotonic() + 30
    while not list((data_dir / "blobs" / "tmp").glob("upload-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list((data_dir / "blobs" / "tmp").glob("upload-*")), "the upload never reached the daemon"
    daemon.kill()
    release.set()
    with pytest.raises(grpc.RpcError):
        future.result()
    channel.close()

    restarted = spawn_daemon(*args)
    channel = grpc.insecure_channel(restarted.wait_serving())
    stub = registry_pb2_grpc.RegistryStub(channel)
    assert version_count(stub, "mlp") == 0
    assert stored_blobs(data_dir) == []
    channel.close()

"""A version's metrics take at most 512 KiB together, keys 1 to 250 characters, counted as its
params are (with a value's 8 bytes): their number was unbounded, and a version of a few hundred
thousand metrics took a GetVersion answer past gRPC's 4 MiB, after which no client could read
it. A trained (or exported) version's metrics must not fail its registration: the registry
leaves out what does not fit and names it in the param "tessera.metrics_left_out"."""

from __future__ import annotations

import itertools
import math

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2
from tesserad.store import BlobRef
from tests.conftest import InProcessDaemon
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs, upload

R = registry_pb2

ANSWER_LIMIT = 4 * 2**20
BOUND = 512 * 2**10


def tiny_metrics(count: int) -> dict[str, float]:
    """`count` metrics of a 3-character key: 22 bytes each by the bound's measure."""
    letters = [chr(c) for c in range(33, 127)]
    return {"".join(key): 0.5 for key in itertools.islice(itertools.product(letters, repeat=3), count)}


def measured(metrics: dict[str, float]) -> int:
    return sum(len(k.encode()) + 19 for k in metrics)


# 24,000 metrics: 528,000 bytes by the bound's measure, just over 512 KiB.
OVER = tiny_metrics(24_000)
MOST = tiny_metrics(BOUND // 22)


def test_metrics_over_512_kib_are_refused_on_every_upload_path(stub, data_dir):
    data = onnx_identity()
    header = onnx_header("m", data, metrics=OVER)
    streamed = rpc_error(upload, stub, header, data)
    inline = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=data))
    batch = rpc_error(
        stub.UploadVersionBatch,
        R.UploadVersionBatchRequest(items=[R.UploadVersionInlineRequest(header=header, artifact=data)]),
    )
    message = (
        f"a model version's metrics take at most 512 KiB together, these 24,000 take 516 KiB "
        f"({measured(OVER)} bytes, counting 19 bytes a metric beside its key's UTF-8); keep the "
        "version's summary metrics here and the rest as its run's metrics"
    )
    assert streamed.code() == grpc.StatusCode.INVALID_ARGUMENT and streamed.details() == message
    assert inline.code() == grpc.StatusCode.INVALID_ARGUMENT and inline.details() == message
    assert batch.code() == grpc.StatusCode.INVALID_ARGUMENT and batch.details() == f"items[0]: {message}"
    assert stored_blobs(data_dir) == []
    assert rpc_error(stub.GetModel, R.GetModelRequest(name="m")).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("key", "shown"),
    [("k" * 251, "k" * 80), ("", ""), ("a\nb", "a\nb")],
    ids=["too-long", "empty", "newline"],
)
def test_a_metric_key_outside_the_rule_is_refused(stub, data_dir, key, shown):
    data = onnx_identity()
    error = rpc_error(upload, stub, onnx_header("m", data, metrics={key: 1.0}), data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (f"metrics: key {shown!r} must be 1 to 250 characters without NUL or newlines")
    assert stored_blobs(data_dir) == []


def test_the_most_metrics_the_bound_takes_are_read_back(stub):
    data = onnx_identity()
    upload(stub, onnx_header("m", data, metrics=MOST), data)
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=1)))
    assert dict(got.metrics) == MOST and measured(MOST) <= BOUND


def test_a_trained_versions_metrics_are_cut_to_fit_and_named(daemon: InProcessDaemon, stub):
    data = onnx_identity()
    stored = upload(stub, onnx_header("m", data), data)
    # What a job's registration may pass: metrics of any number and key, a diverged loss among
    # them, and params over their own bound, so that both notes share the params' 2 MiB.
    metrics = {"val_loss": math.nan, "accuracy": 0.9, "k" * 251: 1.0, **tiny_metrics(30_000)}
    params = {f"note{j:03}": "x" * 6000 for j in range(360)}
    record = daemon.daemon.registry.register_version(
        "m", format="onnx", blob=BlobRef(stored.sha256, stored.size_bytes), params=params, metrics=metrics
    )
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=record.version)))
    assert got.ByteSize() < ANSWER_LIMIT
    # As many as fit, shortest keys first: every one kept is a 3-character one, in its value.
    assert len(got.metrics) == BOUND // 22 and set(got.metrics.values()) == {0.5}
    assert sum(len(k.encode()) + len(v.encode()) + 11 for k, v in got.params.items()) <= 2 * 2**20
    left_out = got.params["tessera.metrics_left_out"]
    assert left_out.startswith(
        f"{len(metrics) - len(got.metrics)} metrics left out (a version's metrics are finite, keyed by "
        f"1 to 250 characters, and take at most 512 KiB together): val_loss, accuracy, {'k' * 251}, "
    )
    assert left_out.endswith(" more")
    assert got.params["tessera.params_left_out"].startswith("13 params left out")


def test_metrics_within_the_bound_are_registered_unchanged(daemon: InProcessDaemon, stub):
    data = onnx_identity()
    stored = upload(stub, onnx_header("m", data), data)
    record = daemon.daemon.registry.register_version(
        "m", format="onnx", blob=BlobRef(stored.sha256, stored.size_bytes), metrics=MOST
    )
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=record.version)))
    assert dict(got.metrics) == MOST and "tessera.metrics_left_out" not in got.params

"""A version's params take at most 2 MiB together (keys and values, UTF-8), as a run's params and
tags do: each value was bounded, their number was not, and a version of more could not be read
back with GetVersion. A trained version's params come from its job and must not fail its
registration after the training: the registry leaves out what does not fit and says so."""

from __future__ import annotations

import grpc

from tessera.v1 import common_pb2, registry_pb2
from tesserad.store import BlobRef
from tests.conftest import InProcessDaemon
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, stored_blobs, upload

R = registry_pb2

# 360 values of the longest length a param may have: about 2.06 MiB.
OVER = {f"note{j:03}": "x" * 6000 for j in range(360)}


def test_params_over_2_mib_are_refused_on_every_upload_path(stub, data_dir):
    data = onnx_identity()
    header = onnx_header("m", data, params=OVER)
    size = sum(len(k) + len(v) + 11 for k, v in OVER.items())
    words = (
        f"a model version's params take at most 2 MiB together, these take 2.07 MiB ({size} bytes, "
        "counting 11 bytes a param beside its UTF-8)"
    )
    streamed = rpc_error(upload, stub, header, data)
    inline = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=data))
    batch = rpc_error(
        stub.UploadVersionBatch,
        R.UploadVersionBatchRequest(items=[R.UploadVersionInlineRequest(header=header, artifact=data)]),
    )
    for error in (streamed, inline, batch):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in error.details()
    assert stored_blobs(data_dir) == []


def test_a_trained_versions_params_are_cut_to_fit_and_say_so(daemon: InProcessDaemon, stub):
    data = onnx_identity()
    stored = upload(stub, onnx_header("m", data), data)
    # What a job's registration passes: params flattened from its config, however many.
    params = {"optimizer.lr": "0.001", **OVER, "architecture.hidden_sizes": "8"}
    record = daemon.daemon.registry.register_version(
        "m", format="onnx", blob=BlobRef(stored.sha256, stored.size_bytes), params=params
    )
    got = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=record.version)))
    kept = dict(got.params)
    left_out = kept.pop("tessera.params_left_out")
    assert sum(len(k) + len(v) + 11 for k, v in got.params.items()) <= 2 * 2**20
    assert kept["optimizer.lr"] == "0.001" and kept["architecture.hidden_sizes"] == "8"
    assert len(kept) == 1 + 347 + 1
    assert left_out.startswith("13 params left out to keep a version's params within 2 MiB: note347, ")
    assert left_out.endswith("note356 and 3 more")

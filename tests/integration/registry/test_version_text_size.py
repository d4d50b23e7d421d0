"""A version's description and tags are kept to 16 KiB together, and its tag keys to the rule every
tag follows, on each path a version is registered by: a streamed upload's header (test_alias_names),
an inline upload, a batch item and an ONNX export (checked before the export runs). ListVersions
pages and every change a model's followers receive carry them."""

from __future__ import annotations

from dataclasses import replace

import grpc

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.records import decode_version, encode_version
from tesserad.registry.tables import VERSIONS, model_data, put_model_data
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
)

R = registry_pb2
LIMIT = 16 * 2**10


def versions(stub, model: str) -> list[int]:
    return [v.version for v in stub.ListVersions(R.ListVersionsRequest(model=model)).versions]


def test_an_inline_upload_over_16_kib_of_text_is_refused_and_nothing_stored(stub, data_dir):
    stub.CreateModel(R.CreateModelRequest(name="m"))
    graph = onnx_identity()
    # Bytes are counted as they are stored: "team" and "vision" take 10.
    header = onnx_header("m", graph, description="d" * (LIMIT - 9), tags={"team": "vision"})
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=graph))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "a model version's description and tags take at most 16 KiB together, these take 16 KiB "
        "(16385 bytes); keep longer documentation elsewhere and link to it"
    )
    assert versions(stub, "m") == [] and [b for b in stored_blobs(data_dir) if not b.startswith("tmp/")] == []
    header = onnx_header("m", graph, description="d" * (LIMIT - 10), tags={"team": "vision"})
    assert stub.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=graph)).version == 1


def test_a_tag_key_with_a_newline_is_refused_as_a_run_tag_is(stub):
    graph = onnx_identity()
    header = onnx_header("m", graph, create_model=True, tags={"a\nb": "x"})
    error = rpc_error(stub.UploadVersionInline, R.UploadVersionInlineRequest(header=header, artifact=graph))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "tags: key 'a\\nb' must be 1 to 250 characters without NUL or newlines"


def test_a_batch_item_over_16_kib_of_text_fails_the_batch_naming_the_item(stub):
    graph = onnx_identity()
    items = [
        R.UploadVersionInlineRequest(header=onnx_header("m", graph, create_model=True), artifact=graph),
        R.UploadVersionInlineRequest(
            header=onnx_header(
                "m",
                graph,
                create_model=True,
                tags={"notes": "n" * 8000, "more": "n" * 8000, "rest": "n" * 400},
            ),
            artifact=graph,
        ),
    ]
    error = rpc_error(stub.UploadVersionBatch, R.UploadVersionBatchRequest(items=items))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("items[1]: a model version's description and tags take at most 16 KiB")
    assert [m.name for m in stub.ListModels(R.ListModelsRequest()).models] == []


def test_an_export_with_a_description_over_16_kib_is_refused_before_it_runs(stub, weights, data_dir):
    upload(stub, safetensors_header("mlp", weights, tags={"team": "vision"}), weights)
    before = stored_blobs(data_dir)
    source = common_pb2.VersionRef(model="mlp", version=1)
    error = rpc_error(
        stub.ExportOnnx, R.ExportOnnxRequest(source=source, description="d" * LIMIT), timeout=120
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a model version's description and tags take at most 16 KiB together" in error.details()
    assert stored_blobs(data_dir) == before and versions(stub, "mlp") == [1]
    exported = stub.ExportOnnx(R.ExportOnnxRequest(source=source, description="d" * 100), timeout=120)
    assert (exported.version.version, dict(exported.version.tags)) == (2, {"team": "vision"})


def test_records_stored_before_the_limits_stay_readable(tmp_path):
    data_dir = tmp_path / "data"
    graph = onnx_identity()
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(daemon.channel())
        registry.UploadVersionInline(
            R.UploadVersionInlineRequest(header=onnx_header("m", graph, create_model=True), artifact=graph)
        )
    finally:
        daemon.stop()
    # As an earlier daemon, which took any text, could have stored them.
    long_text, legacy_tags = "d" * (2 * LIMIT), {"": "empty key", "a\nb": "n" * 9000}
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    with store.write() as txn:
        raw = txn.get(VERSIONS, ("m", 1))
        txn.put(
            VERSIONS,
            ("m", 1),
            encode_version(replace(decode_version(raw), description=long_text, tags=legacy_tags)),
        )
        put_model_data(txn, {**model_data(txn, "m"), "description": long_text, "tags": legacy_tags})
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(daemon.channel())
        (listed,) = registry.ListVersions(R.ListVersionsRequest(model="m")).versions
        assert (listed.description, dict(listed.tags)) == (long_text, legacy_tags)
        model = registry.GetModel(R.GetModelRequest(name="m"))
        assert (model.description, dict(model.tags)) == (long_text, legacy_tags)
        # A change is held to the limits: one that brings the model within them is taken.
        error = rpc_error(registry.UpdateModel, R.UpdateModelRequest(name="m", set_tags={"team": "a"}))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        updated = registry.UpdateModel(
            R.UpdateModelRequest(name="m", description="short", remove_tags=["a\nb"], set_tags={"team": "a"})
        )
        assert (updated.description, dict(updated.tags)) == ("short", {"": "empty key", "team": "a"})
        header = onnx_header("m", graph, description="new")
        assert (
            registry.UploadVersionInline(R.UploadVersionInlineRequest(header=header, artifact=graph)).version
            == 2
        )
    finally:
        daemon.stop()


def test_an_export_of_a_version_stored_before_the_rules_leaves_out_the_tags_they_refuse(tmp_path, weights):
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        upload(registry_pb2_grpc.RegistryStub(daemon.channel()), safetensors_header("mlp", weights), weights)
    finally:
        daemon.stop()
    # As an earlier daemon, which took any tags, could have stored them; a version's tags cannot
    # be changed since, so an export must not fail on them.
    legacy_tags = {"": "empty key", "a\nb": "x", "team": "vision", "n1": "n" * 8000, "n2": "n" * 8000}
    legacy_tags["n3"] = "n" * 8000  # within the tag rule, over 16 KiB with the others
    store = Store.open(data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    with store.write() as txn:
        raw = txn.get(VERSIONS, ("mlp", 1))
        txn.put(VERSIONS, ("mlp", 1), encode_version(replace(decode_version(raw), tags=legacy_tags)))
    store.close()

    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(daemon.channel())
        source = common_pb2.VersionRef(model="mlp", version=1)
        exported = registry.ExportOnnx(R.ExportOnnxRequest(source=source), timeout=120).version
        assert (exported.version, exported.description) == (2, "ONNX export of v1")
        assert dict(exported.tags) == {"team": "vision", "n1": "n" * 8000, "n2": "n" * 8000}
        assert exported.params["tessera.tags_left_out"] == (
            "3 tags left out (a version's tag keys are 1 to 250 characters without NUL or newlines, "
            "values at most 8000 characters, and its description and tags take at most 16 KiB "
            "together): '', 'a\\nb', 'n3'"
        )
    finally:
        daemon.stop()

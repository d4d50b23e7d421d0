"""A model's version count and latest version, kept in its record by each version's own
transaction, stay right across registrations, deletes and failures; stores written before the
record kept them are backfilled at start."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.records import MODEL_KIND, SCHEMA
from tesserad.registry.tables import MODELS
from tesserad.server import STORE_TABLES
from tesserad.store import Store, decode_record, encode_record
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import rpc_error, safetensors_header, upload


def counts(stub: registry_pb2_grpc.RegistryStub, model: str) -> tuple[int, int]:
    """(version_count, latest_version) as GetModel and ListModels both report them."""
    got = stub.GetModel(registry_pb2.GetModelRequest(name=model))
    listed = [m for m in stub.ListModels(registry_pb2.ListModelsRequest(name_prefix=model)).models]
    assert [(m.version_count, m.latest_version) for m in listed if m.name == model] == [
        (got.version_count, got.latest_version)
    ]
    return got.version_count, got.latest_version


def latest_of(stub: registry_pb2_grpc.RegistryStub, model: str) -> int:
    ref = common_pb2.VersionRef(model=model, alias="latest")
    return stub.GetVersion(registry_pb2.GetVersionRequest(ref=ref)).version


def delete(stub: registry_pb2_grpc.RegistryStub, model: str, version: int) -> None:
    stub.DeleteVersion(registry_pb2.DeleteVersionRequest(model=model, version=version))


def test_counts_follow_registers_and_deletes(stub, weights):
    stub.CreateModel(registry_pb2.CreateModelRequest(name="m"))
    assert counts(stub, "m") == (0, 0)
    for _ in range(4):
        upload(stub, safetensors_header("m", weights), weights)
    assert counts(stub, "m") == (4, 4)

    delete(stub, "m", 2)  # a middle version: the latest stays
    assert counts(stub, "m") == (3, 4)
    delete(stub, "m", 4)  # the newest: latest falls back to the next one down
    assert counts(stub, "m") == (2, 3)
    assert latest_of(stub, "m") == 3
    delete(stub, "m", 3)
    assert counts(stub, "m") == (1, 1)

    # Numbers are never reused: the next version is 5, and it is the latest.
    assert upload(stub, safetensors_header("m", weights), weights).version == 5
    assert counts(stub, "m") == (2, 5)
    delete(stub, "m", 5)
    delete(stub, "m", 1)
    assert counts(stub, "m") == (0, 0)
    error = rpc_error(stub.GetVersion, registry_pb2.GetVersionRequest(ref=common_pb2.VersionRef(model="m")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_failed_registrations_change_nothing(stub, weights):
    upload(stub, safetensors_header("m", weights), weights)
    stub.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="prod", version=1))
    before = stub.GetModel(registry_pb2.GetModelRequest(name="m"))

    bad = b"this is not a safetensors file"
    error = rpc_error(upload, stub, safetensors_header("m", bad), bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(upload, stub, safetensors_header("m", weights, alias="latest"), weights)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    parent = registry_pb2.Lineage(parent_version=99)
    error = rpc_error(upload, stub, safetensors_header("m", weights, lineage=parent), weights)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # A refused delete (an alias uses the version) leaves the counts too.
    error = rpc_error(delete, stub, "m", 1)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert stub.GetModel(registry_pb2.GetModelRequest(name="m")) == before
    assert upload(stub, safetensors_header("m", weights), weights).version == 2
    assert counts(stub, "m") == (2, 2)


def test_concurrent_registrations_are_all_counted(stub, weights):
    stub.CreateModel(registry_pb2.CreateModelRequest(name="m"))
    with ThreadPoolExecutor(8) as pool:
        versions = list(
            pool.map(lambda _: upload(stub, safetensors_header("m", weights), weights).version, range(24))
        )
    assert sorted(versions) == list(range(1, 25))
    assert counts(stub, "m") == (24, 24)
    listed = stub.ListVersions(registry_pb2.ListVersionsRequest(model="m", page_size=100)).versions
    assert [v.version for v in listed] == list(range(24, 0, -1))


def strip_counts(store_dir: Path) -> None:
    """Rewrite every model record as a daemon from before the counts wrote it."""
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            for key, raw in list(txn.scan(MODELS)):
                fields = decode_record(raw, MODEL_KIND, SCHEMA)[1]
                del fields["version_count"], fields["latest_version"]
                txn.put(MODELS, key, encode_record(MODEL_KIND, SCHEMA, fields))
    finally:
        store.close()


def stored_model(store_dir: Path, name: str) -> dict:
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            return decode_record(txn.get(MODELS, (name,)), MODEL_KIND, SCHEMA)[1]
    finally:
        store.close()


def test_a_store_without_counts_is_backfilled_at_start(data_dir, weights):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        for _ in range(3):
            upload(stub, safetensors_header("a", weights), weights)
        delete(stub, "a", 3)
        delete(stub, "a", 1)
        stub.CreateModel(registry_pb2.CreateModelRequest(name="empty"))
    finally:
        first.stop()
    strip_counts(data_dir / "store")
    assert "version_count" not in stored_model(data_dir / "store", "a")

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert counts(stub, "a") == (1, 2)
        assert counts(stub, "empty") == (0, 0)
        assert latest_of(stub, "a") == 2
        assert upload(stub, safetensors_header("a", weights), weights).version == 4
        assert counts(stub, "a") == (2, 4)
    finally:
        second.stop()
    stored = stored_model(data_dir / "store", "a")
    assert (stored["version_count"], stored["latest_version"]) == (2, 4)

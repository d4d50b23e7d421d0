"""Lineage is history: a version whose parent version is deleted (alone, or with its model)
keeps naming it, marked deleted with what it was (sha256, when), and a model created again
under the parent's name is never taken for it; stores from before the marks get them at start."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.backfill import PARENTS_MARKED
from tesserad.registry.tables import DELETED_PARENTS, RETIRED_NUMBERS
from tesserad.server import STORE_TABLES
from tesserad.store import Store, decode_record
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import mlp_weights, rpc_error, safetensors_header, upload

R = registry_pb2


def derive(stub: registry_pb2_grpc.RegistryStub, model: str, parent: str, version: int, seed: int) -> None:
    data = mlp_weights(seed=seed)
    lineage = R.Lineage(parent_model=parent, parent_version=version)
    upload(stub, safetensors_header(model, data, lineage=lineage), data)


def lineage(stub: registry_pb2_grpc.RegistryStub, model: str, version: int) -> R.GetLineageResponse:
    return stub.GetLineage(R.GetLineageRequest(ref=common_pb2.VersionRef(model=model, version=version)))


def compare_parent(stub: registry_pb2_grpc.RegistryStub, a: tuple[str, int], b: tuple[str, int]) -> list:
    request = R.CompareVersionsRequest(
        a=common_pb2.VersionRef(model=a[0], version=a[1]), b=common_pb2.VersionRef(model=b[0], version=b[1])
    )
    return [(d.a, d.b) for d in stub.CompareVersions(request).lineage if d.key == "parent"]


def test_a_force_deleted_parent_model_stays_named_as_deleted_and_a_new_one_is_not_it(stub, weights):
    base = upload(stub, safetensors_header("base", weights), weights)
    derive(stub, "tuned", "base", 1, seed=1)
    stub.SetAlias(R.SetAliasRequest(model="base", alias="production", version=1))
    stub.DeleteModel(R.DeleteModelRequest(name="base", force=True))

    child = lineage(stub, "tuned", 1).version.lineage
    assert (child.parent_model, child.parent_version) == ("base", 1)
    assert child.HasField("parent_deleted")
    assert child.parent_deleted.sha256 == base.sha256
    assert child.parent_deleted.deleted_at.seconds >= base.created_at.seconds

    # Recreated, "base" numbers on from the deleted one's (its first is 2): "tuned" v1 still names
    # the deleted v1, which a comparison with a child of the new version tells apart.
    fresh = mlp_weights(seed=7)
    assert upload(stub, safetensors_header("base", fresh), fresh).version == 2
    assert lineage(stub, "tuned", 1).version.lineage.parent_deleted.sha256 == base.sha256
    derive(stub, "tuned", "base", 2, seed=2)
    assert not lineage(stub, "tuned", 2).version.lineage.HasField("parent_deleted")
    assert [(d.model, d.version) for d in lineage(stub, "base", 2).derived] == [("tuned", 2)]
    assert compare_parent(stub, ("tuned", 1), ("tuned", 2)) == [
        (f"base:1 deleted sha256:{base.sha256}", "base:2")
    ]


def test_a_deleted_parent_version_is_named_as_deleted(stub, weights):
    upload(stub, safetensors_header("base", weights), weights)
    upload(stub, safetensors_header("base", weights), weights)
    derive(stub, "tuned", "base", 1, seed=1)
    derive(stub, "base", "base", 2, seed=2)  # base v3, fine-tuned from v2 of its own model
    parent = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="base", version=2)))

    stub.DeleteVersion(R.DeleteVersionRequest(model="base", version=1))
    stub.DeleteVersion(R.DeleteVersionRequest(model="base", version=2))

    assert lineage(stub, "tuned", 1).version.lineage.HasField("parent_deleted")
    own = stub.GetVersion(R.GetVersionRequest(ref=common_pb2.VersionRef(model="base", version=3))).lineage
    assert (own.parent_model, own.parent_version) == ("base", 2)
    assert own.parent_deleted.sha256 == parent.sha256
    listed = stub.ListVersions(R.ListVersionsRequest(model="base")).versions
    assert [v.lineage.parent_deleted.sha256 for v in listed] == [parent.sha256]


def test_a_parent_upload_cannot_set_the_deleted_mark(stub, weights):
    upload(stub, safetensors_header("base", weights), weights)
    data = mlp_weights(seed=1)
    claimed = R.Lineage(
        parent_version=1, parent_deleted=R.DeletedParent(sha256="0" * 64, deleted_at={"seconds": 1})
    )
    upload(stub, safetensors_header("base", data, lineage=claimed), data)
    assert not lineage(stub, "base", 2).version.lineage.HasField("parent_deleted")


def marks(store_dir: Path) -> int:
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            return txn.count(DELETED_PARENTS)
    finally:
        store.close()


def drop_marks(store_dir: Path) -> None:
    """Leave the store as a daemon from before the deleted-parent marks wrote it."""
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.delete_range(DELETED_PARENTS, ())
            assert txn.delete_range("meta", PARENTS_MARKED) == 1
    finally:
        store.close()


def drop_retired_numbers(store_dir: Path) -> None:
    """Leave the store as a daemon from before RETIRED_NUMBERS wrote it."""
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(RETIRED_NUMBERS, ()) == 2
    finally:
        store.close()


def test_the_mark_survives_a_restart_and_goes_with_its_version(data_dir, weights):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        base = upload(stub, safetensors_header("base", weights), weights)
        derive(stub, "tuned", "base", 1, seed=1)
        derive(stub, "tuned", "base", 1, seed=2)
        stub.DeleteModel(R.DeleteModelRequest(name="base"))
    finally:
        first.stop()
    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert lineage(stub, "tuned", 1).version.lineage.parent_deleted.sha256 == base.sha256
        stub.DeleteVersion(R.DeleteVersionRequest(model="tuned", version=1))
    finally:
        second.stop()
    assert marks(data_dir / "store") == 1
    third = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        registry_pb2_grpc.RegistryStub(third.channel()).DeleteModel(R.DeleteModelRequest(name="tuned"))
    finally:
        third.stop()
    assert marks(data_dir / "store") == 0


def test_a_store_from_before_the_marks_is_marked_at_start(data_dir, weights, caplog):
    """What such a store lost is the parent's sha256 and when it went; a parent missing, or
    a version of that number made after its child (a model created again), is marked."""
    caplog.set_level(logging.INFO, logger="tesserad.registry.backfill")
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload(stub, safetensors_header("base", weights), weights)
        upload(stub, safetensors_header("gone", weights), weights)
        derive(stub, "tuned", "base", 1, seed=1)
        derive(stub, "tuned", "gone", 1, seed=2)
        stub.DeleteModel(R.DeleteModelRequest(name="base"))
        stub.DeleteModel(R.DeleteModelRequest(name="gone"))
    finally:
        first.stop()
    # Such a daemon numbered a model created again from 1 too.
    drop_retired_numbers(data_dir / "store")
    again = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(again.channel())
        upload(stub, safetensors_header("base", weights), weights)
        derive(stub, "kept", "base", 1, seed=3)  # the new base v1's own child
    finally:
        again.stop()
    drop_marks(data_dir / "store")

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        for version in (1, 2):
            mark = lineage(stub, "tuned", version).version.lineage
            assert mark.HasField("parent_deleted") and mark.parent_deleted.sha256 == ""
            assert not mark.parent_deleted.HasField("deleted_at")
        assert not lineage(stub, "kept", 1).version.lineage.HasField("parent_deleted")
        error = rpc_error(stub.GetVersion, R.GetVersionRequest(ref=common_pb2.VersionRef(model="gone")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        second.stop()
    assert marks(data_dir / "store") == 2
    marked = [r for r in caplog.records if "marked the deleted parents" in r.getMessage()]
    assert [r.__dict__["versions"] for r in marked] == [2]


def test_the_stored_mark_names_the_parent(data_dir, weights):
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(daemon.channel())
        base = upload(stub, safetensors_header("base", weights), weights)
        derive(stub, "tuned", "base", 1, seed=1)
        stub.DeleteVersion(R.DeleteVersionRequest(model="base", version=1))
    finally:
        daemon.stop()
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            [(key, raw)] = list(txn.scan(DELETED_PARENTS))
            data = decode_record(raw, "deleted_parent", 1)[1]
    finally:
        store.close()
    assert key == ("tuned", 1)
    assert (data["model"], data["version"], data["sha256"]) == ("base", 1, base.sha256)

"""Version numbers are never reused, even across a model's delete: a model created again under a
deleted model's name numbers its versions on from the highest the deleted one gave, so "m v1" kept
by a client, a job record or a config names the deleted artifact or nothing, never another one."""

from __future__ import annotations

import grpc

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.registry.backfill import NUMBERS_RETIRED
from tesserad.registry.records import MODEL_KIND, SCHEMA
from tesserad.registry.tables import MODELS, RETIRED_NUMBERS
from tesserad.server import STORE_TABLES
from tesserad.store import Store, decode_record, encode_record
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


def upload_versions(stub, model: str, count: int, width: int = 4) -> list[R.ModelVersion]:
    data = onnx_identity(width)
    return [upload(stub, onnx_header(model, data), data) for _ in range(count)]


def test_a_model_created_again_numbers_its_versions_on_from_the_deleted_one(stub):
    upload_versions(stub, "m", 3)
    # A deleted version's number counts too: it was given.
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=3))
    stub.DeleteModel(R.DeleteModelRequest(name="m"))

    stub.CreateModel(R.CreateModelRequest(name="m"))
    assert [v.version for v in upload_versions(stub, "m", 2, width=5)] == [4, 5]
    # Another name, never deleted, numbers from 1.
    assert upload_versions(stub, "other", 1)[0].version == 1


def test_an_upload_that_creates_the_model_again_numbers_on_too(stub):
    upload_versions(stub, "m", 2)
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    assert upload_versions(stub, "m", 1, width=5)[0].version == 3
    # Deleted again at a higher number, and created again: on from there.
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    assert upload_versions(stub, "m", 1)[0].version == 4


def test_a_version_kept_from_before_the_delete_names_none_of_the_new_ones(stub):
    kept = upload_versions(stub, "m", 1)[0]
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    upload_versions(stub, "m", 1, width=5)

    error = rpc_error(
        stub.GetVersion, R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=kept.version))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_an_expected_version_kept_from_before_the_delete_is_refused(stub):
    upload_versions(stub, "m", 2)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    new = upload_versions(stub, "m", 2, width=5)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=new[0].version))

    # A client that read "prod is at 1" before the delete moves it only if prod still names that
    # artifact: here it names another, so the compare-and-set fails and prod stays.
    stale = rpc_error(
        stub.SetAlias, R.SetAliasRequest(model="m", alias="prod", version=new[1].version, expected_version=1)
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetAlias(R.GetAliasRequest(model="m", alias="prod")).version == new[0].version


def test_a_restart_keeps_the_numbers_deleted_models_reached(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload_versions(stub, "m", 2)
        stub.DeleteModel(R.DeleteModelRequest(name="m"))
    finally:
        first.stop()

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert upload_versions(stub, "m", 1, width=5)[0].version == 3
    finally:
        second.stop()


def test_a_model_created_again_by_an_older_tesserad_leaves_the_higher_number_kept(daemon, stub):
    upload_versions(stub, "m", 3)
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    # An older tesserad creates the name again from 1 and leaves the row (next number 4) alone.
    stub.CreateModel(R.CreateModelRequest(name="m"))
    with daemon.daemon._store.write() as txn:
        fields = decode_record(txn.get(MODELS, ("m",)), MODEL_KIND, SCHEMA)[1]
        txn.put(
            MODELS,
            ("m",),
            encode_record(MODEL_KIND, SCHEMA, {**fields, "first_version": 1, "next_version": 1}),
        )
        txn.put(RETIRED_NUMBERS, ("m",), encode_record(RETIRED_NUMBERS, 1, {"next_version": 4}))
    assert upload_versions(stub, "m", 1, width=5)[0].version == 1
    stub.DeleteModel(R.DeleteModelRequest(name="m"))

    assert upload_versions(stub, "m", 1)[0].version == 4


def _as_left_by_a_tesserad_from_before_retired_numbers(data_dir) -> None:
    """The stopped daemon's store as an older tesserad left it: no deleted model's number kept,
    and no start has yet derived them."""
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.delete_range(RETIRED_NUMBERS, ())
            txn.delete("meta", NUMBERS_RETIRED)
    finally:
        store.close()


def test_a_model_deleted_before_the_upgrade_numbers_on_past_what_the_store_still_names(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload_versions(stub, "base", 3)
        data = onnx_identity(6)
        lineage = R.Lineage(parent_model="base", parent_version=3)
        upload(stub, onnx_header("child", data, lineage=lineage), data)
        stub.DeleteModel(R.DeleteModelRequest(name="base"))
    finally:
        first.stop()
    _as_left_by_a_tesserad_from_before_retired_numbers(data_dir)

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        # child's lineage still names "base v3": the new base's first version is past it.
        assert upload_versions(stub, "base", 1, width=5)[0].version == 4
        assert upload_versions(stub, "child", 1, width=5)[0].version == 2
    finally:
        second.stop()


def test_a_model_deleted_before_it_gave_a_number_leaves_no_row(daemon, stub):
    stub.CreateModel(R.CreateModelRequest(name="empty"))
    stub.DeleteModel(R.DeleteModelRequest(name="empty"))

    with daemon.daemon._store.read() as txn:
        assert not txn.exists(RETIRED_NUMBERS, ("empty",))


def _feed_recorded(stub) -> None:
    """Return once the change feed has recorded every commit made so far."""
    for response in stub.WatchChanges(R.WatchChangesRequest(from_seq=0), timeout=60):
        if response.HasField("caught_up"):
            return


def test_a_model_deleted_before_the_upgrade_numbers_on_past_what_the_change_feed_tells(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload_versions(stub, "m", 2)
        _feed_recorded(stub)
        stub.DeleteModel(R.DeleteModelRequest(name="m"))
    finally:
        first.stop()
    _as_left_by_a_tesserad_from_before_retired_numbers(data_dir)

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        # A watch replaying from before the delete is still told of "m v2".
        assert upload_versions(stub, "m", 1, width=5)[0].version == 3
    finally:
        second.stop()

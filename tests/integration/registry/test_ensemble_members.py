"""An ensemble pins its member versions: deleting a member version, or the model that holds it,
is refused while an ensemble version of another model names it, through an index of members
kept in each version's own transaction; stores from before the index are indexed at start."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from tessera.ensembles import ensemble_spec
from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.registry.backfill import MEMBERS_INDEXED
from tesserad.registry.tables import ENSEMBLE_MEMBERS, MEMBER_OF
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import rpc_error, safetensors_header, upload

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def register_ensemble(
    stub: registry_pb2_grpc.RegistryStub, model: str, members: list[str]
) -> registry_pb2.ModelVersion:
    return upload_spec(stub, model, ensemble_spec(members))


def upload_spec(stub: registry_pb2_grpc.RegistryStub, model: str, spec: bytes) -> registry_pb2.ModelVersion:
    header = registry_pb2.UploadVersionHeader(
        model=model,
        create_model=True,
        format=registry_pb2.ARTIFACT_FORMAT_ENSEMBLE,
        sha256=hashlib.sha256(spec).hexdigest(),
        size_bytes=len(spec),
    )
    return upload(stub, header, spec)


def delete_version(stub: registry_pb2_grpc.RegistryStub, model: str, version: int) -> None:
    stub.DeleteVersion(registry_pb2.DeleteVersionRequest(model=model, version=version))


def delete_model(stub: registry_pb2_grpc.RegistryStub, model: str, force: bool = False) -> None:
    stub.DeleteModel(registry_pb2.DeleteModelRequest(name=model, force=force))


def members_ab(stub: registry_pb2_grpc.RegistryStub, weights: bytes) -> None:
    for model in ("a", "b"):
        upload(stub, safetensors_header(model, weights), weights)


def test_a_member_version_is_not_deleted_while_an_ensemble_uses_it(stub, weights):
    members_ab(stub, weights)
    register_ensemble(stub, "ens", ["a:1", "b:1"])
    register_ensemble(stub, "other", ["a:1", "b:1"])

    error = rpc_error(delete_version, stub, "a", 1)
    assert error.code() == FAILED_PRECONDITION
    assert error.details() == (
        "version 1 of model 'a' is a member of ensemble versions ens:1, other:1; delete those "
        "ensemble versions first (to replace one, register an ensemble version without a:1 and "
        "move its aliases and deployment there)"
    )
    delete_version(stub, "ens", 1)
    error = rpc_error(delete_version, stub, "a", 1)
    assert "is a member of ensemble version other:1; delete that ensemble version first" in error.details()
    delete_version(stub, "other", 1)
    delete_version(stub, "a", 1)
    delete_version(stub, "b", 1)


def test_a_member_model_is_not_deleted_even_by_force(stub, weights):
    members_ab(stub, weights)
    upload(stub, safetensors_header("a", weights), weights)
    register_ensemble(stub, "ens", ["a:1", "b:1"])
    register_ensemble(stub, "ens", ["a:2", "b:1"])

    for force in (False, True):
        error = rpc_error(delete_model, stub, "a", force)
        assert error.code() == FAILED_PRECONDITION
        assert error.details() == (
            "model 'a' cannot be deleted while ensembles of other models use its versions: ens:1 "
            "uses a:1, ens:2 uses a:2; delete those ensemble versions (or their models) first"
        )
    assert stub.GetModel(registry_pb2.GetModelRequest(name="a")).version_count == 2

    delete_model(stub, "ens", force=True)  # an ensemble model goes, members and all
    delete_model(stub, "a")
    delete_model(stub, "b")
    # Recreated, the names number on (a from 3), and nothing pins the new versions.
    members_ab(stub, weights)
    delete_version(stub, "a", 3)


def test_a_spec_python_cannot_parse_is_invalid_argument_not_internal(stub, weights):
    # Nesting past the parser's depth (RecursionError) and an integer past the digits Python
    # converts (ValueError) reached the client as INTERNAL, logged as the daemon's fault.
    members_ab(stub, weights)
    deep = "[" * 100_000 + "]" * 100_000
    long_version = "1" * 5000
    cases = {
        '{"members": ' + deep + ', "combine": "mean"}': (
            "the ensemble spec nests deeper than Python's parser goes; it is an object of members and "
            "combine, as tessera.ensembles.ensemble_spec writes it"
        ),
        '{"members": [{"model": "a", "version": ' + long_version + '}, {"model": "b", "version": 1}], '
        '"combine": "mean"}': (
            "the ensemble spec holds an integer of more than 4300 digits, which no field takes; send each "
            "number within its field's range"
        ),
    }
    for spec, message in cases.items():
        error = rpc_error(upload_spec, stub, "ens", spec.encode())
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    # Nothing was registered: the model the uploads would have created does not exist.
    error = rpc_error(stub.GetModel, registry_pb2.GetModelRequest(name="ens"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_whose_own_ensemble_uses_its_versions_can_be_deleted(stub, weights):
    for _ in range(2):
        upload(stub, safetensors_header("m", weights), weights)
    register_ensemble(stub, "m", ["m:1", "m:2"])

    error = rpc_error(delete_version, stub, "m", 2)
    assert "is a member of ensemble version m:3" in error.details()
    delete_model(stub, "m")
    delete_version(stub, "m", upload(stub, safetensors_header("m", weights), weights).version)


def test_an_alias_pins_nothing_for_an_ensemble(stub, weights):
    """Members name versions by number: an alias on a member moves or goes freely, and the
    version it named stays pinned by its number."""
    members_ab(stub, weights)
    stub.SetAlias(registry_pb2.SetAliasRequest(model="a", alias="production", version=1))
    register_ensemble(stub, "ens", ["a:1", "b:1"])
    stub.DeleteAlias(registry_pb2.DeleteAliasRequest(model="a", alias="production"))
    error = rpc_error(delete_version, stub, "a", 1)
    assert "is a member of ensemble version ens:1" in error.details()


def test_the_index_survives_a_restart(data_dir, weights):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        members_ab(stub, weights)
        register_ensemble(stub, "ens", ["a:1", "b:1"])
    finally:
        first.stop()
    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert rpc_error(delete_version, stub, "b", 1).code() == FAILED_PRECONDITION
        assert rpc_error(delete_model, stub, "b", True).code() == FAILED_PRECONDITION
    finally:
        second.stop()


def drop_index(store_dir: Path) -> None:
    """Leave the store as a daemon from before the index of ensemble members wrote it."""
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(MEMBER_OF, ()) == 4
            assert txn.delete_range(ENSEMBLE_MEMBERS, ()) == 4
            assert txn.delete_range("meta", MEMBERS_INDEXED) == 1
    finally:
        store.close()


def index_rows(store_dir: Path) -> tuple[int, int]:
    store = Store.open(store_dir, map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            return txn.count(MEMBER_OF), txn.count(ENSEMBLE_MEMBERS)
    finally:
        store.close()


def test_a_store_from_before_the_index_is_indexed_at_start(data_dir, weights):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        members_ab(stub, weights)
        register_ensemble(stub, "ens", ["a:1", "b:1"])
        register_ensemble(stub, "ens", ["a:1", "b:1"])
    finally:
        first.stop()
    drop_index(data_dir / "store")

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        error = rpc_error(delete_version, stub, "a", 1)
        assert "is a member of ensemble versions ens:1, ens:2" in error.details()
        delete_version(stub, "ens", 1)
    finally:
        second.stop()
    assert index_rows(data_dir / "store") == (2, 2)


def test_an_unreadable_spec_does_not_stop_the_index_at_start(data_dir, weights, caplog):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        members_ab(stub, weights)
        lost = register_ensemble(stub, "lost", ["b:1", "a:1"])  # a spec (a blob) of its own
        register_ensemble(stub, "ens", ["a:1", "b:1"])
    finally:
        first.stop()
    drop_index(data_dir / "store")
    (data_dir / "blobs" / "sha256" / lost.sha256[:2] / lost.sha256[2:]).unlink()

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        error = rpc_error(delete_version, stub, "a", 1)
        assert "is a member of ensemble version ens:1;" in error.details()  # lost:1 pins nothing
    finally:
        second.stop()
    warned = [r for r in caplog.records if "spec cannot be read" in r.getMessage()]
    assert [r.__dict__["ensemble"] for r in warned] == ["lost:1"]

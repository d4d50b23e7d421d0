"""Version numbers are never reused, even across a model's delete: a model created again under a
deleted model's name numbers its versions on from the highest the deleted one gave, so "m v1" kept
by a client, a job record or a config names the deleted artifact or nothing, never another one."""

from __future__ import annotations

import grpc

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
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

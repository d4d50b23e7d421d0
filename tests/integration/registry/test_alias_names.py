"""Alias names that read as version numbers ("3", "v3") are refused where an alias is set:
the CLI takes digits as a version, so "3" could never be named, and "v3" pointing at another
version is a trap (MLflow refuses both forms too)."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2
from tests.integration.registry.conftest import (
    CHUNK,
    onnx_header,
    onnx_identity,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
    upload_requests,
    upload_versions,
)

R = registry_pb2


def ref(model: str, version: int) -> common_pb2.VersionRef:
    return common_pb2.VersionRef(model=model, version=version)


@pytest.fixture
def two_versions(stub) -> bytes:
    """Versions 1 and 2 of "m"; the artifact they hold."""
    upload_versions(stub, "m", 2)
    return onnx_identity()


@pytest.mark.parametrize("alias", ["2", "007", "v1", "v12"])
def test_an_alias_that_reads_as_a_version_is_refused(stub, two_versions, alias):
    error = rpc_error(stub.SetAlias, R.SetAliasRequest(model="m", alias=alias, version=2))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"alias {alias!r} reads as a version number" in error.details()
    assert "pick a name such as" in error.details()

    error = rpc_error(upload, stub, onnx_header("m", two_versions, alias=alias), two_versions)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"alias {alias!r} reads as a version number" in error.details()

    model = stub.GetModel(R.GetModelRequest(name="m"))
    assert (model.version_count, dict(model.aliases)) == (2, {"latest": 2})
    # Deleting is not a place to refuse the name: one set before the rule can still go.
    missing = rpc_error(stub.DeleteAlias, R.DeleteAliasRequest(model="m", alias=alias))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("alias", ["v2-candidate", "2026.1", "v1.2", "prod-3", "version2"])
def test_names_with_a_number_in_them_are_aliases(stub, two_versions, alias):
    assert stub.SetAlias(R.SetAliasRequest(model="m", alias=alias, version=1)).version == 1
    assert stub.GetAlias(R.GetAliasRequest(model="m", alias=alias)).version == 1


@pytest.mark.parametrize(
    ("alias", "words"),
    [("latest", "is reserved"), ("v3", "reads as a version"), ("BAD", "is not a valid name")],
)
def test_an_export_checks_its_alias_before_exporting(stub, weights, alias, words):
    upload(stub, safetensors_header("mlp", weights), weights)
    # conv4d 'bogus' is refused last of what an export's request is checked for, before it queues:
    # the alias's error shows the alias was checked among the first.
    request = R.ExportOnnxRequest(source=ref("mlp", 1), alias=alias, conv4d="bogus")
    error = rpc_error(stub.ExportOnnx, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"alias {alias!r} {words}" in error.details()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"alias": "latest"}, "alias 'latest' is reserved"),
        ({"alias": "v3"}, "alias 'v3' reads as a version"),
        ({"tags": {"": "x"}}, "tags: key '' must be 1 to 250 characters"),
        (
            {"description": "d" * (16 * 2**10 + 1)},
            "a model version's description and tags take at most 16 KiB",
        ),
        ({"metrics": {"acc": float("nan")}}, "metrics['acc'] is nan"),
    ],
)
def test_a_streamed_upload_checks_its_header_before_taking_the_artifact(stub, data_dir, fields, words):
    artifact = b"\x00" * (3 * CHUNK)
    header = onnx_header("m", artifact, **fields)
    # Only the first chunk is sent: the header's error shows it was checked before the rest was
    # awaited (it was checked once all of it had been received and stored).
    error = rpc_error(stub.UploadVersion, iter(list(upload_requests(header, artifact))[:2]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert words in error.details()
    assert stored_blobs(data_dir) == []


def test_a_missing_alias_names_the_model_has_none(stub, two_versions):
    error = rpc_error(stub.GetAlias, R.GetAliasRequest(model="m", alias="prod"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "model 'm' has no alias 'prod' and no aliases at all; set one with SetAlias"


def test_a_missing_alias_lists_the_set_ones_and_the_near_miss(stub, two_versions):
    for alias in ["staging", "prd"]:
        stub.SetAlias(R.SetAliasRequest(model="m", alias=alias, version=1))
    near = (
        "model 'm' has no alias 'prod'; it has 'prd', 'staging'; did you mean 'prd'? Or set it with SetAlias"
    )
    for call, request in [
        (stub.GetAlias, R.GetAliasRequest(model="m", alias="prod")),
        (stub.DeleteAlias, R.DeleteAliasRequest(model="m", alias="prod")),
        (stub.GetVersion, R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", alias="prod"))),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == near
    far = rpc_error(stub.GetAlias, R.GetAliasRequest(model="m", alias="canary"))
    assert far.details() == "model 'm' has no alias 'canary'; it has 'prd', 'staging'; set it with SetAlias"


def test_a_missing_alias_lists_ten_set_ones_and_counts_the_rest(stub, two_versions):
    for number in range(12):
        stub.SetAlias(R.SetAliasRequest(model="m", alias=f"a{number:02}", version=1))
    error = rpc_error(stub.GetAlias, R.GetAliasRequest(model="m", alias="zzz"))
    listed = ", ".join(f"'a{number:02}'" for number in range(10))
    assert (
        error.details() == f"model 'm' has no alias 'zzz'; it has {listed} and 2 more; set it with SetAlias"
    )

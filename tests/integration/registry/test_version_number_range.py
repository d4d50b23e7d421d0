"""A version number below 1 where a version is named (an alias's, a route's or shadow's, a
lineage parent) is INVALID_ARGUMENT saying so: it was NOT_FOUND "has no version -1", as if such
a version could exist."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import common_pb2, registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload, upload_versions

R = registry_pb2


@pytest.fixture
def data(stub) -> bytes:
    """Version 1 of "m"; the artifact it holds."""
    upload_versions(stub, "m", 1)
    return onnx_identity()


@pytest.mark.parametrize("version", [0, -1, -(2**63)])
def test_an_alias_to_a_version_below_1_is_invalid_argument(stub, data, version):
    error = rpc_error(stub.SetAlias, R.SetAliasRequest(model="m", alias="prod", version=version))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"version must be >= 1, got {version}"


# 0 set in the target's oneof is a version too (it said "needs exactly one of version or alias").
@pytest.mark.parametrize("version", [0, -1, -(2**63)])
def test_a_route_or_shadow_to_a_version_below_1_is_invalid_argument(stub, data, version):
    route = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=[R.Route(version=version, weight=100)]))
    assert route.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert route.details() == f"routes[0].version must be >= 1, got {version}"
    shadow = rpc_error(
        stub.Deploy,
        R.DeployRequest(model="m", routes=[R.Route(version=1, weight=100)], shadow=R.Shadow(version=version)),
    )
    assert shadow.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert shadow.details() == f"shadow.version must be >= 1, got {version}"


def test_a_lineage_parent_below_1_is_invalid_argument(stub, data):
    header = onnx_header("m", data, lineage=R.Lineage(parent_version=-1))
    error = rpc_error(upload, stub, header, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "lineage.parent_version must be >= 1, got -1"
    assert stub.GetModel(R.GetModelRequest(name="m")).version_count == 1


def test_a_bad_version_reference_names_its_own_field(stub, data):
    # Every VersionRef was "ref" or bare "model" in the message: CompareVersions's b, or an
    # ExportOnnx source, was refused as "ref.version" or "model is required", which names no field
    # of the request.
    ref = common_pb2.VersionRef
    good = ref(model="m", version=1)
    refused = [
        (
            stub.CompareVersions,
            R.CompareVersionsRequest(a=good, b=ref(model="m", version=-1)),
            "b.version must be >= 1, got -1",
        ),
        (stub.CompareVersions, R.CompareVersionsRequest(a=good), "b.model is required"),
        (
            stub.CompareVersions,
            R.CompareVersionsRequest(a=ref(model="M"), b=good),
            "a.model 'M' is not a valid name",
        ),
        (
            stub.CompareVersions,
            R.CompareVersionsRequest(a=good, b=ref(model="m", alias="Prod")),
            "b.alias 'Prod' is not a valid name",
        ),
        (stub.ExportOnnx, R.ExportOnnxRequest(), "source.model is required"),
        (
            stub.GetVersion,
            R.GetVersionRequest(ref=ref(model="m", version=0)),
            "ref.version must be >= 1, got 0",
        ),
        (stub.GetLineage, R.GetLineageRequest(), "ref.model is required"),
    ]
    for call, request, words in refused:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(words), error.details()


@pytest.mark.parametrize("expected", [-1, -(2**63)])
def test_an_expected_version_below_0_is_invalid_argument(stub, data, expected):
    # It was FAILED_PRECONDITION "points at version 1, not -1 as expected; read it again and
    # retry", which no retry could ever pass.
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    request = R.SetAliasRequest(model="m", alias="prod", version=1, expected_version=expected)
    error = rpc_error(stub.SetAlias, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"expected_version must be >= 0 (the version the alias points at, 0: it must not exist yet), got {expected}"
    )

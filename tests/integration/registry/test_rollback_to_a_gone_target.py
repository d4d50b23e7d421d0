"""A rollback whose earlier revision routes to a version deleted since, or through an alias
deleted since, is FAILED_PRECONDITION saying which and what to do: the model and the revision
exist, so NOT_FOUND (which it was) misled. Nothing is written."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


@pytest.fixture
def three_versions(stub) -> None:
    data = onnx_identity()
    for _ in range(3):
        upload(stub, onnx_header("m", data), data)


def deploy(stub, *routes: R.Route, shadow: R.Shadow | None = None) -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model="m", routes=routes, shadow=shadow))


def test_rolling_back_to_a_deleted_version_is_failed_precondition(stub, three_versions):
    deploy(stub, R.Route(version=1, weight=90), R.Route(version=2, weight=10))
    deploy(stub, R.Route(version=3, weight=100))
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=2))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "model 'm' cannot roll back to deployment revision 1: version 2 (its routes[1]) was deleted; "
        "deploy what should serve now with Deploy"
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).revision == 2
    assert len(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments) == 2


def test_rolling_back_to_a_deleted_alias_or_shadow_is_failed_precondition(stub, three_versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="stg", version=2))
    deploy(stub, R.Route(alias="stg", weight=100), shadow=R.Shadow(version=1))
    deploy(stub, R.Route(version=3, weight=100))
    stub.DeleteAlias(R.DeleteAliasRequest(model="m", alias="stg"))
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=1))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "model 'm' cannot roll back to deployment revision 1: alias 'stg' (its routes[0]) is no longer "
        "set; version 1 (its shadow) was deleted; set the alias again with SetAlias, or deploy what "
        "should serve now with Deploy"
    )
    assert len(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments) == 2

    stub.SetAlias(R.SetAliasRequest(model="m", alias="stg", version=3))
    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert "version 1 (its shadow) was deleted" in error.details()


def test_the_history_shows_a_deleted_version_as_resolving_to_nothing(stub, three_versions):
    deploy(stub, R.Route(version=1, weight=90), R.Route(version=2, weight=10))
    deploy(stub, R.Route(version=3, weight=100))
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=2))

    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    # resolved_version 0 is "no longer resolves", as for an alias deleted since.
    assert [(r.version, r.resolved_version) for r in history[1].routes] == [(1, 1), (2, 0)]

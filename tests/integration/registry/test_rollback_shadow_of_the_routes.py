"""A Rollback checks the restored revision's shadow against its routes as they resolve now, as
Deploy does: where an alias moved or a version was deleted since, so that the shadow resolves to
the version every route sends requests to, the rollback is FAILED_PRECONDITION saying so and what
to deploy instead, and nothing is written. A Rollback restores a revision as it was or refuses: it
never restores something other than what the history shows."""

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


def revisions(stub) -> int:
    return len(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments)


def test_a_route_alias_moved_onto_the_shadow_refuses_the_rollback(stub, three_versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    deploy(stub, R.Route(alias="prod", weight=100), shadow=R.Shadow(version=2))
    deploy(stub, R.Route(version=3, weight=100))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "model 'm' cannot roll back to deployment revision 1: its shadow names version 2, the version "
        "every route sends requests to now, so it would copy no request; deploy what should serve now "
        "with Deploy (its routes without the shadow), or move alias 'prod' back with SetAlias"
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).revision == 2
    assert revisions(stub) == 2


def test_a_shadow_following_latest_onto_the_routed_version_refuses_the_rollback(stub, three_versions):
    deploy(stub, R.Route(version=2, weight=100), shadow=R.Shadow(alias="latest"))
    deploy(stub, R.Route(version=1, weight=100))
    # Version 3 is in no one's use now; once it is gone, `latest` names version 2.
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=3))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "model 'm' cannot roll back to deployment revision 1: its shadow names alias 'latest' "
        "(version 2), the version every route sends requests to now, so it would copy no request; "
        "deploy what should serve now with Deploy (its routes without the shadow)"
    )
    assert revisions(stub) == 2


def test_a_shadow_beside_the_routes_is_restored(stub, three_versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    deploy(stub, R.Route(alias="prod", weight=100), shadow=R.Shadow(version=2))
    deploy(stub, R.Route(version=3, weight=100))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=3))

    restored = stub.Rollback(R.RollbackRequest(model="m"))
    assert (restored.revision, restored.routes[0].resolved_version, restored.shadow.resolved_version) == (
        3,
        3,
        2,
    )

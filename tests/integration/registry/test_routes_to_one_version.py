"""Routes that resolve to one version split nothing between them (a canary of a version against
itself), so Deploy refuses them, naming both routes and the version, as it refuses a shadow of
the version every route serves. An alias moved later (SetAlias) may bring a
deployment there, as a promotion does: the move is made, and the deployment, read or as
the SetAlias answer carries it, warns what it routes to now. A Rollback to a revision that would
route so now is refused, as Deploy refuses it."""

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
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=2))


def deploy(stub, *routes: R.Route, shadow: R.Shadow | None = None) -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model="m", routes=routes, shadow=shadow))


def revisions(stub) -> int:
    return len(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments)


@pytest.mark.parametrize(
    ("routes", "named"),
    [
        (
            [R.Route(alias="canary", weight=50), R.Route(alias="latest", weight=50)],
            "routes[0] (alias 'canary') and routes[1] (alias 'latest')",
        ),
        (
            [R.Route(version=1, weight=90), R.Route(alias="prod", weight=10)],
            "routes[0] (version 1) and routes[1] (alias 'prod')",
        ),
    ],
)
def test_routes_that_resolve_to_one_version_are_invalid_argument(stub, three_versions, routes, named):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))
    current = deploy(stub, R.Route(version=2, weight=100))
    version = 3 if "canary" in named else 1
    error = rpc_error(deploy, stub, *routes)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{named} both resolve to version {version}, so they would split nothing between them; "
        f"deploy one route to version {version} with their weights added, or first point an alias at "
        "the version it should send requests to (SetAlias)",
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")) == current
    assert revisions(stub) == 1


def test_a_route_alias_moved_onto_another_routes_version_is_moved_and_warned(stub, three_versions):
    deployed = deploy(stub, R.Route(alias="prod", weight=90), R.Route(alias="canary", weight=10))
    assert list(deployed.warnings) == []

    # Promoting the canary: prod moves to the canary's version.
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))
    warning = (
        "routes[0] (alias 'prod') and routes[1] (alias 'canary') both resolve to version 2 now, so "
        "it answers their 100% and they split nothing; deploy one route to it (Deploy), or move one "
        "of the aliases (SetAlias)"
    )
    assert (moved.version, list(moved.deployment_warnings)) == (2, [warning])
    current = stub.GetDeployment(R.GetDeploymentRequest(model="m"))
    assert (current.revision, list(current.warnings)) == (deployed.revision, [warning])
    assert [r.resolved_version for r in current.routes] == [2, 2]

    # An alias the deployment does not name says nothing of it.
    assert (
        list(stub.SetAlias(R.SetAliasRequest(model="m", alias="other", version=1)).deployment_warnings) == []
    )
    back = stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))
    assert list(back.deployment_warnings) == []
    assert list(stub.GetDeployment(R.GetDeploymentRequest(model="m")).warnings) == []


PROMOTED = (
    "routes[0] (alias 'prod') and routes[1] (alias 'canary') both resolve to version 2 now, so "
    "it answers their 100% and they split nothing; deploy one route to it (Deploy), or move one "
    "of the aliases (SetAlias)"
)


def test_the_same_deploy_after_a_promotion_returns_the_current_revision_warned(stub, three_versions):
    routes = (R.Route(alias="prod", weight=90), R.Route(alias="canary", weight=10))
    deployed = deploy(stub, *routes)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))

    again = deploy(stub, *routes)
    assert (again.revision, list(again.warnings)) == (deployed.revision, [PROMOTED])
    assert revisions(stub) == 1


def test_only_the_current_revision_carries_warnings(stub, three_versions):
    deploy(stub, R.Route(alias="prod", weight=90), R.Route(alias="canary", weight=10))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    assert [list(d.warnings) for d in history] == [[PROMOTED]]

    # The first revision routes elsewhere now that it is past: it answers nothing.
    deploy(stub, R.Route(version=3, weight=100))
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    assert [list(d.warnings) for d in history] == [[], []]
    first = stub.ListDeployments(R.ListDeploymentsRequest(model="m", page_size=1))
    second = stub.ListDeployments(
        R.ListDeploymentsRequest(model="m", page_size=1, page_token=first.next_page_token)
    )
    assert [(d.revision, list(d.warnings)) for d in second.deployments] == [(1, [])]


def test_a_rollback_names_only_the_aliases_moved_since(stub, three_versions):
    deploy(stub, R.Route(alias="prod", weight=90), R.Route(alias="canary", weight=10))
    deploy(stub, R.Route(version=3, weight=100))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=3))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert error.details().endswith("or move alias 'canary' and alias 'prod' back with SetAlias")


def test_an_upload_that_moves_a_routed_alias_carries_the_deployment_warnings(stub, three_versions):
    deploy(stub, R.Route(alias="latest", weight=90), R.Route(alias="canary", weight=10))
    data = onnx_identity()
    pushed = upload(stub, onnx_header("m", data, alias="canary"), data)
    warning = (
        "routes[0] (alias 'latest') and routes[1] (alias 'canary') both resolve to version 4 now, so "
        "it answers their 100% and they split nothing; deploy one route to it (Deploy), or move one "
        "of the aliases (SetAlias)"
    )
    assert (pushed.alias_moved.to_version, list(pushed.alias_moved.deployment_warnings)) == (4, [warning])
    assert list(stub.GetDeployment(R.GetDeploymentRequest(model="m")).warnings) == [warning]

    # latest moves on to v5; the deployment splits again.
    again = upload(stub, onnx_header("m", data, alias="other"), data)
    assert list(again.alias_moved.deployment_warnings) == []


def test_a_route_alias_moved_onto_the_shadow_is_moved_and_warned(stub, three_versions):
    deploy(stub, R.Route(alias="prod", weight=100), shadow=R.Shadow(alias="canary"))
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))
    warning = (
        "shadow (alias 'canary') resolves to version 2 now, the version every route sends requests "
        "to, so it copies no request; deploy without the shadow (Deploy), or move an alias (SetAlias)"
    )
    assert list(moved.deployment_warnings) == [warning]
    assert list(stub.GetDeployment(R.GetDeploymentRequest(model="m")).warnings) == [warning]


def test_a_rollback_to_routes_that_resolve_to_one_version_now_is_refused(stub, three_versions):
    deploy(stub, R.Route(alias="prod", weight=90), R.Route(alias="canary", weight=10))
    deploy(stub, R.Route(version=3, weight=100))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=1))

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'm' cannot roll back to deployment revision 1: its routes[0] (alias 'prod') and "
        "routes[1] (alias 'canary') both resolve to version 1 now, so they would split nothing between "
        "them; deploy what should serve now with Deploy, or move alias 'canary' back with SetAlias",
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).revision == 2
    assert revisions(stub) == 2

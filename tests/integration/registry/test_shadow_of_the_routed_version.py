"""Deploy refuses a shadow that resolves to the version every route sends requests to: it would
copy each request to the version that answers it, and compare a version with itself."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


@pytest.fixture
def two_versions(stub) -> None:
    # One signature: Deploy refuses a shadow whose answers differ in shape from the routes'.
    artifact = onnx_identity()
    for _ in range(2):
        upload(stub, onnx_header("m", artifact), artifact)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))


def deploy(stub, routes: list[R.Route], shadow: R.Shadow | None = None) -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model="m", routes=routes, shadow=shadow))


@pytest.mark.parametrize(
    ("routes", "shadow", "named"),
    [
        ([R.Route(version=1, weight=100)], R.Shadow(version=1), "version 1"),
        ([R.Route(version=1, weight=100)], R.Shadow(alias="prod"), "alias 'prod' (version 1)"),
        ([R.Route(alias="prod", weight=100)], R.Shadow(version=1), "version 1"),
        # Two routes that resolve to one version still serve every request from it.
        ([R.Route(alias="prod", weight=50), R.Route(version=1, weight=50)], R.Shadow(version=1), "version 1"),
    ],
)
def test_a_shadow_of_the_only_routed_version_is_invalid_argument(stub, two_versions, routes, shadow, named):
    current = deploy(stub, [R.Route(version=2, weight=100)])
    error = rpc_error(deploy, stub, routes, shadow)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"shadow names {named}, the version every route sends requests to, so each copied request "
        "would run on it twice; shadow a version the routes do not serve, or deploy without a shadow"
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")) == current
    assert len(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments) == 1


def test_a_shadow_beside_the_routed_versions_is_deployed(stub, two_versions):
    alone = deploy(stub, [R.Route(version=1, weight=100)], R.Shadow(version=2))
    assert alone.shadow.resolved_version == 2
    # Sent a share of the traffic, a version may shadow the rest.
    split = deploy(
        stub, [R.Route(version=1, weight=90), R.Route(version=2, weight=10)], R.Shadow(alias="latest")
    )
    assert split.revision == 2 and split.shadow.resolved_version == 2

"""Deploy refuses two routes to one version or alias: one route with the weights added says the
same, and a listing showing a version twice misleads."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


@pytest.fixture
def data(stub) -> bytes:
    artifact = onnx_identity()
    upload(stub, onnx_header("m", artifact), artifact)
    return artifact


@pytest.mark.parametrize(
    ("target", "words"), [({"version": 1}, "version 1"), ({"alias": "prod"}, "alias 'prod'")]
)
def test_two_routes_to_one_target_are_invalid_argument(stub, data, target, words):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    routes = [R.Route(weight=60, **target), R.Route(weight=40, **target)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"routes[1] names {words} again (routes[0] does); give it one route with the weights added"
    )


def test_a_comment_over_4_kib_is_refused(stub, data):
    # Every change the model's followers receive, and each page of its history, carries it.
    routes = [R.Route(version=1, weight=100)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes, comment="c" * 4097))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "comment takes at most 4 KiB, this one 4 KiB (4097 bytes); say more where the change is tracked "
        "and link to it"
    )
    assert list(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments) == []
    assert stub.Deploy(R.DeployRequest(model="m", routes=routes, comment="c" * 4096)).revision == 1


def test_deleting_the_version_latest_routes_to_says_how_to_deploy_elsewhere(stub, data):
    # It said "move those to another version first", though `latest` cannot be moved: the
    # deployment has to name another version.
    upload(stub, onnx_header("m", data), data)
    stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(alias="latest", weight=100)]))
    error = rpc_error(stub.DeleteVersion, R.DeleteVersionRequest(model="m", version=2))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "version 2 of model 'm' is in use by deployment revision 1 (routes[0] follows 'latest', which "
        "names version 2 until it is deleted); first deploy routes that do not serve it (Deploy), or "
        "roll back to a deployment that does not (Rollback)",
    )
    assert stub.GetModel(R.GetModelRequest(name="m")).latest_version == 2
    stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=1, weight=100)]))
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=2))


def test_a_deployed_model_is_deleted_with_force_the_message_says(stub, data):
    # It said "delete those first", but a deployment has no delete: it ends with its model.
    stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=1, weight=100)]))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    error = rpc_error(stub.DeleteModel, R.DeleteModelRequest(name="m"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'm' is in use by alias 'prod' and a deployment; pass force to delete them with the model",
    )
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).revision == 1
    assert stub.DeleteModel(R.DeleteModelRequest(name="m", force=True)).deleted_versions == 1

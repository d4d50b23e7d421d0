"""Rolling back a model's first deployment returns it to no deployment: the history records
it, GetDeployment and a further Rollback say so, and serving routes to the latest version."""

from __future__ import annotations

import time

import grpc
import numpy as np

from tessera.v1 import inference_pb2_grpc, registry_pb2
from tests.integration.registry.conftest import rpc_error
from tests.integration.serving.serving_models import linear_model, predict_request, upload

R = registry_pb2
X = np.ones((2, 4), np.float32)


def served_version(inference: inference_pb2_grpc.InferenceStub, expected: int) -> int:
    """The version that serves a request without a version or alias, once it is `expected`
    (serving hears of registry changes from its listener and swaps in the background)."""
    deadline = time.monotonic() + 30
    while (version := inference.Predict(predict_request("linear", X)).version) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return version


def test_rolling_back_the_first_deployment_leaves_no_deployment(stub, channel):
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "linear", linear_model(2.0))
    assert served_version(inference, 2) == 2  # no deployment: the latest version
    first = stub.Deploy(R.DeployRequest(model="linear", routes=[R.Route(version=1, weight=100)]))
    assert (first.revision, first.undeployed) == (1, False)
    assert served_version(inference, 1) == 1

    rolled = stub.Rollback(R.RollbackRequest(model="linear"))
    assert (rolled.revision, rolled.rolled_back_from, rolled.undeployed) == (2, 1, True)
    assert list(rolled.routes) == [] and not rolled.HasField("shadow")
    assert rolled.comment == "rollback of revision 1 to no deployment"

    none = rpc_error(stub.GetDeployment, R.GetDeploymentRequest(model="linear"))
    assert none.code() == grpc.StatusCode.NOT_FOUND
    assert "revision 2 rolled it back to none" in none.details()
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="linear")).deployments
    assert [(d.revision, d.undeployed, d.rolled_back_from) for d in history] == [(2, True, 1), (1, False, 0)]
    again = rpc_error(stub.Rollback, R.RollbackRequest(model="linear"))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no deployment to roll back" in again.details()
    assert len(stub.ListDeployments(R.ListDeploymentsRequest(model="linear")).deployments) == 2

    assert served_version(inference, 2) == 2
    # Nothing routes to version 1 any more, so it may go.
    stub.DeleteVersion(R.DeleteVersionRequest(model="linear", version=1))


def test_a_deploy_after_rolling_back_to_none_rolls_back_to_none_again(stub, channel):
    upload(channel, "linear", linear_model(1.0))
    stub.Deploy(R.DeployRequest(model="linear", routes=[R.Route(version=1, weight=100)]))
    stub.Rollback(R.RollbackRequest(model="linear"))
    third = stub.Deploy(R.DeployRequest(model="linear", routes=[R.Route(version=1, weight=100)]))
    assert third.revision == 3
    assert stub.GetDeployment(R.GetDeploymentRequest(model="linear")).revision == 3
    fourth = stub.Rollback(R.RollbackRequest(model="linear"))
    assert (fourth.revision, fourth.undeployed) == (4, True)
    assert fourth.comment == "rollback of revision 3 to revision 2 (no deployment)"
    assert rpc_error(stub.Rollback, R.RollbackRequest(model="linear")).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )

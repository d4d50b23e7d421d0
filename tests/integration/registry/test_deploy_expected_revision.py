"""Deploy and Rollback take `expected_revision`, a compare-and-set on the model's newest deployment
revision (0: never deployed), as SetAlias takes `expected_version`: two operators rolling back one
bad revision at once restore one revision, not two, and a deploy planned on an old view of the
deployment does not undo one made meanwhile. A refusal is FAILED_PRECONDITION and writes nothing."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2


@pytest.fixture
def three_versions(stub) -> None:
    data = onnx_identity()
    for _ in range(3):
        upload(stub, onnx_header("m", data), data)


def deploy(stub, version: int, **fields) -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=version, weight=100)], **fields))


def history(stub) -> list[int]:
    return [d.revision for d in stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments]


def test_a_second_rollback_of_the_same_revision_is_refused(stub, three_versions):
    for version in (1, 2, 3):
        deploy(stub, version)
    first = stub.Rollback(R.RollbackRequest(model="m", expected_revision=3))
    assert (first.revision, first.routes[0].version) == (4, 2)

    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m", expected_revision=3))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'm' is at deployment revision 4, where the call expected revision 3: another deploy or "
        "rollback came first; read its deployment history again (ListDeployments) and retry if the "
        "change still stands",
    )
    assert history(stub) == [4, 3, 2, 1]
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).routes[0].version == 2


def test_a_deploy_expects_the_newest_revision_or_none(stub, three_versions):
    assert deploy(stub, 1, expected_revision=0).revision == 1
    stale = rpc_error(deploy, stub, 2, expected_revision=0)
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stale.details().startswith(
        "model 'm' is at deployment revision 1, where the call expected revision 0 (never deployed): "
    )
    # Refused even where it would change nothing: the caller's view is out of date.
    assert rpc_error(deploy, stub, 1, expected_revision=7).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert history(stub) == [1]
    assert deploy(stub, 2, expected_revision=1).revision == 2
    # An undeployed revision counts as the newest too.
    assert stub.Rollback(R.RollbackRequest(model="m", expected_revision=2)).revision == 3
    assert stub.Rollback(R.RollbackRequest(model="m", expected_revision=3)).undeployed
    assert deploy(stub, 3, expected_revision=4).revision == 5


def test_never_deployed_and_negative_expectations(stub, three_versions):
    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m", expected_revision=2))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'm' was never deployed, where the call expected revision 2; read its deployment history "
        "again (ListDeployments) and retry if the change still stands",
    )
    negative = rpc_error(deploy, stub, 1, expected_revision=-1)
    assert (negative.code(), negative.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected_revision must be >= 0 (the model's newest deployment revision, 0: never deployed), got -1",
    )
    assert history(stub) == []


def test_a_revision_kept_from_before_the_model_was_deleted_matches_none_of_the_new_ones(stub, three_versions):
    deploy(stub, 1)
    kept = deploy(stub, 2).revision
    stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    data = onnx_identity()
    first, second = (upload(stub, onnx_header("m", data), data).version for _ in range(2))

    # The model created again numbers its revisions on from the deleted one's, not from 1 again.
    assert [deploy(stub, first).revision, deploy(stub, second).revision] == [kept + 1, kept + 2]
    stale = rpc_error(deploy, stub, first, expected_revision=kept)
    assert (stale.code(), stale.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"model 'm' is at deployment revision {kept + 2}, where the call expected revision {kept}: "
        "another deploy or rollback came first; read its deployment history again (ListDeployments) "
        "and retry if the change still stands",
    )
    assert rpc_error(stub.Rollback, R.RollbackRequest(model="m", expected_revision=kept)).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert history(stub) == [kept + 2, kept + 1]
    assert stub.GetDeployment(R.GetDeploymentRequest(model="m")).routes[0].version == second


def test_revisions_go_on_per_name_as_version_numbers_do(stub, three_versions):
    # A model never deleted numbered its first revision on from the highest any deleted model of
    # any name had reached (4 here), where its versions number from 1.
    for version in (1, 2, 3):
        deploy(stub, version)
    data = onnx_identity()
    upload(stub, onnx_header("n", data), data)
    stub.Deploy(R.DeployRequest(model="n", routes=[R.Route(version=1, weight=100)]))
    for model in ("m", "n"):
        stub.DeleteModel(R.DeleteModelRequest(name=model, force=True))
    for model, first in (("m", 4), ("n", 2), ("fresh", 1)):
        version = upload(stub, onnx_header(model, data), data).version
        routes = [R.Route(version=version, weight=100)]
        created = stub.Deploy(R.DeployRequest(model=model, routes=routes, expected_revision=0))
        assert (model, created.revision) == (model, first)


def test_a_model_deleted_before_it_was_deployed_numbers_its_revisions_from_1(stub, three_versions):
    stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    data = onnx_identity()
    assert deploy(stub, upload(stub, onnx_header("m", data), data).version).revision == 1


def test_a_restart_keeps_the_revisions_deleted_models_reached(data_dir):
    data = onnx_identity()
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        upload(stub, onnx_header("m", data), data)
        for _ in range(2):
            deploy(stub, 1)
            stub.Rollback(R.RollbackRequest(model="m"))
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    finally:
        first.stop()

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        assert deploy(stub, upload(stub, onnx_header("m", data), data).version).revision == 5
    finally:
        second.stop()

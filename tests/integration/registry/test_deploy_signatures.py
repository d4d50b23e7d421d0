"""Deploy refuses routes and a shadow whose versions' signatures disagree: a request without a
version would otherwise get answers of one shape or another by the split, and a shadow's
comparison would match outputs by name and skip the rest."""

from __future__ import annotations

import io

import grpc
import pytest

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import onnx_header, rpc_error, upload

R = registry_pb2


def onnx_matmul(
    width: int, classes: int, output: str = "output", classes_dim: int | str | None = None
) -> bytes:
    """An ONNX graph: `output` = input @ W, input float32 [-1, width], `output` [-1, classes]
    (or [-1, classes_dim], a name leaving it dynamic)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((width, classes), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], [output])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info(
                output, TensorProto.FLOAT, ["batch", classes if classes_dim is None else classes_dim]
            )
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


@pytest.fixture
def versions(stub) -> None:
    """Model m: versions 1 and 3 output [-1, 2], version 2 outputs [-1, 5]."""
    for classes in (2, 5, 2):
        data = onnx_matmul(4, classes)
        upload(stub, onnx_header("m", data), data)


DISAGREE = (
    "version 2 (signature: inputs input float32 [-1, 4]; outputs output float32 [-1, 5]) and version 1 "
    "(signature: inputs input float32 [-1, 4]; outputs output float32 [-1, 2]) disagree: output 'output': "
    "shape [-1, 5] vs [-1, 2]"
)


def test_routes_to_versions_of_other_signatures_are_refused(stub, versions):
    routes = [R.Route(version=1, weight=50), R.Route(version=2, weight=50)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"routes[1] and routes[0] send requests to versions that answer differently: {DISAGREE}; "
        "route to versions of one signature, or register the new signature as a model of its own",
    )
    assert list(stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments) == []


def test_a_shadow_of_another_signature_is_refused(stub, versions):
    routes = [R.Route(version=1, weight=100)]
    shadow = R.Shadow(version=2, percent=10)
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes, shadow=shadow))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"shadow and routes[0] send requests to versions that answer differently: {DISAGREE}; "
        "route to versions of one signature, or register the new signature as a model of its own",
    )


def test_an_alias_resolving_to_another_signature_is_refused(stub, versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="new", version=2))
    routes = [R.Route(version=1, weight=90), R.Route(alias="new", weight=10)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("routes[1] and routes[0] send requests to versions that answer")


def test_routes_of_one_signature_deploy(stub, versions):
    routes = [R.Route(version=1, weight=50), R.Route(version=3, weight=50)]
    shadow = R.Shadow(version=3, percent=10)
    assert stub.Deploy(R.DeployRequest(model="m", routes=routes, shadow=shadow)).revision == 1


def test_moving_a_deployed_alias_to_another_signature_warns(stub, versions):
    # Alias moves are made (a training job's register_as moves one as it ends); the answer says
    # what the deployment now mixes.
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))
    routes = [R.Route(version=1, weight=90), R.Route(alias="canary", weight=10)]
    stub.Deploy(R.DeployRequest(model="m", routes=routes))
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=2))
    assert list(moved.deployment_warnings) == [
        "routes[1] (alias 'canary') now sends requests to a version that answers differently from "
        f"routes[0] (version 1): {DISAGREE}; deploy versions of one signature (Deploy), or move the "
        "alias back (SetAlias)"
    ]


def test_a_dynamic_dimension_agrees_with_any_size(stub, versions):
    # Version 4 leaves its output's classes dimension dynamic, as an upload's check of a declared
    # signature against the graph accepts -1 there for any size.
    data = onnx_matmul(4, 2, classes_dim="classes")
    upload(stub, onnx_header("m", data), data)
    routes = [R.Route(version=1, weight=50), R.Route(version=4, weight=50)]
    assert stub.Deploy(R.DeployRequest(model="m", routes=routes)).revision == 1


def test_a_refusal_names_the_version_a_tensor_is_only_in(stub, versions):
    data = onnx_matmul(4, 2, output="logits")
    upload(stub, onnx_header("m", data), data)
    routes = [R.Route(version=1, weight=50), R.Route(version=4, weight=50)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes))
    assert error.details().split(" disagree: ")[1].split("; route to")[0] == (
        "output 'logits': only in version 4; output 'output': only in version 1"
    )


MIXED = (
    "routes[1] (alias 'canary') now sends requests to a version that answers differently from "
    f"routes[0] (version 1): {DISAGREE}; deploy versions of one signature (Deploy), or move the "
    "alias back (SetAlias)"
)


def test_a_deployment_whose_alias_moved_to_another_signature_warns_as_it_is_read(stub, versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))
    routes = [R.Route(version=1, weight=90), R.Route(alias="canary", weight=10)]
    stub.Deploy(R.DeployRequest(model="m", routes=routes))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=2))
    assert list(stub.GetDeployment(R.GetDeploymentRequest(model="m")).warnings) == [MIXED]
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    assert [list(d.warnings) for d in history] == [[MIXED]]


def test_a_rollback_to_a_revision_that_now_mixes_signatures_is_refused(stub, versions):
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=3))
    canary = [R.Route(version=1, weight=90), R.Route(alias="canary", weight=10)]
    stub.Deploy(R.DeployRequest(model="m", routes=canary))
    stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=1, weight=100)]))
    stub.SetAlias(R.SetAliasRequest(model="m", alias="canary", version=2))
    error = rpc_error(stub.Rollback, R.RollbackRequest(model="m"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'm' cannot roll back to deployment revision 1: its routes[1] (alias 'canary') now sends "
        f"requests to a version that answers differently from routes[0] (version 1): {DISAGREE}; deploy "
        "what should serve now with Deploy, or move alias 'canary' back with SetAlias",
    )
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    assert [d.revision for d in history] == [2, 1]

"""A Deploy of what is deployed already changes nothing: it returns the current revision instead
of adding one, so the next Rollback restores the deployment before it, not the same routes; a
Rollback passes over such a revision that an older daemon added."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.registry.records import decode_deployment, encode_deployment
from tesserad.registry.tables import DEPLOYMENTS
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload

R = registry_pb2


@pytest.fixture
def versions(stub) -> None:
    artifact = onnx_identity()
    for n in (1, 2):
        upload(stub, onnx_header("m", artifact, description=f"v{n}"), artifact)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=2))


def deploy(stub, *routes: R.Route, shadow: R.Shadow | None = None, comment: str = "") -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model="m", routes=routes, shadow=shadow, comment=comment))


def test_an_identical_deploy_returns_the_current_revision(stub, versions):
    deploy(stub, R.Route(version=1, weight=100))
    split = (R.Route(version=1, weight=70), R.Route(alias="prod", weight=30))
    shadow = R.Shadow(version=2, percent=10)
    current = deploy(stub, *split, shadow=shadow, comment="canary")
    # Route order and the comment say nothing about where requests go.
    again = deploy(stub, *reversed(split), shadow=shadow, comment="again")
    assert again.revision == current.revision == 2 and again.comment == "canary"
    history = stub.ListDeployments(R.ListDeploymentsRequest(model="m")).deployments
    assert [d.revision for d in history] == [2, 1]

    restored = stub.Rollback(R.RollbackRequest(model="m"))
    assert [(r.version, r.weight) for r in restored.routes] == [(1, 100)]
    assert restored.rolled_back_from == 2


def test_a_deploy_that_changes_anything_is_a_revision(stub, versions):
    deploy(stub, R.Route(version=1, weight=100))
    assert deploy(stub, R.Route(version=1, weight=100), shadow=R.Shadow(version=2, percent=5)).revision == 2
    assert deploy(stub, R.Route(version=1, weight=100), shadow=R.Shadow(version=2, percent=6)).revision == 3
    assert deploy(stub, R.Route(version=1, weight=100)).revision == 4
    assert deploy(stub, R.Route(alias="prod", weight=100)).revision == 5


def test_a_deploy_after_a_rollback_to_none_is_a_revision(stub, versions):
    deploy(stub, R.Route(version=1, weight=100))
    stub.Rollback(R.RollbackRequest(model="m"))
    assert deploy(stub, R.Route(version=1, weight=100)).revision == 3


def test_a_rollback_passes_over_a_same_revision_an_older_daemon_added(data_dir):
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(first.channel())
        artifact = onnx_identity()
        for n in (1, 2):
            upload(stub, onnx_header("m", artifact, description=f"v{n}"), artifact)
        deploy(stub, R.Route(version=1, weight=100))
        deploy(stub, R.Route(version=2, weight=100))
    finally:
        first.stop()
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            again = decode_deployment(txn.get(DEPLOYMENTS, ("m", 2)))
            txn.put(DEPLOYMENTS, ("m", 3), encode_deployment(replace(again, revision=3, previous_revision=2)))
    finally:
        store.close()

    second = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(second.channel())
        restored = stub.Rollback(R.RollbackRequest(model="m"))
        assert [(r.version, r.weight) for r in restored.routes] == [(1, 100)]
        assert restored.comment == "rollback of revision 3 to revision 1"
    finally:
        second.stop()

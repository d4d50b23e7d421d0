"""A model's deployment history is bounded (registry.deployment_history, here 3): a model deployed
by CI again and again keeps its newest revisions and those its Rollbacks restore in turn, and a
Rollback past them is refused saying what to do, with nothing changed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tesserad.registry.deployments import _over_history
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import onnx_header, onnx_identity, rpc_error, upload

R = registry_pb2
HISTORY = 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry_pb2_grpc.RegistryStub]:
    running = InProcessDaemon(
        daemon_settings(
            tmp_path_factory.mktemp("deployments") / "data", **{"registry.deployment_history": HISTORY}
        )
    ).start()
    yield registry_pb2_grpc.RegistryStub(running.channel())
    running.stop()


def with_versions(stub: registry_pb2_grpc.RegistryStub, model: str, count: int) -> None:
    data = onnx_identity()
    for _ in range(count):
        upload(stub, onnx_header(model, data), data)


def deploy(stub: registry_pb2_grpc.RegistryStub, model: str, version: int) -> R.Deployment:
    return stub.Deploy(R.DeployRequest(model=model, routes=[R.Route(version=version, weight=100)]))


def history(stub: registry_pb2_grpc.RegistryStub, model: str) -> list[tuple[int, int]]:
    """(revision, version routed) of each kept revision, newest first."""
    listed = stub.ListDeployments(R.ListDeploymentsRequest(model=model, page_size=1000))
    return [(d.revision, d.routes[0].version if d.routes else 0) for d in listed.deployments]


def test_deploys_keep_the_newest_revisions_and_rollbacks_walk_back_as_far_as_kept(registry):
    with_versions(registry, "ci", 4)
    for version in (1, 2, 3, 4, 1, 2, 3, 4, 1, 2):
        deploy(registry, "ci", version)
    assert history(registry, "ci") == [(10, 2), (9, 1), (8, 4)]

    # Each Rollback adds a revision, yet keeps the revisions the next Rollbacks restore.
    first = registry.Rollback(R.RollbackRequest(model="ci"))
    assert (first.revision, first.routes[0].version) == (11, 1)
    assert history(registry, "ci") == [(11, 1), (10, 2), (9, 1), (8, 4)]
    second = registry.Rollback(R.RollbackRequest(model="ci"))
    assert (second.revision, second.routes[0].version) == (12, 4)
    assert second.comment == "rollback of revision 11 to revision 8"
    kept = history(registry, "ci")
    assert kept == [(12, 4), (11, 1), (10, 2)]

    past = rpc_error(registry.Rollback, R.RollbackRequest(model="ci"))
    assert (past.code(), past.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "model 'ci' cannot roll back to deployment revision 7: it is no longer kept "
        "(registry.deployment_history is 3, so a model keeps the 2 deployments before its current one "
        "that Rollbacks restore); deploy what should serve now with Deploy, or raise "
        "registry.deployment_history to keep more",
    )
    assert history(registry, "ci") == kept
    assert registry.GetDeployment(R.GetDeploymentRequest(model="ci")).revision == 12

    # A version only dropped revisions routed to is in no one's use.
    registry.DeleteVersion(R.DeleteVersionRequest(model="ci", version=3))
    assert deploy(registry, "ci", 1).revision == 13
    assert history(registry, "ci") == [(13, 1), (12, 4), (11, 1)]


def test_a_lowered_history_holds_from_the_next_start_for_models_not_deployed_again(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    running = InProcessDaemon(daemon_settings(data, **{"registry.deployment_history": 20})).start()
    stub = registry_pb2_grpc.RegistryStub(running.channel())
    with_versions(stub, "ci", 4)
    for version in (1, 2, 3, 4, 1, 2, 3, 4, 1, 2):
        deploy(stub, "ci", version)
    stub.Rollback(R.RollbackRequest(model="ci"))  # revision 11 restores revision 9's routes
    with_versions(stub, "steady", 1)
    deploy(stub, "steady", 1)
    with_versions(stub, "idle", 1)
    running.stop()

    caplog.set_level("INFO", logger="tesserad.registry")
    running = InProcessDaemon(daemon_settings(data, **{"registry.deployment_history": HISTORY})).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(running.channel())
        # As a Deploy or Rollback would have left it: the newest 3, and the 2 revisions before the
        # current one that Rollbacks restore in turn (11 restores 8, then 7).
        assert history(stub, "ci") == [(11, 1), (10, 2), (9, 1), (8, 4), (7, 3)]
        assert history(stub, "steady") == [(1, 1)]
        assert [
            (r.getMessage(), r.models, r.revisions) for r in caplog.records if "pruned" in r.getMessage()
        ] == [("pruned deployment history to registry.deployment_history", 1, 6)]
    finally:
        running.stop()

    # What the Rollbacks keep is not over the bound: the next start writes nothing for it.
    store = Store.open(data / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            assert [m for m in ("ci", "steady", "idle") if _over_history(txn, m, HISTORY)] == []
    finally:
        store.close()

    running = InProcessDaemon(daemon_settings(data, **{"registry.deployment_history": HISTORY})).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(running.channel())
        assert history(stub, "ci") == [(11, 1), (10, 2), (9, 1), (8, 4), (7, 3)]
        assert stub.Rollback(R.RollbackRequest(model="ci")).routes[0].version == 4
        assert stub.Rollback(R.RollbackRequest(model="ci")).routes[0].version == 3
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("kept", "says"),
    [
        (1, "so a model keeps only its current deployment, none for a Rollback to restore"),
        (2, "so a model keeps the one deployment before its current one that a Rollback restores"),
    ],
)
def test_a_rollback_past_a_history_of_one_or_two_says_what_is_kept_in_words(tmp_path, kept, says):
    running = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"registry.deployment_history": kept})
    ).start()
    try:
        stub = registry_pb2_grpc.RegistryStub(running.channel())
        with_versions(stub, "small", 3)
        for version in (1, 2, 3):
            deploy(stub, "small", version)
        if kept == 2:
            stub.Rollback(R.RollbackRequest(model="small"))
        before = history(stub, "small")
        past = rpc_error(stub.Rollback, R.RollbackRequest(model="small"))
        assert past.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"(registry.deployment_history is {kept}, {says}); deploy what" in past.details()
        assert history(stub, "small") == before
    finally:
        running.stop()

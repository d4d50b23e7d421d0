"""A model's `updated_at` (`tessera models ls`'s "updated") is its last change of any kind, as
MLflow's last_updated_timestamp moves on alias and tag changes: a version registered or deleted,
an alias set, moved or deleted, a deploy or rollback, an edit of its description or tags. It moved
only for a new version or an edit, so a promotion left the model looking untouched."""

from __future__ import annotations

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import upload_versions

R = registry_pb2


def updated(stub) -> float:
    return stub.GetModel(R.GetModelRequest(name="m")).updated_at.ToDatetime().timestamp()


def test_every_change_of_a_model_moves_its_updated_at(stub):
    upload_versions(stub, "m", 3)
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    assert updated(stub) == moved.updated_at.ToDatetime().timestamp()
    deployed = stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=2, weight=100)]))
    assert updated(stub) == deployed.created_at.ToDatetime().timestamp()
    rolled = stub.Rollback(R.RollbackRequest(model="m"))
    assert updated(stub) == rolled.created_at.ToDatetime().timestamp()
    before = updated(stub)
    stub.DeleteAlias(R.DeleteAliasRequest(model="m", alias="prod"))
    after_unalias = updated(stub)
    assert after_unalias > before
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=3))
    assert updated(stub) > after_unalias

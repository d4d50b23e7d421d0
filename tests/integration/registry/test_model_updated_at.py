"""A model's `updated_at` (`tessera models ls`'s "updated") is its last change of any kind, as
MLflow's last_updated_timestamp moves on alias and tag changes: a version registered or deleted,
an alias set, moved or deleted, a deploy or rollback, an edit of its description or tags. It moved
only for a new version or an edit, so a promotion left the model looking untouched."""

from __future__ import annotations

import time

import grpc

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import rpc_error, upload_versions

R = registry_pb2


def updated(stub) -> float:
    return stub.GetModel(R.GetModelRequest(name="m")).updated_at.ToDatetime().timestamp()


def now_us() -> int:
    """The clock the in-process daemon stamps with, in microseconds, a microsecond early for the
    rounding of its float seconds."""
    return time.time_ns() // 1000 - 1


def updated_us(stub) -> int:
    return stub.GetModel(R.GetModelRequest(name="m")).updated_at.ToMicroseconds()


def test_every_change_of_a_model_moves_its_updated_at(stub):
    upload_versions(stub, "m", 3)
    moved = stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    assert updated(stub) == moved.updated_at.ToDatetime().timestamp()
    deployed = stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=2, weight=100)]))
    assert updated(stub) == deployed.created_at.ToDatetime().timestamp()
    rolled = stub.Rollback(R.RollbackRequest(model="m"))
    assert updated(stub) == rolled.created_at.ToDatetime().timestamp()
    # Stamped no earlier than the change began: the clock need not advance between two calls.
    unalias_began = now_us()
    stub.DeleteAlias(R.DeleteAliasRequest(model="m", alias="prod"))
    assert updated_us(stub) >= unalias_began
    delete_began = now_us()
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=3))
    assert updated_us(stub) >= delete_began


def test_a_refused_deploy_leaves_updated_at_as_it_was(stub):
    upload_versions(stub, "m", 2)
    before = stub.GetModel(R.GetModelRequest(name="m")).updated_at
    routes = [R.Route(version=1, weight=50), R.Route(version=1, weight=50)]
    error = rpc_error(stub.Deploy, R.DeployRequest(model="m", routes=routes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetModel(R.GetModelRequest(name="m")).updated_at == before

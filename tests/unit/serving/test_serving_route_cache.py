"""Routing caches a model's deployment and aliases on first use; a change the registry commits
while a request fills that cache must not leave the cache on what the change replaced."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest

from tesserad.serving.pool import ModelPool, ServableVersion, ServingDefaults, servable_file
from tesserad.serving.service import DeploymentPlan, InferenceService, Target


class ChangingDeployment:
    """A VersionSource of 'm' versions 1 and 2 deployed to version 1, until the first read of
    the deployment (or of an alias): then the deployment (and the alias) moves to version 2,
    committed and refreshed before that read answers what it read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.deployed = 1
        self.changed = False
        self.service: InferenceService | None = None
        self.refreshed = threading.Event()

    def _read(self) -> int:
        read = self.deployed
        if self.service is not None and not self.changed:
            self.changed = True
            self.deployed = 2
            self.service.on_registry_change("m")
            assert self.refreshed.wait(10), "the change was never refreshed"
        return read

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        return servable_file(model, version or self._read(), "onnx", self.path)

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)

    def deployment(self, model: str) -> DeploymentPlan | None:
        return DeploymentPlan(routes=((self._read(), 100),))

    def model_names(self) -> list[str]:
        return ["m"]

    def model_identity(self, model: str) -> Hashable:
        return 1


@pytest.fixture
def source(linear_onnx: Path) -> Iterator[ChangingDeployment]:
    source = ChangingDeployment(linear_onnx)
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    # Asked on the swaps' thread at the end of each refresh: the sign that one ran.
    service.add_deletion_listener(lambda model, identity: None, lambda model: source.refreshed.set())
    source.service = service
    yield source
    service.close()


def test_a_deploy_committed_while_a_request_reads_the_deployment_is_followed(
    source: ChangingDeployment,
) -> None:
    assert source.service is not None
    assert source.service.route(Target("m")) == (1, None)  # what it read, before the change
    assert source.service.route(Target("m")) == (2, None)


def test_an_alias_moved_while_a_request_reads_it_is_followed(source: ChangingDeployment) -> None:
    assert source.service is not None
    assert source.service.route(Target("m", alias="production")) == (1, None)
    assert source.service.route(Target("m", alias="production")) == (2, None)

"""A deployment's shadow copies requests that another version answers: a request its own
version answers is never copied to it again (that would run it twice and compare the version
with itself), as when a canary's version also shadows, or an alias moved under the shadow."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import pytest

from tesserad.serving.pool import ModelPool, ServableVersion, ServingDefaults, servable_file
from tesserad.serving.service import DeploymentPlan, InferenceService, Target


class Deployed:
    """A VersionSource of 'm' with the deployment it is given."""

    def __init__(self, path: Path, plan: DeploymentPlan) -> None:
        self.path = path
        self.plan = plan

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        return servable_file(model, version or 1, "onnx", self.path)

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)

    def deployment(self, model: str) -> DeploymentPlan | None:
        return self.plan

    def model_names(self) -> list[str]:
        return ["m"]

    def model_identity(self, model: str) -> Hashable:
        return 1


@pytest.fixture
def serve(linear_onnx: Path) -> Iterator[Callable[[DeploymentPlan], InferenceService]]:
    services: list[InferenceService] = []

    def start(plan: DeploymentPlan) -> InferenceService:
        pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
        services.append(InferenceService(Deployed(linear_onnx, plan), pool, autoload=True))
        return services[-1]

    yield start
    for service in services:
        service.close()


def test_a_canary_that_also_shadows_is_copied_only_the_requests_the_other_version_answers(serve) -> None:
    service = serve(DeploymentPlan(routes=((1, 90), (2, 10)), shadow=(2, 100)))
    picks = Counter(service.route(Target("m")) for _ in range(1000))
    assert picks == {(1, 2): 900, (2, None): 100}


def test_the_shadow_percent_counts_the_requests_another_version_answers(serve) -> None:
    service = serve(DeploymentPlan(routes=((1, 50), (2, 50)), shadow=(2, 10)))
    picks = Counter(service.route(Target("m")) for _ in range(1000))
    assert picks == {(1, 2): 50, (1, None): 450, (2, None): 500}


def test_a_shadow_every_route_now_resolves_to_copies_nothing(serve) -> None:
    service = serve(DeploymentPlan(routes=((2, 100),), shadow=(2, 100)))
    assert {service.route(Target("m")) for _ in range(100)} == {(2, None)}

"""A request routed to a version whose config is swapped while the request is being validated, an
unload of a model whose versions are unloaded by others meanwhile, a refresh of a registry change
whose versions are unloaded by others while it runs, and a request or metadata call routed to a
version that is deleted, and its refresh run, before it is loaded."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_fakes import ArrivalLock, HeldArtifact, UnreadableVersions, Versions

from tesserad.errors import NotFound, TesseraError, Unavailable
from tesserad.registry.ensembles import EnsembleSpec, Member
from tesserad.serving import service as service_module
from tesserad.serving.ensemble import EnsemblePlan
from tesserad.serving.pool import (
    LoadedVersion,
    LoadState,
    ModelPool,
    ServableVersion,
    ServingConfig,
    ServingDefaults,
    servable_file,
)
from tesserad.serving.predict import predict
from tesserad.serving.service import DeploymentPlan, InferenceService, Target, VersionSource
from tesserad.serving.signature import Signature


class OneVersion(Versions):
    """A VersionSource of one ONNX version, 'm' version 1, which it gives whatever version is asked."""

    def __init__(self, path: Path) -> None:
        super().__init__({1: servable_file("m", 1, "onnx", path)})

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        return self.versions[1]


@pytest.fixture
def inference(linear_onnx: Path) -> Iterator[InferenceService]:
    service = InferenceService(
        OneVersion(linear_onnx), ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True
    )
    yield service
    service.close()


def test_a_request_whose_version_is_swapped_while_it_is_validated_goes_to_the_new_one(
    inference: InferenceService, linear_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swap (on its own thread) may drain the old instance between the request's look at the
    version and its queueing: the request is routed again, never failed (it once failed INTERNAL,
    AttributeError on the drained instance's batcher, None by then)."""
    version = servable_file("m", 1, "onnx", linear_onnx)
    inference.pool.load(version, ServingConfig())
    validate = service_module.validate_request
    swapped: list[Any] = []

    def validate_during_a_swap(*args: Any, **kwargs: Any) -> int:
        if not swapped:
            swapped.append(inference.pool.load(version, ServingConfig(max_batch_size=4)))
        rows: int = validate(*args, **kwargs)
        return rows

    monkeypatch.setattr(service_module, "validate_request", validate_during_a_swap)
    inputs: Mapping[str, np.ndarray] = {"x": np.ones((1, 4), np.float32)}
    outputs: Sequence[str] = ["y"]
    submitted = inference.submit(Target("m", 1), inputs, outputs, None, "r1", started=time.perf_counter_ns())
    assert submitted.entry is swapped[0]
    assert submitted.future is not None and submitted.future.result(10).outputs["y"].shape == (1, 3)


def test_unloading_a_model_skips_its_versions_unloaded_meanwhile(
    inference: InferenceService, linear_onnx: Path
) -> None:
    """It listed the loaded versions, then unloaded each: one unloaded by another call in between
    failed the whole call NOT_FOUND, although it had unloaded the others."""
    for version in (1, 2):
        inference.pool.load(servable_file("m", version, "onnx", linear_onnx), ServingConfig())
    held = HeldArtifact(linear_onnx)
    arrivals = threading.Semaphore(0)
    inference.pool._load_locks[("m", 1)] = ArrivalLock(arrivals)  # type: ignore[assignment]
    swap = ServableVersion("m", 1, "onnx", held)
    swapping = threading.Thread(target=inference.pool.load, args=(swap, ServingConfig(max_batch_size=4)))
    swapping.start()
    assert held.inside.wait(30)
    unloaded: list[list[int]] = []
    unloading = threading.Thread(
        target=lambda: unloaded.append([e.version for e in inference.unload(Target("m"))])
    )
    unloading.start()
    assert arrivals.acquire(timeout=30)  # it listed both, and waits for the swap of version 1
    inference.pool.unload("m", 2)
    held.release.set()
    swapping.join(30)
    unloading.join(30)
    assert unloaded == [[1]]
    assert inference.pool.list() == []


def test_a_refresh_finishes_when_a_version_it_unloads_is_unloaded_under_it(
    linear_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh of a deletion found a version loaded, and a request or UnloadModel unloaded it
    before the refresh did: its NotFound aborted the refresh, so the versions after it stayed (a
    deleted version's failed load among them) and the model stayed marked as changed, each request
    checking its version against the registry until the model's next change."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an ONNX graph")
    source = Versions(
        {1: servable_file("m", 1, "onnx", linear_onnx), 2: servable_file("m", 2, "onnx", broken)}
    )
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    try:
        service.pool.load(source.versions[1], ServingConfig())
        with pytest.raises(TesseraError):
            service.pool.load(source.versions[2], ServingConfig())
        refreshed = threading.Event()
        service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
        get = service.pool.get

        def get_then_unloaded_by_another(model: str, version: int) -> LoadedVersion | None:
            entry = get(model, version)
            if entry is not None and threading.current_thread().name.startswith("serving-swap"):
                service.pool.unload(model, version)  # another call's, just after the refresh looked
            return entry

        monkeypatch.setattr(service.pool, "get", get_then_unloaded_by_another)
        source.versions.clear()
        service.on_registry_change("m")
        assert refreshed.wait(30)
        assert service.pool.list() == []  # version 2's failure is forgotten too
        assert service._unsettled == {}
    finally:
        service.close()


def test_a_request_is_answered_when_its_model_changes_during_each_check(linear_onnx: Path) -> None:
    """While a change waits for its refresh, a request checks its loaded version against the
    registry; a change to the model during that check left the version unchecked, so a model
    changed faster than one check takes sent the request back to check again until its rounds
    ran out (UNAVAILABLE), although each check found the version still registered."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    refreshing = threading.Event()
    refreshes_released = threading.Event()

    def kept(model: str) -> None:
        if model == "other":  # holds every refresh queued after its own
            refreshing.set()
            assert refreshes_released.wait(30)

    try:
        service.pool.load(source.versions[1], ServingConfig())
        service.add_deletion_listener(lambda model, identity: None, kept)
        service.on_registry_change("other")
        assert refreshing.wait(30)
        service.on_registry_change("m")
        servable = source.servable

        def changed_while_read(model: str, version: int | None, alias: str | None) -> ServableVersion:
            found = servable(model, version, alias)
            service.on_registry_change(model)  # another registration of it, committed meanwhile
            return found

        source.servable = changed_while_read  # type: ignore[method-assign]
        inputs = {"x": np.ones((1, 4), np.float32)}
        version, answer = asyncio.run(
            predict(service, Target("m"), inputs, ["y"], None, "r1", started=time.perf_counter_ns())
        )
        assert (version, answer.outputs["y"].shape) == (1, (1, 3))
    finally:
        refreshes_released.set()
        service.close()


def _deleted_when_read(service: InferenceService, source: Versions, doomed: set[int]) -> None:
    """Delete each version of `doomed` when a request or call first reads it from `source`, and
    let the refresh of that deletion run to completion before the read answers: the refresh wins
    the race with the request, and rewrites the routes the request took."""
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
    servable = source.servable

    def deleted_first(model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version in doomed and not threading.current_thread().name.startswith("serving-swap"):
            doomed.discard(version)
            del source.versions[version]
            refreshed.clear()
            service.on_registry_change(model)
            assert refreshed.wait(30)
        return servable(model, version, alias)

    source.servable = deleted_first  # type: ignore[method-assign]


@pytest.fixture
def routed_to_latest(linear_onnx: Path) -> Iterator[Callable[[int], tuple[InferenceService, Versions]]]:
    """Makes a service of 'm' versions 1 to the count given, none loaded, `latest` routed (and
    cached) to the last."""
    services: list[InferenceService] = []

    def make(count: int) -> tuple[InferenceService, Versions]:
        source = Versions({v: servable_file("m", v, "onnx", linear_onnx) for v in range(1, count + 1)})
        service = InferenceService(
            source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True
        )
        services.append(service)
        assert service.route(Target("m")) == (count, None)
        return service, source

    yield make
    for service in services:
        service.close()


def _predict(service: InferenceService, target: Target) -> int:
    inputs = {"x": np.ones((1, 4), np.float32)}
    version, answer = asyncio.run(
        predict(service, target, inputs, ["y"], None, "r1", started=time.perf_counter_ns())
    )
    assert answer.outputs["y"].shape == (1, 3)
    return version


def test_a_request_without_a_version_whose_version_is_deleted_before_it_loads_goes_to_the_new_latest(
    routed_to_latest: Callable[[int], tuple[InferenceService, Versions]],
) -> None:
    """Routed to version 3, which was deleted before its autoload read it: the refresh had
    rewritten `latest` to 2 (no route to 3 left to drop), and the request was answered NOT_FOUND
    for version 3, which it never named."""
    service, source = routed_to_latest(3)
    _deleted_when_read(service, source, {3})
    assert _predict(service, Target("m")) == 2
    with pytest.raises(NotFound, match="no version 3"):
        _predict(service, Target("m", 3))  # a version named is never routed elsewhere


def test_metadata_without_a_version_whose_version_is_deleted_before_it_is_read_describes_the_new_latest(
    routed_to_latest: Callable[[int], tuple[InferenceService, Versions]],
) -> None:
    service, source = routed_to_latest(3)
    _deleted_when_read(service, source, {3})
    assert service.describe(Target("m")).version == 2
    with pytest.raises(NotFound, match="no version 3"):
        service.describe(Target("m", 3))


def test_a_request_routed_to_a_deleted_version_in_every_round_says_its_versions_changed(
    routed_to_latest: Callable[[int], tuple[InferenceService, Versions]],
) -> None:
    """Its rounds ran out: it was told the model was unloaded while it loaded, which it was not."""
    service, source = routed_to_latest(4)
    _deleted_when_read(service, source, {4, 3, 2})
    with pytest.raises(Unavailable, match="changed while this request was routed"):
        _predict(service, Target("m"))


def test_metadata_without_a_version_routed_to_a_deleted_version_in_every_round_says_its_versions_changed(
    routed_to_latest: Callable[[int], tuple[InferenceService, Versions]],
) -> None:
    """It re-routed up to 5 rounds (a request 3), and its last answered NOT_FOUND for a version
    it never named."""
    service, source = routed_to_latest(4)
    _deleted_when_read(service, source, {4, 3, 2})
    with pytest.raises(Unavailable, match="changed while this metadata call was routed"):
        service.describe(Target("m"))


def clocked_service(
    source: VersionSource, *, autoload: bool = True
) -> tuple[InferenceService, list[float], threading.Event]:
    """A service on `source` whose clock stands still until the test moves `now[0]` (retry
    intervals pass when the test says, not with the machine's speed), and an event set as each
    refresh ends."""
    now = [0.0]
    service = InferenceService(
        source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=autoload, clock=lambda: now[0]
    )
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
    return service, now, refreshed


def test_while_the_source_fails_requests_ask_it_once_an_interval_and_follow_it_once_readable(
    linear_onnx: Path,
) -> None:
    """While a change's refresh kept failing, each request read the source to check its loaded
    version; it may still never answer from an artifact the source, readable again, replaced."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service, now, refreshed = clocked_service(source)
    try:
        assert _predict(service, Target("m")) == 1  # loaded, and `latest` cached
        source.failing = True
        service.on_registry_change("m")
        assert refreshed.wait(30)  # it failed: `latest` could not be read
        source.reads = 0
        for _ in range(5):
            assert _predict(service, Target("m")) == 1
        assert source.reads == 1
        now[0] += service_module.SOURCE_RETRY_S
        refreshed.clear()
        assert _predict(service, Target("m")) == 1
        assert refreshed.wait(30)  # the failed refresh, queued again by the request, failed again
        assert source.reads == 3  # the request's, and the refresh's
        # Readable again, with another artifact under the number: the old one never answers again.
        source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
        source.failing = False
        now[0] += service_module.SOURCE_RETRY_S
        assert _predict(service, Target("m")) == 1
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        service.close()


def test_a_change_asks_a_source_that_failed_again_at_once(linear_onnx: Path) -> None:
    """A change committed is news from the source: before its refresh, a request checks its
    version against the source, though the source failed within the interval."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service = InferenceService(
        source,
        ModelPool(ServingDefaults(intra_op_threads=1), None),
        autoload=True,
        clock=lambda: 0.0,
    )
    refreshed = threading.Event()
    holding = threading.Event()
    refreshes_released = threading.Event()

    def kept(model: str) -> None:
        refreshed.set()
        if model == "other":  # holds every refresh queued after its own
            holding.set()
            assert refreshes_released.wait(30)

    service.add_deletion_listener(lambda model, identity: None, kept)
    try:
        assert _predict(service, Target("m")) == 1
        source.failing = True
        service.on_registry_change("m")
        assert refreshed.wait(30)
        assert _predict(service, Target("m")) == 1  # the source failed to say: served
        service.on_registry_change("other")
        assert holding.wait(30)
        source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
        source.failing = False
        service.on_registry_change("m")  # its refresh waits
        assert _predict(service, Target("m")) == 1
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        refreshes_released.set()
        service.close()


def test_a_refresh_leaves_loaded_the_artifact_a_request_loaded_after_it_found_the_version_replaced(
    linear_onnx: Path,
) -> None:
    """A refresh found the loaded artifact of a version replaced (its model deleted and registered
    again), and unloaded whatever was loaded under the number when it came to it: the new
    artifact too, which a request had loaded meanwhile."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
    servable = source.servable

    def request_loads_when_latest_is_read(
        model: str, version: int | None, alias: str | None
    ) -> ServableVersion:
        if alias is not None and threading.current_thread().name.startswith("serving-swap"):
            # After the refresh read version 1, before it unloads: a request loads the new artifact.
            source.servable = servable  # type: ignore[method-assign]
            assert service.autoload("m", 1).artifact_sha256 == "new"
        return servable(model, version, alias)

    try:
        assert _predict(service, Target("m")) == 1  # the old artifact loaded, and `latest` cached
        source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
        source.servable = request_loads_when_latest_is_read  # type: ignore[method-assign]
        service.on_registry_change("m")
        assert refreshed.wait(30)
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        service.close()


def test_a_refresh_that_failed_is_queued_again_by_a_request_once_an_interval_passed(
    linear_onnx: Path,
) -> None:
    """A refresh that failed (the source unreadable) was never run again: `latest` stayed on the
    version it served until the model's next change, though the source was readable again."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, refreshed = clocked_service(source)
    try:
        assert _predict(service, Target("m")) == 1  # `latest` cached
        source.failing = True
        source.versions[2] = servable_file("m", 2, "onnx", linear_onnx)
        service.on_registry_change("m")
        assert refreshed.wait(30)  # it failed: `latest` could not be read
        source.failing = False
        now[0] += service_module.SOURCE_RETRY_S
        _predict(service, Target("m"))  # queues the refresh again
        _moved(service, Target("m"), 2)
        assert _predict(service, Target("m")) == 2
    finally:
        service.close()


def test_a_refresh_that_could_not_check_a_loaded_version_leaves_it_checked_by_requests(
    linear_onnx: Path,
) -> None:
    """A refresh whose reads of a loaded version failed (the source reading aliases still) counted
    as done: requests stopped checking the version, and its artifact, replaced meanwhile, kept
    answering once the source could say so."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service = InferenceService(
        source,
        ModelPool(ServingDefaults(intra_op_threads=1), None),
        autoload=True,
        clock=lambda: 0.0,
    )
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
    servable = source.servable
    numbers_unreadable = threading.Event()

    def aliases_only(model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version is not None and numbers_unreadable.is_set():
            raise Unavailable("the registry cannot be reached")
        return servable(model, version, alias)

    source.servable = aliases_only  # type: ignore[method-assign]
    try:
        assert _predict(service, Target("m")) == 1
        source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
        numbers_unreadable.set()
        service.on_registry_change("m")
        assert refreshed.wait(30)
        numbers_unreadable.clear()
        assert _predict(service, Target("m", 1)) == 1
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        service.close()


def test_a_read_of_the_source_that_fails_after_a_change_leaves_it_asked_again_at_once(
    linear_onnx: Path,
) -> None:
    """A request's read of its version began before a change (a replica's fetch from its primary
    hanging), and failed after it: the failure marked the source as failed lately, although the
    change had cleared that mark, and for SOURCE_RETRY_S requests were served by the artifact the
    change replaced without asking the source."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service = InferenceService(
        source,
        ModelPool(ServingDefaults(intra_op_threads=1), None),
        autoload=True,
        clock=lambda: 0.0,
    )
    holding = threading.Event()
    refreshes_released = threading.Event()

    def kept(model: str) -> None:
        if model == "other":  # holds every refresh queued after its own
            holding.set()
            assert refreshes_released.wait(30)

    service.add_deletion_listener(lambda model, identity: None, kept)
    servable = source.servable
    reading = threading.Event()
    read_fails = threading.Event()

    def hanging_then_failing(model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version is not None and not reading.is_set():
            reading.set()
            assert read_fails.wait(30)
            raise Unavailable("the primary did not answer")
        return servable(model, version, alias)

    try:
        assert _predict(service, Target("m")) == 1  # the old artifact loaded, and `latest` cached
        service.on_registry_change("other")
        assert holding.wait(30)
        service.on_registry_change("m")  # its refresh waits
        source.servable = hanging_then_failing  # type: ignore[method-assign]
        served: list[int] = []
        request = threading.Thread(target=lambda: served.append(_predict(service, Target("m"))))
        request.start()
        assert reading.wait(30)
        source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
        service.on_registry_change("m")
        read_fails.set()
        request.join(30)
        assert served == [1]  # the source failed to say: served, as it was asked before the change
        assert _predict(service, Target("m")) == 1
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        refreshes_released.set()
        service.close()


class Deployable(Versions):
    """Versions whose deployment a test sets (`plan`), None until then."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.plan: DeploymentPlan | None = None

    def deployment(self, model: str) -> DeploymentPlan | None:
        return self.plan


def test_without_autoload_a_request_cached_without_a_deployment_follows_one_created_before_the_refresh(
    linear_onnx: Path,
) -> None:
    """With `latest` (version 3, not loaded) cached, and no deployment cached, a deployment to
    version 1 (loaded) was created: before its refresh each round routed to `latest` again, as the
    re-route kept the cached "no deployment", and the request failed UNAVAILABLE (its versions
    changed while it was routed) instead of being served by version 1."""
    source = Deployable({v: servable_file("m", v, "onnx", linear_onnx) for v in (1, 2, 3)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=False)
    holding = threading.Event()
    refreshes_released = threading.Event()

    def kept(model: str) -> None:
        if model == "other":  # holds every refresh queued after its own
            holding.set()
            assert refreshes_released.wait(30)

    service.add_deletion_listener(lambda model, identity: None, kept)
    try:
        service.pool.load(source.versions[1], ServingConfig())
        assert service.route(Target("m")) == (3, None)  # `latest` and "no deployment" cached
        service.on_registry_change("other")
        assert holding.wait(30)
        source.plan = DeploymentPlan(((1, 100),))
        service.on_registry_change("m")  # its refresh waits
        assert _predict(service, Target("m")) == 1
    finally:
        refreshes_released.set()
        service.close()


class UnknownIdentity(Versions):
    """Versions of a model whose identity is `identity`; reading it fails (Unavailable) while
    `failing` is set."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.identity = 1
        self.failing = False

    def model_identity(self, model: str) -> Hashable:
        if self.failing:
            raise Unavailable("the registry cannot be reached")
        return self.identity


def test_a_refresh_that_could_not_tell_a_listener_its_model_was_deleted_is_queued_again(
    linear_onnx: Path,
) -> None:
    """A refresh whose read of the model's identity failed told no deletion listener, and counted
    as done: what a listener kept for the model deleted (trace settings) stayed, and applied to the
    new model of its name, until the model's next change."""
    source = UnknownIdentity({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, _ = clocked_service(source)
    drained = threading.Event()
    told: list[tuple[str, Hashable]] = []
    told_once = threading.Event()

    def forget(model: str, identity: Hashable) -> None:
        told.append((model, identity))
        told_once.set()

    def kept(model: str) -> Hashable | None:
        if model == "other":  # queued after the refresh of 'm': done once that one is
            drained.set()
            return None
        return 1

    service.add_deletion_listener(forget, kept)
    try:
        assert _predict(service, Target("m")) == 1
        source.identity = 2  # 'm' deleted, and a model of its name created
        source.failing = True
        service.on_registry_change("m")
        service.on_registry_change("other")
        assert drained.wait(30)
        assert told == []
        source.failing = False
        now[0] += service_module.SOURCE_RETRY_S
        assert _predict(service, Target("m")) == 1  # queues the refresh again
        assert told_once.wait(30)
        assert told == [("m", 1)]
    finally:
        service.close()


@pytest.mark.parametrize("call", ["describe", "ready"])
def test_a_refresh_that_failed_is_queued_again_by_a_metadata_call_once_an_interval_passed(
    linear_onnx: Path, call: str
) -> None:
    """Only a request queued a refresh that failed again: a model asked only for its metadata or
    readiness (a load balancer's probe) kept describing the version `latest` named before, though
    the source was readable again."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, refreshed = clocked_service(source)
    try:
        assert service.describe(Target("m")).version == 1  # `latest` cached
        source.failing = True
        source.versions[2] = servable_file("m", 2, "onnx", linear_onnx)
        service.on_registry_change("m")
        assert refreshed.wait(30)  # it failed: `latest` could not be read
        source.failing = False
        now[0] += service_module.SOURCE_RETRY_S
        getattr(service, call)(Target("m"))  # queues the refresh again
        _moved(service, Target("m"), 2)
        assert service.describe(Target("m")).version == 2
    finally:
        service.close()


def test_a_refresh_of_a_deletion_leaves_loaded_the_version_registered_again_under_its_number(
    linear_onnx: Path,
) -> None:
    """The refresh read version 1 gone, then the model was created again with a new version 1 and
    a request loaded it: the refresh unloaded whatever was loaded under the number by then, the
    new artifact included, rather than only the one it found gone."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="old")})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    refreshes = threading.Semaphore(0)
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshes.release())
    servable = source.servable
    recreated: list[int] = []

    def recreated_after_the_refresh_read(
        model: str, version: int | None, alias: str | None
    ) -> ServableVersion:
        swapping = threading.current_thread().name.startswith("serving-swap")
        try:
            return servable(model, version, alias)
        finally:
            if swapping and version == 1 and not recreated:
                recreated.append(1)  # after the refresh's read: 'm' created again, and a request
                source.versions[1] = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="new")
                service.on_registry_change(model)
                assert _predict(service, Target("m", 1)) == 1

    try:
        assert _predict(service, Target("m", 1)) == 1
        del source.versions[1]
        source.servable = recreated_after_the_refresh_read  # type: ignore[method-assign]
        service.on_registry_change("m")
        assert refreshes.acquire(timeout=30) and refreshes.acquire(timeout=30)  # both changes'
        assert recreated == [1]
        loaded = service.pool.get("m", 1)
        assert loaded is not None and loaded.artifact_sha256 == "new"
    finally:
        service.close()


class DeploymentUnreadableOnce(Versions):
    """Versions without a deployment, whose next read of it fails (Unavailable) once `fail_next`
    is set."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.fail_next = False

    def deployment(self, model: str) -> DeploymentPlan | None:
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("the registry cannot be reached")
        return None


def test_a_refresh_run_again_unloads_the_version_its_alias_served_before_it_failed(
    linear_onnx: Path,
) -> None:
    """`latest` moved from 1 to 2 and the deployment's read failed: the alias had moved already, so
    the refresh run again found `latest` on 2, nothing to move, and left version 1 loaded."""
    source = DeploymentUnreadableOnce({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, refreshed = clocked_service(source)
    try:
        assert _predict(service, Target("m")) == 1  # `latest` and "no deployment" cached
        source.versions[2] = servable_file("m", 2, "onnx", linear_onnx)
        source.fail_next = True
        service.on_registry_change("m")
        assert refreshed.wait(30)
        assert "m" in service._refresh_retry_at  # it failed
        now[0] += 60
        # A metadata call queues the refresh again and loads nothing: a request here could be
        # routed to version 1 before the refresh moves `latest`, and load it again after.
        service.describe(Target("m"))
        _moved(service, Target("m"), 2)
        assert service._refresh_retry_at == {}
        assert [entry.version for entry in service.pool.list("m")] == [2]
        assert _predict(service, Target("m")) == 2
    finally:
        service.close()


def test_a_request_routed_just_before_a_refresh_moved_latest_does_not_load_the_old_version_again(
    linear_onnx: Path,
) -> None:
    """A request routed to version 1 by the cached `latest` found it to check first (its model's
    change not refreshed yet); the refresh then moved `latest` to 2 and unloaded 1, and the
    request's autoload loaded 1 again after it: loaded, served by no route, until the model's next
    change (the CI flake of the test above, when a request queued its refresh again)."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    holding = threading.Event()
    refreshes_released = threading.Event()

    def kept(model: str) -> None:
        if model == "other":  # holds every refresh queued after its own
            holding.set()
            assert refreshes_released.wait(30)

    service.add_deletion_listener(lambda model, identity: None, kept)
    try:
        assert _predict(service, Target("m")) == 1  # loaded, and `latest` cached
        service.on_registry_change("other")
        assert holding.wait(30)
        source.versions[2] = servable_file("m", 2, "onnx", linear_onnx)
        service.on_registry_change("m")  # its refresh waits
        # predict's steps one at a time, the refresh run between them: routed to version 1 ...
        inputs = {"x": np.ones((1, 4), np.float32)}
        submitted = service.submit(Target("m"), inputs, ["y"], None, "r1", started=time.perf_counter_ns())
        assert (submitted.version, submitted.future) == (1, None)
        refreshes_released.set()
        _moved(service, Target("m"), 2)
        assert [entry.version for entry in service.pool.list("m")] == [2]  # `latest` moved, 1 unloaded
        # ... and its autoload after the refresh: routed again, rather than loading version 1.
        assert service.autoload_routed(Target("m"), 1) is None
        assert [entry.version for entry in service.pool.list("m")] == [2]
        assert _predict(service, Target("m")) == 2
        assert _predict(service, Target("m", 1)) == 1  # a version named is still loaded for it
    finally:
        refreshes_released.set()
        service.close()


def test_a_refresh_that_moves_latest_off_a_version_a_request_is_loading_unloads_it_once_loaded(
    linear_onnx: Path,
) -> None:
    """A request's autoload of version 1, which the cached `latest` routed it to, was under way
    when a refresh moved `latest` to 2: the refresh found version 1 not ready, so nothing to
    unload, and the load left it loaded after, served by no route."""
    held = HeldArtifact(linear_onnx)
    source = Versions({1: ServableVersion("m", 1, "onnx", held)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    # Released when the refresh waits for the load of version 1 (or, wrongly, when it ended).
    progress = threading.Semaphore(0)
    service.add_deletion_listener(lambda model, identity: None, lambda model: progress.release())
    service.pool._load_locks[("m", 1)] = ArrivalLock(progress)  # type: ignore[assignment]
    loaded: list[LoadedVersion | None] = []
    try:
        assert service.route(Target("m")) == (1, None)  # `latest` cached, nothing loaded
        loading = threading.Thread(target=lambda: loaded.append(service.autoload_routed(Target("m"), 1)))
        loading.start()
        assert held.inside.wait(30)
        source.versions[2] = servable_file("m", 2, "onnx", linear_onnx)
        service.on_registry_change("m")
        assert progress.acquire(timeout=30)
        held.release.set()
        loading.join(30)
        assert [entry.version for entry in loaded if entry is not None] == [1]
        _refreshes_done(service)
        assert service.pool.list("m") == []
        assert _predict(service, Target("m")) == 2
    finally:
        held.release.set()
        service.close()


def test_a_refresh_of_a_deletion_unloads_the_version_once_a_load_of_it_under_way_is_done(
    linear_onnx: Path,
) -> None:
    """A request's load of version 1 was under way when the refresh of its deletion ran: the refresh
    found it not ready, so nothing to unload, and settled the model; the load then left the deleted
    version loaded, and requests naming it were answered by it, checked no more."""
    held = HeldArtifact(linear_onnx)
    source = Versions(
        {1: ServableVersion("m", 1, "onnx", held), 2: servable_file("m", 2, "onnx", linear_onnx)}
    )
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    # Released when the refresh waits for the load of version 1 (or, wrongly, when it ended).
    progress = threading.Semaphore(0)
    service.add_deletion_listener(lambda model, identity: None, lambda model: progress.release())
    service.pool._load_locks[("m", 1)] = ArrivalLock(progress)  # type: ignore[assignment]
    try:
        loading = threading.Thread(target=service.autoload, args=("m", 1))
        loading.start()
        assert held.inside.wait(30)
        del source.versions[1]
        service.on_registry_change("m")
        assert progress.acquire(timeout=30)
        held.release.set()
        loading.join(30)
        _refreshes_done(service)
        assert service.pool.list("m") == []
        with pytest.raises(NotFound, match="no version 1"):
            _predict(service, Target("m", 1))
    finally:
        held.release.set()
        service.close()


def test_a_refresh_of_a_deletion_leaves_no_failure_listed_of_a_load_under_way_that_fails(
    linear_onnx: Path, tmp_path: Path
) -> None:
    """A request's load of version 1 was under way when the refresh of its deletion ran: the
    refresh marked it to unload once loaded, and dropped no failure (the load was under way); the
    load then failed (its artifact gone), and version 1 stayed listed FAILED, so that a request for
    it was refused as a failed load rather than told the version is gone."""
    held = HeldArtifact(linear_onnx)
    source = Versions(
        {1: ServableVersion("m", 1, "onnx", held), 2: servable_file("m", 2, "onnx", linear_onnx)}
    )
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    failures: list[TesseraError] = []

    def load() -> None:
        try:
            service.autoload("m", 1)
        except TesseraError as exc:
            failures.append(exc)

    try:
        loading = threading.Thread(target=load)
        loading.start()
        assert held.inside.wait(30)
        del source.versions[1]
        service.on_registry_change("m")
        _refreshes_done(service)
        assert [(entry.version, entry.state) for entry in service.pool.list("m")] == [(1, LoadState.LOADING)]
        held.path = tmp_path / "gone.onnx"
        held.path.write_bytes(b"no model")
        held.release.set()
        loading.join(30)
        assert [type(exc).__name__ for exc in failures] == ["NotLoaded"]
        assert service.pool.list("m") == []
        with pytest.raises(NotFound, match="no version 1"):
            _predict(service, Target("m", 1))
    finally:
        held.release.set()
        service.close()


class DroppedWhenLookedUp(dict[str, Any]):
    """The routers' cache, whose entry for a model a request drops (see _forget_routes) just after
    a refresh on the swaps' thread found it there."""

    def __init__(self, service: InferenceService) -> None:
        super().__init__()
        self.service = service
        self.dropped = False

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if found and not self.dropped and threading.current_thread().name.startswith("serving-swap"):
            self.dropped = True
            self.service._forget_routes("m", 1)
        return found


def test_a_refresh_finishes_when_a_request_drops_its_cached_no_deployment_meanwhile(
    linear_onnx: Path,
) -> None:
    """A request re-routed meanwhile dropped the cached "no deployment" between the refresh's look
    for it and its read: the refresh failed KeyError, and was left to be retried."""
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())
    routers = DroppedWhenLookedUp(service)
    service._routers = routers
    try:
        assert _predict(service, Target("m")) == 1  # "no deployment" cached
        assert "m" in dict(routers)
        service.on_registry_change("m")
        assert refreshed.wait(30)
        assert service._refresh_retry_at == {}
        assert service._unsettled == {}
    finally:
        service.close()


def _refreshes_done(service: InferenceService) -> None:
    """Wait for every refresh queued so far to finish (the swaps run one at a time, in order)."""
    service._swaps.submit(lambda: None).result(30)


def _moved(service: InferenceService, target: Target, version: int) -> None:
    """Wait until a refresh moved `target` to `version`, and for that refresh to end: a target
    whose version was loaded moves in the refresh that follows the load of its new one, which runs
    in a thread of its own."""
    deadline = time.monotonic() + 30
    while service.route(target)[0] != version:
        assert time.monotonic() < deadline, f"{target} never moved to version {version}"
        time.sleep(0.01)
    _refreshes_done(service)


def test_a_refresh_that_keeps_failing_waits_ever_longer_and_logs_one_traceback(
    linear_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failure of a refresh logged a traceback, and requests queued it again every
    SOURCE_RETRY_S: a source out of reach for long logged about a traceback a second per model."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, _ = clocked_service(source)
    try:
        assert _predict(service, Target("m")) == 1  # `latest` cached
        source.failing = True
        caplog.set_level(logging.WARNING, logger="tesserad.serving.service")
        service.on_registry_change("m")
        _refreshes_done(service)
        waits = [service._refresh_retry_at["m"] - now[0]]
        for _ in range(6):
            now[0] = service._refresh_retry_at["m"]
            assert _predict(service, Target("m")) == 1  # queues the refresh again
            _refreshes_done(service)
            waits.append(service._refresh_retry_at["m"] - now[0])
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        failed = [r for r in caplog.records if "refreshing the serving targets of 'm'" in r.getMessage()]
        assert [r.exc_info is not None for r in failed] == [True] + [False] * 6
        assert "failed again (7 times in a row): the registry cannot be reached" in failed[-1].getMessage()
        source.failing = False
        now[0] = service._refresh_retry_at["m"]
        assert _predict(service, Target("m")) == 1
        _refreshes_done(service)
        assert service._refresh_retry_at == {}
        source.failing = True
        service.on_registry_change("m")  # a new streak: its first failure with its traceback
        _refreshes_done(service)
        assert service._refresh_retry_at["m"] - now[0] == 1.0
        last = [r for r in caplog.records if "refreshing the serving targets of 'm'" in r.getMessage()][-1]
        assert last.exc_info is not None
    finally:
        service.close()


def test_a_refresh_that_failed_for_a_model_without_requests_is_run_again_by_the_periodic_retry(
    linear_onnx: Path,
) -> None:
    """Only a request or metadata call queued a failed refresh again: a version deleted while the
    source was unreadable stayed loaded, and its model's retry pending, for as long as no call
    came for the model (a deleted model gets none)."""
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, _ = clocked_service(source)
    try:
        assert _predict(service, Target("m", 1)) == 1
        source.failing = True
        del source.versions[1]
        service.on_registry_change("m")
        _refreshes_done(service)
        assert "m" in service._refresh_retry_at  # it could not read version 1
        source.failing = False
        assert service.retry_failed_loads() == 0  # not due yet: nothing queued
        _refreshes_done(service)
        assert [entry.version for entry in service.pool.list("m")] == [1]
        now[0] += service_module.SOURCE_RETRY_S
        assert service.retry_failed_loads() == 0
        _refreshes_done(service)
        assert service.pool.list("m") == []
        assert service._refresh_retry_at == {}
    finally:
        service.close()


class FetchedVersions(Versions):
    """Versions as a replica has those it fetched from its primary: none known without asking it
    (known_servable None), and each read of one waits until `answer` is set (the primary
    blackholed: its fetch waits out its timeout)."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.answer = threading.Event()

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return None

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version is not None:
            assert self.answer.wait(30)
        return super().servable(model, version, alias)


def test_readiness_answers_without_waiting_on_a_read_of_another_machine(linear_onnx: Path) -> None:
    """While a change waited for its refresh, ModelReady read the version from the source: on a
    replica whose primary was blackholed, each probe waited for a fetch to time out, past a
    Kubernetes probe's 1 s timeout."""
    source = FetchedVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    answers: list[bool] = []
    answered = threading.Event()

    def probe() -> None:
        answers.extend([service.ready(Target("m", 1)), service.ready(Target("m"))])
        answered.set()

    try:
        service.pool.load(source.versions[1], ServingConfig())
        assert service.route(Target("m")) == (1, None)  # `latest` cached
        service.on_registry_change("m")  # its refresh waits on its read
        threading.Thread(target=probe, daemon=True).start()
        assert answered.wait(30)
        assert answers == [True, True]  # as requests are served while the source cannot say
    finally:
        source.answer.set()
        service.close()


class UnreadableFetchedVersions(UnreadableVersions):
    """UnreadableVersions as a replica has those it fetched from its primary: none known without
    asking it (known_servable None). `asked_by` holds the threads that read a version by its
    number, one entry a read."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.asked_by: list[threading.Thread] = []

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return None

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version is not None:
            self.asked_by.append(threading.current_thread())
        return super().servable(model, version, alias)


def test_readiness_probes_leave_a_request_after_the_interval_to_ask_the_source(linear_onnx: Path) -> None:
    """A probe took the request's turn to ask the source, though it asked nothing: on a replica
    probed at least once an interval, requests never checked a version with the primary again."""
    source = UnreadableFetchedVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service, now, refreshed = clocked_service(source)
    try:
        assert _predict(service, Target("m", 1)) == 1
        source.failing = True
        service.on_registry_change("m")
        assert refreshed.wait(30)  # it failed: version 1 could not be read
        refreshing = source.asked_by[-1]  # the thread of every refresh
        assert _predict(service, Target("m", 1)) == 1  # its read failed too
        for _ in range(3):
            now[0] += service_module.SOURCE_RETRY_S
            assert service.ready(Target("m", 1))
            source.asked_by.clear()
            assert _predict(service, Target("m", 1)) == 1
            assert len([thread for thread in source.asked_by if thread is not refreshing]) == 1
    finally:
        service.close()


class Models:
    """A VersionSource of ONNX versions of several models, to which a test adds versions."""

    def __init__(self, versions: dict[str, dict[int, ServableVersion]]) -> None:
        self.versions = versions

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        versions = self.versions.get(model, {})
        number = version if version is not None else max(versions, default=0)
        if number not in versions:
            raise NotFound(f"model {model!r} has no version {number}")
        return versions[number]

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)

    def deployment(self, model: str) -> DeploymentPlan | None:
        return None

    def model_names(self) -> list[str]:
        return sorted(self.versions)

    def model_identity(self, model: str) -> Hashable:
        return 1


def test_a_refresh_that_moves_latest_off_a_version_a_request_is_loading_holds_no_other_refresh(
    linear_onnx: Path,
) -> None:
    """The refresh that moved `latest` of 'm' off version 1, which a request was loading, waited
    on the swaps' one thread for that load (seconds, with its warm-up): the refresh of every other
    model queued behind it, so that 'n' kept serving version 1 after its `latest` moved to 2."""
    held = HeldArtifact(linear_onnx)
    source = Models(
        {
            "m": {1: ServableVersion("m", 1, "onnx", held)},
            "n": {1: servable_file("n", 1, "onnx", linear_onnx)},
        }
    )
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    try:
        assert service.route(Target("m")) == (1, None)  # `latest` cached, nothing loaded
        assert service.route(Target("n")) == (1, None)
        loading = threading.Thread(target=service.autoload_routed, args=(Target("m"), 1))
        loading.start()
        assert held.inside.wait(30)
        source.versions["m"][2] = servable_file("m", 2, "onnx", linear_onnx)
        service.on_registry_change("m")
        source.versions["n"][2] = servable_file("n", 2, "onnx", linear_onnx)
        service.on_registry_change("n")
        # Both done while the load of 'm' version 1 is still held (for 30 s at most).
        service._swaps.submit(lambda: None).result(10)
        assert service.route(Target("n")) == (2, None)
        assert [(entry.version, entry.state) for entry in service.pool.list("m")] == [(1, LoadState.LOADING)]
        held.release.set()
        loading.join(30)
        assert service.pool.list("m") == []  # unloaded by the load, once done
        assert _predict(service, Target("m")) == 2
    finally:
        held.release.set()
        service.close()


def test_a_refresh_leaves_loaded_a_version_it_no_longer_routes_to_that_an_ensemble_loaded_since(
    linear_onnx: Path,
) -> None:
    """The refresh read which versions loaded ensembles have as members, then unloaded the versions
    its routes left: a version an ensemble loaded as its member in between was unloaded under it
    (the pool now looks under its lock, as it unloads)."""
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    member = servable_file("m", 1, "onnx", linear_onnx)
    try:
        loaded = pool.load(member, ServingConfig())
        assert loaded.signature is not None
        plan = EnsemblePlan(EnsembleSpec((Member("m", 1),), "mean"), (member,))
        ensemble = ServableVersion(
            "e",
            1,
            "ensemble",
            lambda: nullcontext(linear_onnx),
            signature=loaded.signature,
            ensemble=lambda: plan,
        )
        pool.load(ensemble, ServingConfig())
        assert not pool.unload_ready("m", 1)
        assert pool.ready_versions("m") == [1]
        # A version found deleted is unloaded, member or not, as before.
        assert pool.unload_ready("m", 1, member.artifact_sha256)
        assert pool.ready_versions("m") == []
    finally:
        pool.close()


def test_a_member_an_ensemble_is_loading_stays_loaded_when_a_refresh_leaves_it(linear_onnx: Path) -> None:
    """An ensemble listed its members only once they had loaded: a refresh that left a member while
    the ensemble was loading it marked it, the member's load unloaded it as it ended, and the
    ensemble loaded it a second time."""
    pool = ModelPool(ServingDefaults(instances=1, intra_op_threads=1), None)  # opened once a load
    held = HeldArtifact(linear_onnx)
    member = ServableVersion("m", 1, "onnx", held)
    try:
        signature = pool.load(servable_file("n", 1, "onnx", linear_onnx), ServingConfig()).signature
        plan = EnsemblePlan(EnsembleSpec((Member("m", 1),), "mean"), (member,))
        ensemble = ServableVersion(
            "e", 1, "ensemble", lambda: nullcontext(linear_onnx), signature=signature, ensemble=lambda: plan
        )
        loading = threading.Thread(target=pool.load, args=(ensemble, ServingConfig()))
        loading.start()
        assert held.inside.wait(30)
        assert not pool.unload_ready("m", 1)  # marked: its load is under way
        held.release.set()
        loading.join(30)
        assert [(entry.model, entry.state) for entry in pool.list()] == [
            ("e", LoadState.READY),
            ("m", LoadState.READY),
            ("n", LoadState.READY),
        ]
        assert held.opened == 1
    finally:
        held.release.set()
        pool.close()


def test_a_refresh_unloads_a_version_it_left_whose_only_ensemble_failed_to_load(linear_onnx: Path) -> None:
    """An ensemble whose load failed after its members loaded still counted as their ensemble: a
    refresh that left a member kept it loaded for an ensemble that requests do not load again."""
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    member = servable_file("m", 1, "onnx", linear_onnx)
    try:
        pool.load(member, ServingConfig())  # as itself (a route's): the failed ensemble leaves it
        signature = pool.load(servable_file("n", 1, "onnx", linear_onnx), ServingConfig()).signature
        assert signature is not None
        renamed = (dataclasses.replace(signature.inputs[0], name="z"),)  # the member has no input z
        plan = EnsemblePlan(EnsembleSpec((Member("m", 1),), "mean"), (member,))
        ensemble = ServableVersion(
            "e",
            1,
            "ensemble",
            lambda: nullcontext(linear_onnx),
            signature=Signature(renamed, signature.outputs),
            ensemble=lambda: plan,
        )
        with pytest.raises(TesseraError, match="warm-up"):
            pool.load(ensemble, ServingConfig())
        assert [(entry.model, entry.state) for entry in pool.list()] == [
            ("e", LoadState.FAILED),
            ("m", LoadState.READY),
            ("n", LoadState.READY),
        ]
        assert pool.unload_ready("m", 1)
        assert pool.ready_versions("m") == []
    finally:
        pool.close()


class _LoadedBetween:
    """A version's load lock whose first taker, when it takes it without the pool's own lock held,
    lets a load of the version take it first: a request's load that came between."""

    def __init__(self, pool: ModelPool, servable: ServableVersion) -> None:
        self._lock = threading.Lock()
        self._between: ModelPool | None = pool
        self._servable = servable

    def __enter__(self) -> None:
        pool, self._between = self._between, None
        if pool is not None and pool._lock.acquire(blocking=False):
            pool._lock.release()
            loading = threading.Thread(target=pool.load, args=(self._servable, ServingConfig()))
            loading.start()
            loading.join(30)
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_refresh_that_unloads_a_version_with_no_load_under_way_says_it_unloaded_it(
    linear_onnx: Path,
) -> None:
    """unload_ready let the pool's lock go before it took the version's load lock: a request's load
    could take it first and unload the version marked, and unload_ready answered that it had not
    unloaded it."""
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    servable = servable_file("m", 1, "onnx", linear_onnx)
    try:
        pool.load(servable, ServingConfig())
        pool._load_locks[("m", 1)] = _LoadedBetween(pool, servable)  # type: ignore[assignment]
        assert pool.unload_ready("m", 1)
        assert pool.list() == []
    finally:
        pool.close()


class ClosingOnRelease:
    """A lock that, once `arm` was called, closes `service` (in another thread, to its end) just
    after its next release: the moment between a check made under the lock and what follows."""

    def __init__(self, service: InferenceService) -> None:
        self._lock = threading.Lock()
        self._service = service
        self._armed = False

    def arm(self) -> None:
        self._armed = True

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._armed:
            self._armed = False
            closing = threading.Thread(target=self._service.close)
            closing.start()
            closing.join(30)


def test_a_change_reported_as_the_service_closes_queues_its_refresh_or_nothing(
    inference: InferenceService,
) -> None:
    """The refresh was queued after the lock that checked the service open was let go: a close
    in between shut the refreshes' executor down, and the change's report raised RuntimeError."""
    refresh_lock = ClosingOnRelease(inference)
    inference._refresh_lock = refresh_lock  # type: ignore[assignment]
    refresh_lock.arm()
    inference.on_registry_change("m")
    assert inference._closed


def test_a_refresh_that_finds_the_same_deployment_keeps_its_split_in_turn(linear_onnx: Path) -> None:
    """Each refresh started the deployment's rotation again: with one after every request, an
    80/20 split served version 2 never (a replica retrying a load refreshes its model each time:
    a CI run saw 12% where 20% was deployed)."""
    source = Deployable({v: servable_file("m", v, "onnx", linear_onnx) for v in (1, 2)})
    source.plan = DeploymentPlan(((1, 80), (2, 20)))
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=False)
    try:
        served = []
        for _ in range(10):
            served.append(service.route(Target("m"))[0])
            service._refresh("m")
        assert served.count(2) == 2, served
        # A deployment changed starts its own rotation.
        source.plan = DeploymentPlan(((2, 50), (1, 50)))
        service._refresh("m")
        assert [service.route(Target("m"))[0] for _ in range(4)] == [2, 1, 2, 1]
    finally:
        service.close()


class _RefreshesFirst:
    """A lock (a service's _cache_lock) that, the first time `thread` takes it, lets the refreshes
    queued so far (held back until `blocked` is set) run to their end first."""

    def __init__(self, service: InferenceService, blocked: threading.Event, thread: int) -> None:
        self._lock = threading.Lock()
        self._service = service
        self._blocked = blocked
        self._thread = thread

    def __enter__(self) -> None:
        if threading.get_ident() == self._thread and not self._blocked.is_set():
            self._blocked.set()
            _refreshes_done(self._service)
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_routed_by_now_waits_for_the_warm_load_of_a_refresh_that_ran_while_it_looked(
    linear_onnx: Path,
) -> None:
    """routed_by_now read whether a warm load was under way, then whether a change was unsettled:
    the change's refresh, run in between (settling the change, starting the load of the version
    latest moves to), left it done while that load ran, and the version moved from still served."""
    held = HeldArtifact(linear_onnx)
    source = Versions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    try:
        assert _predict(service, Target("m")) == 1  # `latest` cached, version 1 loaded
        source.versions[2] = ServableVersion("m", 2, "onnx", held)
        blocked = threading.Event()
        service._swaps.submit(blocked.wait, 30)  # the change's refresh queues behind it
        service.on_registry_change("m")
        service._cache_lock = _RefreshesFirst(service, blocked, threading.get_ident())  # type: ignore[assignment]
        routed = service.routed_by_now("m")
        assert not routed.done()
        assert held.inside.wait(30)
        held.release.set()
        routed.result(30)
        assert service.route(Target("m"))[0] == 2
    finally:
        held.release.set()
        service.close()

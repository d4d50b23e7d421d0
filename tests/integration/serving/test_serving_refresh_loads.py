"""The loads a refresh of a registry change starts (the version a deployment or alias moves to,
warmed before it takes traffic) against the refreshes of other models, ensembles and requests:
each race held open by a load that waits on an event of the test."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import (
    W,
    delete_model_numbered_as_before,
    linear_model,
    predict_request,
    reshape_model,
    to_array,
    upload,
)
from test_serving_deleted_versions import HeldRefreshes

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.errors import Unavailable
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc as oip_grpc
from tesserad.serving import pool as pool_module
from tesserad.serving import service as service_module
from tesserad.serving.pool import LoadState, ServingConfig
from tesserad.serving.service import LOAD_RETRY_MAX_S, InferenceService

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw: {what}")


def _loaded(inference: inference_pb2_grpc.InferenceStub, model: str) -> dict[int, int]:
    return {
        m.version: m.state for m in inference.ListLoaded(inference_pb2.ListLoadedRequest(model=model)).models
    }


class HeldArtifacts:
    """Holds each load that opens the artifact of a version in `held` (model, version) until
    `release` is set; `inside` is set once one does."""

    def __init__(self, registry: Any, monkeypatch: pytest.MonkeyPatch, *held: tuple[str, int]) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.opened: list[tuple[str, int]] = []
        artifact_path = registry.artifact_path

        @contextlib.contextmanager
        def held_path(record: Any) -> Iterator[Path]:
            key = (record.model, record.version)
            self.opened.append(key)
            if key in held:
                self.inside.set()
                # Longer than any wait of the test: a test that fails must fail on its own wait.
                assert self.release.wait(120)
            with artifact_path(record) as path:
                yield path

        monkeypatch.setattr(registry, "artifact_path", held_path)


class FailingFirstOpen:
    """Holds the first load that opens the artifact of `failing` (model, version) until `release`
    is set, then fails it (the artifact store out of reach); later loads open it. `inside` is set
    once that first load is held."""

    def __init__(self, registry: Any, monkeypatch: pytest.MonkeyPatch, failing: tuple[str, int]) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        artifact_path = registry.artifact_path

        def failing_once(record: Any) -> Any:
            if (record.model, record.version) == failing and not self.inside.is_set():
                self.inside.set()
                assert self.release.wait(120)
                raise Unavailable("the artifact store cannot be reached")
            return artifact_path(record)

        monkeypatch.setattr(registry, "artifact_path", failing_once)


@pytest.fixture
def daemon(start_daemon) -> Any:
    return start_daemon()


class Serving:
    """The daemon under test: stubs of its API on one channel, and its registry store and serving
    layer (for the faults and waits a test puts in)."""

    def __init__(self, daemon: Any) -> None:
        self.channel = daemon.channel()
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.store = daemon.daemon.registry
        self.service: InferenceService = daemon.daemon.inference
        self._told = threading.Condition()
        self._changes: list[str] = []
        # Added after serving's listener: called once serving has been told of a commit.
        self.store.add_listener(self._told_of)
        self._unanswered: list[grpc.Future] = []

    def _told_of(self, model: str) -> None:
        with self._told:
            self._changes.append(model)
            self._told.notify_all()

    def held_change(self, call: Any, request: Any) -> None:
        """Make the registry change `request` (a call of `call`, to `request.model`) while serving
        cannot route by it (a load or a refresh the test holds), without waiting as the call does
        until it routes by it (ROUTING_WAIT_S, 30 s): return once the change is committed and
        serving told of it. Its answer is checked by answered(), once the test let things go."""
        with self._told:
            before = self._changes.count(request.model)
        answer = call.future(request)
        with self._told:
            told = self._told.wait_for(
                lambda: self._changes.count(request.model) > before or answer.done(), 30
            )
        if answer.done():
            answer.result()
        assert told, f"the change to {request.model!r} was never committed"
        self._unanswered.append(answer)

    def answered(self) -> None:
        """Wait for the answers of the held changes: each an OK, once serving routes by it."""
        while self._unanswered:
            self._unanswered.pop().result(30)

    def alias_on_version_1(self, model: str) -> None:
        """Register versions 1 and 2 of `model` and point its alias 'production' at version 1,
        which a request through the alias then loads (the alias cached)."""
        upload(self.channel, model, linear_model(1.0))
        upload(self.channel, model, linear_model(2.0))
        self.registry.SetAlias(registry_pb2.SetAliasRequest(model=model, alias="production", version=1))
        assert self.inference.Predict(predict_request(model, X, alias="production")).version == 1

    def refreshes_done(self) -> None:
        """Wait for the refreshes queued so far: one thread runs them in turn."""
        self.service._swaps.submit(lambda: None).result(30)


def _unreadable_artifact(
    store: Any, monkeypatch: pytest.MonkeyPatch, version: tuple[str, int], error: Exception
) -> None:
    """Fail each read from `store` of the artifact of `version` (model, version) with `error`."""
    artifact_path = store.artifact_path

    def unreadable(record: Any) -> Any:
        if (record.model, record.version) == version:
            raise error
        return artifact_path(record)

    monkeypatch.setattr(store, "artifact_path", unreadable)


@pytest.fixture
def serving(daemon: Any) -> Serving:
    return Serving(daemon)


def test_a_slow_load_of_the_version_a_deployment_moves_to_holds_no_other_models_refresh(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh that moved 'slow''s deployment to version 2 loaded and warmed version 2 on the
    one thread that runs every refresh: 'other''s alias stayed on version 1 until that load was
    done (seconds for a large model), though its own version 2 loads at once."""
    for model in ("slow", "other"):
        upload(serving.channel, model, linear_model(1.0))
        upload(serving.channel, model, linear_model(2.0))
    serving.registry.Deploy(
        registry_pb2.DeployRequest(model="slow", routes=[registry_pb2.Route(version=1, weight=100)])
    )
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="other", alias="production", version=1))
    # Cached, and loaded: each moves once its new version is loaded like version 1.
    _wait_for(
        lambda: serving.inference.Predict(predict_request("slow", X)).version == 1, "slow deployed on 1"
    )
    assert serving.inference.Predict(predict_request("other", X, alias="production")).version == 1
    held = HeldArtifacts(serving.store, monkeypatch, ("slow", 2))
    try:
        serving.held_change(
            serving.registry.Deploy,
            registry_pb2.DeployRequest(model="slow", routes=[registry_pb2.Route(version=2, weight=100)]),
        )
        assert held.inside.wait(30)
        serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="other", alias="production", version=2))
        _wait_for(
            lambda: serving.inference.Predict(predict_request("other", X, alias="production")).version == 2,
            "other's alias on version 2 while slow's version 2 loads",
        )
        # Until its version 2 is loaded, 'slow' is served by version 1.
        assert serving.inference.Predict(predict_request("slow", X)).version == 1
        assert _loaded(serving.inference, "slow") == {
            1: inference_pb2.LOAD_STATE_READY,
            2: inference_pb2.LOAD_STATE_LOADING,
        }
    finally:
        held.release.set()
    serving.answered()
    _wait_for(
        lambda: serving.inference.Predict(predict_request("slow", X)).version == 2, "slow deployed on 2"
    )
    answer = serving.inference.Predict(predict_request("slow", X))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 2, rtol=1e-6)
    _wait_for(
        lambda: _loaded(serving.inference, "slow") == {2: inference_pb2.LOAD_STATE_READY},
        "slow's version 1 unloaded",
    )


def test_a_version_an_alias_no_longer_moves_to_is_not_left_loaded_by_the_load_started_for_it(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alias moved on to version 3 while version 2, which it moved to before, was loading for
    it: version 2 is unloaded once its load is done, as nothing routes to it."""
    for scale in (1.0, 2.0, 3.0):
        upload(serving.channel, "m", linear_model(scale))
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=1))
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 1
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    try:
        serving.held_change(
            serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
        )
        assert held.inside.wait(30)
        serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=3))
        _wait_for(
            lambda: serving.inference.Predict(predict_request("m", X, alias="production")).version == 3,
            "the alias on version 3 while version 2 loads",
        )
    finally:
        held.release.set()
    serving.answered()
    _wait_for(
        lambda: _loaded(serving.inference, "m") == {3: inference_pb2.LOAD_STATE_READY},
        "only version 3 loaded",
    )


def test_a_shadow_load_queued_after_the_refresh_that_dropped_the_shadow_loads_nothing(
    serving: Serving,
) -> None:
    """A request copied to the shadow version 2, not loaded, queued its load; the refresh of a
    deployment without the shadow ran first, and the load left version 2 loaded after it, served
    by no route, until the model's next change. (The load runs beside the refreshes now: begun
    before the refresh, it is unloaded once done; after it, it loads nothing.)"""
    _deploy_shadowing_version_2(serving.channel)
    # The deployment cached, and the shadow loaded by the load the request queued.
    _wait_for(lambda: serving.inference.Predict(predict_request("m", X)).version == 1, "m deployed")
    _wait_for(
        lambda: _loaded(serving.inference, "m").get(2) == inference_pb2.LOAD_STATE_READY, "the shadow loaded"
    )
    serving.inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    )
    refreshes = HeldRefreshes(serving.service)
    with refreshes.held_after("other", lambda: upload(serving.channel, "other", linear_model(1.0))):
        serving.held_change(
            serving.registry.Deploy,
            registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(version=1, weight=100)]),
        )
        # Routed with the shadow still cached: its load is queued before the refresh of the Deploy.
        assert serving.inference.Predict(predict_request("m", X)).version == 1
        refreshes.release_and_wait("m")
    serving.answered()
    _wait_for(
        lambda: _loaded(serving.inference, "m") == {1: inference_pb2.LOAD_STATE_READY},
        "only version 1 loaded",
    )


class _ArrivalLock:
    """A version's load lock that releases `arrivals` for each taker that finds it held (about to
    wait for it)."""

    def __init__(self, arrivals: threading.Semaphore) -> None:
        self._lock = threading.Lock()
        self._arrivals = arrivals

    def __enter__(self) -> None:
        if self._lock.locked():
            self._arrivals.release()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_load_waiting_behind_one_marked_deleted_leaves_no_listing_of_the_deleted_version(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two LoadModel of version 1 at once, the second waiting for the first, when the version was
    deleted: the refresh marked it, the first load applied the mark as it ended, and the second,
    which loaded the deleted version after it, stayed listed (failed, its artifact gone) until the
    model's next refresh."""
    upload(serving.channel, "m", linear_model(1.0))
    upload(serving.channel, "m", linear_model(2.0))
    arrivals = threading.Semaphore(0)
    serving.service.pool._load_locks[("m", 1)] = _ArrivalLock(arrivals)
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 1))
    request = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=1))
    loads = [
        threading.Thread(target=_ignoring_errors(serving.inference.LoadModel), args=(request,))
        for _ in range(2)
    ]
    try:
        loads[0].start()
        assert held.inside.wait(30)
        loads[1].start()
        assert arrivals.acquire(timeout=30)  # the second waits for the first
        serving.registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="m", version=1))
        serving.refreshes_done()  # its refresh marked version 1
    finally:
        held.release.set()
        for load in loads:
            load.join(60)
    assert 1 not in _loaded(serving.inference, "m")


def _ignoring_errors(call: Callable[..., object]) -> Callable[..., None]:
    def called(*args: object) -> None:
        with contextlib.suppress(Exception):
            call(*args)

    return called


def test_the_load_an_alias_awaits_goes_on_when_the_version_it_served_is_deleted(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias moved to version 2 while its load (with version 1's config) waited for another
    load of version 2 (LoadModel's); version 1 was then deleted, and the alias moved at once, as it
    must. The load it had awaited then shares the other one: it loaded version 2 a second time,
    with version 1's config, undoing the operator's LoadModel."""
    upload(serving.channel, "m", linear_model(1.0))
    upload(serving.channel, "m", linear_model(2.0))
    small = inference_pb2.ServingConfig(max_batch_size=4)
    serving.inference.LoadModel(
        inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=1), config=small)
    )
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=1))
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 1
    swaps = serving.service._swaps
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    request = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    loading = threading.Thread(target=serving.inference.LoadModel, args=(request,))
    try:
        loading.start()
        assert held.inside.wait(30)  # a load of version 2 with the defaults, under way
        serving.held_change(
            serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
        )
        swaps.submit(lambda: None).result(30)  # its refresh started the load like version 1
        serving.registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="m", version=1))
        swaps.submit(lambda: None).result(30)
    finally:
        held.release.set()
        loading.join(60)
    serving.answered()
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 2
    _wait_for(lambda: not serving.service._warming, "the load the alias awaited done")
    # That load shared the operator's (a second load with version 1's config would have undone it).
    (listed,) = serving.inference.ListLoaded(inference_pb2.ListLoadedRequest(model="m")).models
    assert (listed.version, listed.state) == (2, inference_pb2.LOAD_STATE_READY)
    assert listed.config.max_batch_size != 4


def test_a_deployment_waiting_for_one_of_its_new_versions_keeps_the_others_loaded(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment moved to versions 2 and 3. Version 3 loaded first, and the refresh its load
    queued, still waiting for version 2, unloaded it as a version no target moved to; version 2's
    load then queued one that loaded 3 again and unloaded 2, and so on, never moving."""
    for scale in (1.0, 2.0, 3.0):
        upload(serving.channel, "m", linear_model(scale))
    serving.registry.Deploy(
        registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(version=1, weight=100)])
    )
    _wait_for(lambda: serving.inference.Predict(predict_request("m", X)).version == 1, "m deployed on 1")
    serving.refreshes_done()
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    refreshes = HeldRefreshes(serving.service)
    try:
        serving.held_change(
            serving.registry.Deploy,
            registry_pb2.DeployRequest(
                model="m",
                routes=[registry_pb2.Route(version=2, weight=50), registry_pb2.Route(version=3, weight=50)],
            ),
        )
        assert held.inside.wait(30)
        refreshes.wait_refreshed("m", 2)  # the Deploy's, and the one version 3's load queued
        assert _loaded(serving.inference, "m") == {
            1: inference_pb2.LOAD_STATE_READY,
            2: inference_pb2.LOAD_STATE_LOADING,
            3: inference_pb2.LOAD_STATE_READY,
        }
    finally:
        held.release.set()
    serving.answered()
    _wait_for(
        lambda: {serving.inference.Predict(predict_request("m", X)).version for _ in range(4)} == {2, 3},
        "m deployed on 2 and 3",
    )
    _wait_for(
        lambda: (
            _loaded(serving.inference, "m")
            == {2: inference_pb2.LOAD_STATE_READY, 3: inference_pb2.LOAD_STATE_READY}
        ),
        "version 1 unloaded",
    )


def test_an_alias_whose_new_version_fails_to_load_unexpectedly_stays_on_its_old_one(
    serving: Serving, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The load of the version an alias moves to raised what no load expects (a disk error
    reading its artifact): unrecorded, each refresh that load queued started it again."""
    serving.alias_on_version_1("m")
    _unreadable_artifact(serving.store, monkeypatch, ("m", 2), OSError("Input/output error"))
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=2))
    _wait_for(
        lambda: any(
            "alias 'production' of 'm' stays on version 1: version 2 it now names failed to load (internal error"
            in r.getMessage()
            for r in caplog.records
        ),
        "the alias held back",
    )
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 1


def _fail_warm_load_then(
    daemon: Any, serving: Serving, monkeypatch: pytest.MonkeyPatch, before_refresh: Callable[[], None]
) -> None:
    """Move alias 'production' of 'm' from version 1 to 2, fail the load of version 2 that the
    move starts, and call `before_refresh` before the refresh that failure queues runs."""
    # Its failure (Unavailable) is one to retry: the test says when the refresh after it runs.
    _without_periodic_load_retries(daemon, monkeypatch)
    serving.alias_on_version_1("m")
    failing = FailingFirstOpen(serving.store, monkeypatch, ("m", 2))
    refreshes = HeldRefreshes(serving.service)
    serving.held_change(
        serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
    )
    assert failing.inside.wait(30)
    with refreshes.held_after("other", lambda: upload(serving.channel, "other", linear_model(1.0))):
        failing.release.set()
        # Once no warm load is under way, its failure is recorded and its refresh queued (held).
        _wait_for(lambda: not serving.service._warming, "the warm load of version 2 failed")
        before_refresh()
        refreshes.release_and_wait("m")


def test_a_version_loaded_after_its_warm_load_failed_takes_its_alias_and_stays_loaded(
    daemon, serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoadModel loaded version 2 after the alias's warm load of it failed, before the refresh
    that failure queued ran: that refresh took the stale failure, kept the alias on version 1,
    and unloaded the operator's version 2 as no longer awaited."""
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    load = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    _fail_warm_load_then(daemon, serving, monkeypatch, lambda: inference.LoadModel(load))
    serving.answered()
    assert inference.Predict(predict_request("m", X, alias="production")).version == 2
    assert _loaded(inference, "m")[2] == inference_pb2.LOAD_STATE_READY


def test_a_warm_load_failure_of_a_move_taken_back_holds_no_later_move_back(
    daemon, serving: Serving, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The alias moved back to version 1 before the refresh that version 2's failed warm load
    queued ran: the failure stayed recorded, and when the alias moved to version 2 again (its
    failed listing unloaded, the store back) it was held back by it without a load tried."""
    back = registry_pb2.SetAliasRequest(model="m", alias="production", version=1)
    _fail_warm_load_then(
        daemon, serving, monkeypatch, lambda: serving.held_change(serving.registry.SetAlias, back)
    )
    serving.answered()
    serving.inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    )
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=2))

    def moved_or_held_back() -> bool:
        held_back = any("stays on version 1" in r.getMessage() for r in caplog.records)
        return (
            held_back or serving.inference.Predict(predict_request("m", X, alias="production")).version == 2
        )

    _wait_for(moved_or_held_back, "the alias moved to version 2, or held back")
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 2


def test_a_load_that_raises_an_unexpected_error_is_listed_failed(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that raised what no load expects (a disk error reading the artifact) left its
    version listed as loading forever: without autoload its requests were told to wait for it."""
    upload(serving.channel, "m", linear_model(1.0))
    _unreadable_artifact(serving.store, monkeypatch, ("m", 1), OSError("Input/output error"))
    with pytest.raises(grpc.RpcError) as raised:
        serving.inference.LoadModel(
            inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=1))
        )
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    (listed,) = serving.inference.ListLoaded(inference_pb2.ListLoadedRequest(model="m")).models
    assert listed.state == inference_pb2.LOAD_STATE_FAILED
    # The listing names the log's record of the cause, as the answer did.
    assert listed.error.startswith("internal error (id ")
    assert listed.error in (raised.value.details() or "")


def test_the_loads_a_bulk_promotion_starts_run_on_at_most_two_threads(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment moved to three new versions at once started a thread for each version's
    load: every new version loading at once, beside the old ones, in memory and on the cores."""
    for scale in (1.0, 2.0, 3.0, 4.0):
        upload(serving.channel, "m", linear_model(scale))
    serving.registry.Deploy(
        registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(version=1, weight=100)])
    )
    _wait_for(lambda: serving.inference.Predict(predict_request("m", X)).version == 1, "m deployed on 1")
    loaders: list[threading.Thread] = []
    artifact_path = serving.store.artifact_path

    def recorded(record: Any) -> Any:
        if record.model == "m" and record.version > 1:
            loaders.append(threading.current_thread())
        return artifact_path(record)

    monkeypatch.setattr(serving.store, "artifact_path", recorded)
    serving.registry.Deploy(
        registry_pb2.DeployRequest(
            model="m",
            routes=[registry_pb2.Route(version=v, weight=w) for v, w in ((2, 34), (3, 33), (4, 33))],
        )
    )
    _wait_for(
        lambda: {serving.inference.Predict(predict_request("m", X)).version for _ in range(6)} == {2, 3, 4},
        "m deployed on 2, 3 and 4",
    )
    assert len(set(loaders)) <= 2


def test_a_slow_load_of_a_shadow_version_holds_no_refresh(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request copied to a shadow version not loaded queued its load on the one thread that
    runs every refresh: 'other''s alias stayed on version 1 until that load was done."""
    serving.alias_on_version_1("other")
    _deploy_shadowing_version_2(serving.channel)
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    try:
        _wait_for(lambda: serving.inference.Predict(predict_request("m", X)).version == 1, "m deployed")
        assert held.inside.wait(30)  # the shadow's load, queued by a request copied to it
        serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="other", alias="production", version=2))
        _wait_for(
            lambda: serving.inference.Predict(predict_request("other", X, alias="production")).version == 2,
            "other's alias on version 2 while m's shadow loads",
        )
    finally:
        held.release.set()
    _wait_for(
        lambda: _loaded(serving.inference, "m").get(2) == inference_pb2.LOAD_STATE_READY, "the shadow loaded"
    )


def test_requests_copied_to_a_shadow_version_loading_queue_one_load_of_it(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request copied to a shadow version not loaded queued a load of it with the warm
    loads: while one load was held, the rest filled the queue (one more waiting on the version's
    load lock), and 'other''s alias waited behind them all to move."""
    serving.alias_on_version_1("other")
    shadow_loads: list[tuple[str, int]] = []
    load_in_background = serving.service._load_in_background

    def recorded(key: tuple[str, int], artifact_sha256: str, load: Callable[[], object]) -> None:
        if key[0] == "m":
            shadow_loads.append(key)
        load_in_background(key, artifact_sha256, load)

    monkeypatch.setattr(serving.service, "_load_in_background", recorded)
    _deploy_shadowing_version_2(serving.channel)
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    try:
        _wait_for(lambda: serving.inference.Predict(predict_request("m", X)).version == 1, "m deployed")
        assert held.inside.wait(30)  # the shadow's load, queued by a request copied to it
        for _ in range(10):
            assert serving.inference.Predict(predict_request("m", X)).version == 1
        serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="other", alias="production", version=2))
        _wait_for(
            lambda: serving.inference.Predict(predict_request("other", X, alias="production")).version == 2,
            "other's alias on version 2 while m's shadow loads",
        )
        assert shadow_loads == [("m", 2)]
    finally:
        held.release.set()
    _wait_for(
        lambda: _loaded(serving.inference, "m").get(2) == inference_pb2.LOAD_STATE_READY, "the shadow loaded"
    )
    # Its load done, the next request copied to the version once it is unloaded loads it again.
    _wait_for(lambda: not serving.service._shadow_loads, "the shadow load done")
    serving.inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    )
    assert serving.inference.Predict(predict_request("m", X)).version == 1
    _wait_for(
        lambda: _loaded(serving.inference, "m").get(2) == inference_pb2.LOAD_STATE_READY,
        "the shadow loaded again",
    )
    assert shadow_loads == [("m", 2), ("m", 2)]


def test_a_warm_load_failure_of_a_deleted_models_version_holds_back_no_move_of_its_new_model(
    daemon, serving: Serving, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The model was deleted and registered again (version 1 the same artifact, version 2 a new
    one, the alias on it) before the refresh that the old version 2's failed warm load queued ran:
    that failure, kept by model and version number, held the new model's alias back on version 1
    without a load of its version 2 tried."""

    def registered_again() -> None:
        delete_model_numbered_as_before(daemon, "m", force=True)
        assert upload(serving.channel, "m", linear_model(1.0)) == 1
        assert upload(serving.channel, "m", linear_model(3.0)) == 2
        serving.held_change(
            serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
        )

    _fail_warm_load_then(daemon, serving, monkeypatch, registered_again)
    serving.answered()
    assert not any("stays on version 1" in r.getMessage() for r in caplog.records)
    _wait_for(
        lambda: serving.inference.Predict(predict_request("m", X, alias="production")).version == 2,
        "the alias on the new version 2",
    )
    answer = serving.inference.Predict(predict_request("m", X, alias="production"))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_a_shadow_load_that_raises_an_unexpected_error_is_logged_and_listed_failed(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the shadow version for its load raised what no load expects (the registry's
    database unreadable): it ended in the load's discarded future, neither logged nor listed."""
    _without_periodic_load_retries(daemon, monkeypatch)
    unreadable = _shadow_load_failing_unexpectedly(daemon, monkeypatch)
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    (logged,) = [r for r in caplog.records if r.exc_info and r.exc_info[1] is unreadable]
    assert "'m' version 2" in logged.getMessage()
    listed = {m.version: m for m in inference.ListLoaded(inference_pb2.ListLoadedRequest(model="m")).models}
    assert listed[2].state == inference_pb2.LOAD_STATE_FAILED
    # The listing names the log's record of the cause.
    assert listed[2].error.startswith("internal error (id ")
    assert logged.__dict__["error_id"] in listed[2].error


def test_a_warm_load_of_a_version_a_shadow_load_is_loading_joins_that_load(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias moved to version 2 while a request's load of version 2 as the deployment's shadow
    was under way: the alias's warm load loaded it a second time on the other warm load thread,
    waiting on the version's load lock meanwhile."""
    serving.alias_on_version_1("m")
    serving.registry.Deploy(_shadowing_version_2())
    serving.refreshes_done()
    loads: list[tuple[str, int]] = []
    load = serving.service.pool.load

    def recorded(servable: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append((servable.model, servable.version))
        return load(servable, *args, **kwargs)

    monkeypatch.setattr(serving.service.pool, "load", recorded)
    held = HeldArtifacts(serving.store, monkeypatch, ("m", 2))
    try:
        assert serving.inference.Predict(predict_request("m", X)).version == 1
        assert held.inside.wait(30)  # the shadow's load, queued by the request copied to it
        serving.held_change(
            serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
        )
        serving.refreshes_done()  # its refresh awaits version 2's load
    finally:
        held.release.set()
    serving.answered()
    _wait_for(
        lambda: serving.inference.Predict(predict_request("m", X, alias="production")).version == 2,
        "the alias on version 2",
    )
    assert loads == [("m", 2)]


def _without_periodic_load_retries(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold off the daemon's periodic retry of failed loads (server._sweep_failures): a failed
    listing it would take away stays for the test to see."""
    monkeypatch.setattr(daemon.daemon.inference, "retry_failed_loads", lambda lasting=False: 0)


def _deploy_shadowing_version_2(channel: grpc.Channel) -> None:
    """Register versions 1 and 2 of 'm' and deploy it on version 1, shadowing version 2."""
    upload(channel, "m", linear_model(1.0))
    upload(channel, "m", linear_model(2.0))
    registry_pb2_grpc.RegistryStub(channel).Deploy(_shadowing_version_2())


def _shadowing_version_2() -> registry_pb2.DeployRequest:
    """'m' deployed on version 1, shadowing version 2."""
    return registry_pb2.DeployRequest(
        model="m",
        routes=[registry_pb2.Route(version=1, weight=100)],
        shadow=registry_pb2.Shadow(version=2, percent=100),
    )


def _shadow_load_failing_unexpectedly(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> OSError:
    """Deploy 'm' on version 1 shadowing version 2, and fail the shadow load a copied request
    queues as it reads version 2 from the registry (OSError, once): version 2 is listed FAILED.
    Returns the error raised."""
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    _deploy_shadowing_version_2(channel)
    store = daemon.daemon.registry
    resolve = store.resolve
    failed = threading.Event()
    unreadable = OSError("disk I/O error")

    def failing_once(model: str, version: int | None = None, alias: str | None = None) -> Any:
        if (model, version) == ("m", 2) and not failed.is_set():
            failed.set()
            raise unreadable
        return resolve(model, version, alias)

    monkeypatch.setattr(store, "resolve", failing_once)
    service = daemon.daemon.inference
    # The deployment's refresh done: a refresh after the failure would take its listing away.
    service._swaps.submit(lambda: None).result(30)
    assert inference.Predict(predict_request("m", X)).version == 1
    assert failed.wait(30)
    _wait_for(lambda: not service._shadow_loads, "the shadow load done")
    assert _loaded(inference, "m")[2] == inference_pb2.LOAD_STATE_FAILED
    return unreadable


def test_a_shadow_load_whose_registry_read_failed_unexpectedly_is_retried(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk hiccup as the shadow's load read version 2 from the registry listed it FAILED for
    good: no retry took it up, and every request for version 2 was refused until LoadModel."""
    _without_periodic_load_retries(daemon, monkeypatch)
    _shadow_load_failing_unexpectedly(daemon, monkeypatch)
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    # Meanwhile a request is told it is retried by itself, not to wait for a LoadModel.
    with pytest.raises(grpc.RpcError) as refused:
        inference.Predict(predict_request("m", X, version=2))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed to load for a cause that may pass, and is tried again by itself shortly" in str(
        refused.value.details()
    )
    assert InferenceService.retry_failed_loads(daemon.daemon.inference) == 1
    answer = inference.Predict(predict_request("m", X, version=2))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 2, rtol=1e-6)


def _shadow_load_ends(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once the end of a shadow load (_shadow_load_ended) has run, what it logs
    logged."""
    service = daemon.daemon.inference
    ended = threading.Event()
    shadow_load_ended = service._shadow_load_ended

    def recorded(key: tuple[str, int], load: Any) -> None:
        shadow_load_ended(key, load)
        ended.set()

    monkeypatch.setattr(service, "_shadow_load_ended", recorded)
    return ended


def test_a_shadow_load_that_failed_unexpectedly_is_logged_once(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The shadow load's unexpected error was logged with its traceback under an error id, then
    again as 'cannot load shadow version' naming that id: one failure, two log lines."""
    caplog.set_level(logging.WARNING)
    _without_periodic_load_retries(daemon, monkeypatch)
    ended = _shadow_load_ends(daemon, monkeypatch)
    unreadable = _shadow_load_failing_unexpectedly(daemon, monkeypatch)
    assert ended.wait(30)
    (traceback,) = [r for r in caplog.records if r.exc_info and r.exc_info[1] is unreadable]
    error_id = traceback.__dict__["error_id"]
    assert [r.getMessage() for r in caplog.records if error_id in r.getMessage()] == []


@pytest.mark.parametrize(
    ("failure", "line"),
    [
        ("artifact out of reach", "loading model 'm' version 2 failed: "),
        ("warm-up failed", "loading model 'm' version 2 failed: "),
        # Before the pool's load began: nothing else logs it.
        ("registry out of reach", "cannot load shadow version 2 of 'm': "),
    ],
)
def test_a_failed_shadow_load_is_logged_once(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str, line: str
) -> None:
    """A failure the pool's load logged was logged again as 'cannot load shadow version' (a
    warm-up's in the words a request gets for it): once, where it arose. One before the pool's
    load began is logged as the shadow's."""
    caplog.set_level(logging.WARNING)
    _without_periodic_load_retries(daemon, monkeypatch)
    ended = _shadow_load_ends(daemon, monkeypatch)
    channel = daemon.channel()
    upload(channel, "m", linear_model(1.0))
    # Of version 1's signature: Deploy refuses a shadow whose answers differ in shape.
    failing_warm_up = reshape_model([-1, 3], declared=["batch", 3])
    upload(channel, "m", failing_warm_up if failure == "warm-up failed" else linear_model(2.0))
    unreachable = Unavailable("the artifact store cannot be reached")
    if failure == "artifact out of reach":
        _unreadable_artifact(daemon.daemon.registry, monkeypatch, ("m", 2), unreachable)
    elif failure == "registry out of reach":
        resolve = daemon.daemon.registry.resolve

        def failing(model: str, version: int | None = None, alias: str | None = None) -> Any:
            if (model, version) == ("m", 2):
                raise unreachable
            return resolve(model, version, alias)

        monkeypatch.setattr(daemon.daemon.registry, "resolve", failing)
    registry_pb2_grpc.RegistryStub(channel).Deploy(_shadowing_version_2())
    daemon.daemon.inference._swaps.submit(lambda: None).result(30)
    assert inference_pb2_grpc.InferenceStub(channel).Predict(predict_request("m", X)).version == 1
    assert ended.wait(30)
    logged = [r.getMessage() for r in caplog.records if "version 2" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith(line), logged


def test_a_shadow_load_failing_before_a_load_that_failed_otherwise_is_logged(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The shadow load failed reading version 2 from the registry while a LoadModel of it failed
    opening its artifact: the version listed FAILED for the LoadModel's failure, and the shadow's,
    which no one else logs, went unlogged."""
    caplog.set_level(logging.WARNING)
    _without_periodic_load_retries(daemon, monkeypatch)
    ended = _shadow_load_ends(daemon, monkeypatch)
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    _deploy_shadowing_version_2(channel)
    daemon.daemon.inference._swaps.submit(lambda: None).result(30)
    registry = daemon.daemon.registry
    _unreadable_artifact(registry, monkeypatch, ("m", 2), Unavailable("the artifact disk is out of reach"))
    resolve = registry.resolve
    shadow_read = threading.Event()

    def failing_for_the_shadow(model: str, version: int | None = None, alias: str | None = None) -> Any:
        if (model, version) != ("m", 2) or shadow_read.is_set():
            return resolve(model, version, alias)
        shadow_read.set()
        # Meanwhile a LoadModel of the version fails differently and lists it FAILED.
        with pytest.raises(grpc.RpcError):
            inference.LoadModel(
                inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
            )
        raise Unavailable("the registry cannot be reached")

    monkeypatch.setattr(registry, "resolve", failing_for_the_shadow)
    assert inference.Predict(predict_request("m", X)).version == 1
    assert ended.wait(30)
    logged = [r.getMessage() for r in caplog.records if "version 2" in r.getMessage()]
    assert len(logged) == 2, logged
    assert "the artifact disk is out of reach" in logged[0]
    assert logged[1] == "cannot load shadow version 2 of 'm': the registry cannot be reached", logged


def test_a_failed_listing_of_no_artifact_goes_with_its_model_deleted_and_registered_again(
    daemon, serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model was deleted and registered again before its refresh: version 2's failed listing,
    of no artifact (the shadow's load failed reading the registry), was never found replaced, so
    requests for the new model's version 2 were refused."""
    _without_periodic_load_retries(daemon, monkeypatch)
    _shadow_load_failing_unexpectedly(daemon, monkeypatch)
    refreshes = HeldRefreshes(serving.service)
    with refreshes.held_after("other", lambda: upload(serving.channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "m", force=True)
        assert upload(serving.channel, "m", linear_model(1.0)) == 1
        assert upload(serving.channel, "m", linear_model(3.0)) == 2
        refreshes.release_and_wait("m")
    answer = serving.inference.Predict(predict_request("m", X, version=2))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_an_alias_moving_from_a_version_not_loaded_reads_nothing_for_its_warm_load(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias moved from version 1, unloaded, so that no warm load was due: the refresh still
    read version 2 from the registry, and a read that failed (the registry out of reach) held the
    alias back on version 1."""
    serving.alias_on_version_1("m")
    serving.inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m", version=1))
    )
    store = serving.store
    resolve = store.resolve
    reads: list[tuple[str, int]] = []
    unreachable = threading.Event()

    def failing(model: str, version: int | None = None, alias: str | None = None) -> Any:
        if unreachable.is_set() and (model, version) == ("m", 2):
            reads.append((model, version))
            raise Unavailable("the registry cannot be reached")
        return resolve(model, version, alias)

    monkeypatch.setattr(store, "resolve", failing)
    unreachable.set()
    serving.registry.SetAlias(registry_pb2.SetAliasRequest(model="m", alias="production", version=2))
    serving.refreshes_done()  # its refresh done
    unreachable.clear()
    assert reads == []
    assert serving.inference.Predict(predict_request("m", X, alias="production")).version == 2


def test_a_warm_load_failure_of_a_deleted_models_version_is_forgotten_as_its_new_one_loads(
    daemon, serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh that started the warm load of the new model's version 2 kept the old version
    2's failure, recorded under its artifact: one such record stayed for each deletion."""
    held: list[HeldArtifacts] = []

    def registered_again() -> None:
        delete_model_numbered_as_before(daemon, "m", force=True)
        assert upload(serving.channel, "m", linear_model(1.0)) == 1
        assert upload(serving.channel, "m", linear_model(3.0)) == 2
        held.append(HeldArtifacts(serving.store, monkeypatch, ("m", 2)))
        serving.held_change(
            serving.registry.SetAlias, registry_pb2.SetAliasRequest(model="m", alias="production", version=2)
        )

    try:
        _fail_warm_load_then(daemon, serving, monkeypatch, registered_again)
        assert held[0].inside.wait(30)  # the new version 2's warm load
        assert [key for key in serving.service._warm_failures if key[:2] == ("m", 2)] == []
    finally:
        for each in held:
            each.release.set()
    serving.answered()
    _wait_for(
        lambda: serving.inference.Predict(predict_request("m", X, alias="production")).version == 2,
        "the alias on the new version 2",
    )


def test_a_primary_retries_a_shadow_load_whose_registry_read_failed_unexpectedly(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a replica's follower retried failed loads: on a primary, the shadow's version listed
    FAILED by a disk hiccup as its load read the registry stayed refused until LoadModel."""
    _shadow_load_failing_unexpectedly(daemon, monkeypatch)
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    _wait_for(lambda: 2 not in _loaded(inference, "m"), "version 2's failed listing retried")
    answer = inference.Predict(predict_request("m", X, version=2))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 2, rtol=1e-6)


class ManualClock:
    """The serving layer's clock (InferenceService._clock), which stands until the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ShadowReadsFailing:
    """Fails every read of 'm' version 2 from the registry that a shadow load makes (on the warm
    loads' threads) with OSError(`reason`) while `reason` is set; a refresh's reads pass. While
    `release` is clear, such a read first waits for it (`inside` is set then): a load that takes
    long to fail."""

    def __init__(self, daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reason: str | None = "disk I/O error"
        self.inside = threading.Event()
        self.release = threading.Event()
        self.release.set()
        store = daemon.daemon.registry
        resolve = store.resolve

        def failing(model: str, version: int | None = None, alias: str | None = None) -> Any:
            reason = self.reason
            if (
                (model, version) == ("m", 2)
                and reason
                and threading.current_thread().name.startswith("serving-warm")
            ):
                self.inside.set()
                assert self.release.wait(120)
                raise OSError(reason)
            return resolve(model, version, alias)

        monkeypatch.setattr(store, "resolve", failing)


def _copy_to_the_shadow(daemon: Any) -> int:
    """Send a request that 'm' copies to its shadow version 2, which queues its load if it is not
    loaded (once the refresh a retry queued is done: a refresh that settles takes away a failed
    listing of no artifact); wait for that load to end. Version 2's state in ListLoaded."""
    service = daemon.daemon.inference
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    service._swaps.submit(lambda: None).result(30)
    assert inference.Predict(predict_request("m", X)).version == 1
    _wait_for(lambda: 2 in _loaded(inference, "m") and not service._shadow_loads, "the shadow's load done")
    return _loaded(inference, "m")[2]


def test_a_load_failing_again_and_again_is_retried_less_often_however_long_it_takes_to_fail(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic retry of failed loads backed off only while each pass found one to retry: a
    pass that found the retried load still under way started the wait again from a second, so a
    load that took seconds to fail again was retried every few seconds. Each failure of a version
    in a row now doubles its wait, until a load of it succeeds."""
    _without_periodic_load_retries(daemon, monkeypatch)
    service = daemon.daemon.inference
    clock = ManualClock()
    monkeypatch.setattr(service, "_clock", clock)
    reads = ShadowReadsFailing(daemon, monkeypatch)
    _deploy_shadowing_version_2(daemon.channel())

    def retry() -> int:
        return InferenceService.retry_failed_loads(service)

    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert retry() == 1  # the first failure: at once
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    seen = clock.now
    assert retry() == 0  # the second: 2 s after a pass first saw it
    clock.now = seen + 1.5
    assert retry() == 0
    clock.now = seen + 2
    assert retry() == 1

    # The third load takes long to fail: the passes meanwhile find nothing to retry.
    reads.release.clear()
    reads.inside.clear()
    service._swaps.submit(lambda: None).result(30)
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    assert inference.Predict(predict_request("m", X)).version == 1
    assert reads.inside.wait(30)
    for _ in range(3):
        clock.now += 60
        assert retry() == 0
    reads.release.set()
    _wait_for(lambda: _loaded(inference, "m").get(2) == inference_pb2.LOAD_STATE_FAILED, "the third failure")
    seen = clock.now
    assert retry() == 0  # 4 s after a pass first saw it
    clock.now = seen + 3.5
    assert retry() == 0
    clock.now = seen + 4
    assert retry() == 1

    # A load that succeeds ends the run: the next failure is retried at once again.
    reads.reason = None
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_READY
    inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    )
    reads.reason = "disk I/O error"
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert retry() == 1


def test_a_load_failing_again_with_the_same_unexpected_error_logs_its_traceback_once(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry read that kept failing as the retries went on logged a full traceback at each
    retry (every 30 s at most): now the first of a run of the same error has it, each repeat a
    line saying how many times it failed, and another error its own traceback."""
    _without_periodic_load_retries(daemon, monkeypatch)
    service = daemon.daemon.inference
    reads = ShadowReadsFailing(daemon, monkeypatch)
    _deploy_shadowing_version_2(daemon.channel())
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())

    def fail_again() -> str:
        """Retry version 2's failed load (at once, whatever its wait), copy a request to it: its
        listed error."""
        assert InferenceService.retry_failed_loads(service, lasting=True) == 1
        assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
        listed = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="m")).models
        return next(m.error for m in listed if m.version == 2)

    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    listed_errors = [fail_again(), fail_again()]
    reads.reason = "database disk image is malformed"
    listed_errors += [fail_again(), fail_again()]

    tracebacks = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], OSError)]
    assert [str(r.exc_info[1]) for r in tracebacks] == ["disk I/O error", "database disk image is malformed"]
    repeats = [r for r in caplog.records if "failed again" in r.getMessage()]
    assert [r.exc_info for r in repeats] == [None] * 3
    assert ["2 times in a row" in r.getMessage() for r in repeats] == [True, False, True]
    assert "3 times in a row" in repeats[1].getMessage()
    assert "disk I/O error" in repeats[0].getMessage()
    # Each listing names the record that holds its error's traceback.
    first, second = (r.__dict__["error_id"] for r in tracebacks)
    assert [first in e for e in listed_errors] == [True, True, False, False]
    assert [second in e for e in listed_errors] == [False, False, True, True]


def test_loads_failing_again_with_the_same_unexpected_error_in_the_pool_log_its_traceback_once(
    serving: Serving, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An artifact that could not be read (a disk error) failed each LoadModel with a full
    traceback in the log: as for a background load, the first of a run of the same error has it,
    each repeat a line that says how many times it came, answered with the first's error id."""
    upload(serving.channel, "m", linear_model(1.0))
    _unreadable_artifact(serving.store, monkeypatch, ("m", 1), OSError("Input/output error"))
    answers = []
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as raised:
            serving.inference.LoadModel(
                inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=1))
            )
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        answers.append(raised.value.details() or "")

    (traceback,) = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], OSError)]
    repeats = [r for r in caplog.records if "failed again" in r.getMessage()]
    assert [r.exc_info for r in repeats] == [None, None]
    assert "2 times in a row" in repeats[0].getMessage()
    assert "3 times in a row" in repeats[1].getMessage()
    assert all("Input/output error" in r.getMessage() for r in repeats)
    assert all(traceback.__dict__["error_id"] in answer for answer in answers)


def _on_the_manual_clock(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Put the serving layer (retry waits) and its pool (when each failure came) on one ManualClock."""
    clock = ManualClock()
    monkeypatch.setattr(daemon.daemon.inference, "_clock", clock)
    monkeypatch.setattr(daemon.daemon.inference.pool, "_clock", clock)
    return clock


def test_a_retry_pass_as_a_load_fails_sees_the_failure_counted_and_does_not_see_it_listed_again(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool listed a failed load FAILED, logged it, and only then counted it: a retry pass in
    between saw it as failed 0 times in a row, retried it at once, and the load then listed again
    the failure the pass had taken away, for the next pass to retry at once again."""
    _without_periodic_load_retries(daemon, monkeypatch)
    _on_the_manual_clock(daemon, monkeypatch)
    service = daemon.daemon.inference
    upload(daemon.channel(), "m", linear_model(1.0))
    servable = service._source.servable("m", 1, None)

    @contextlib.contextmanager
    def unreachable() -> Iterator[None]:
        raise Unavailable("cannot download it from the primary: the connection was cut")
        yield None

    retried: list[int] = []
    warning = pool_module.log.warning

    def retrying_as_it_logs(msg: str, *args: Any, **kwargs: Any) -> None:
        warning(msg, *args, **kwargs)
        if msg.startswith("loading %s failed"):
            retried.append(InferenceService.retry_failed_loads(service))

    monkeypatch.setattr(pool_module.log, "warning", retrying_as_it_logs)
    listed = []
    for _ in range(3):
        with pytest.raises(Unavailable):
            service.pool.load(dataclasses.replace(servable, open_artifact=unreachable), ServingConfig())
        listed.append([(e.state, e.failures_in_a_row) for e in service.pool.list("m")])
    # The first failure is retried at once, the next wait their turn (the clock stands).
    assert retried == [1, 0, 0]
    assert listed == [[], [(LoadState.FAILED, 2)], [(LoadState.FAILED, 3)]]


def test_a_load_that_succeeds_on_request_ends_the_run_of_an_unexpected_error(
    daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a background load that succeeded ended the run of the same unexpected error: after
    LoadModel loaded the version, the same error much later logged no traceback and was listed
    with the error id of the record from before."""
    _without_periodic_load_retries(daemon, monkeypatch)
    service = daemon.daemon.inference
    reads = ShadowReadsFailing(daemon, monkeypatch)
    _deploy_shadowing_version_2(daemon.channel())
    inference = inference_pb2_grpc.InferenceStub(daemon.channel())
    version_2 = common_pb2.VersionRef(model="m", version=2)
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert InferenceService.retry_failed_loads(service) == 1
    reads.reason = None
    inference.LoadModel(inference_pb2.LoadModelRequest(target=version_2))
    inference.UnloadModel(inference_pb2.UnloadModelRequest(target=version_2))
    caplog.clear()
    reads.reason = "disk I/O error"
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED

    (traceback,) = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], OSError)]
    assert [r for r in caplog.records if "failed again" in r.getMessage()] == []
    listed = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="m")).models
    assert traceback.__dict__["error_id"] in next(m.error for m in listed if m.version == 2)


def test_the_failure_run_of_a_version_deleted_after_its_retry_goes_with_it(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry had taken the failed listing away, and no load of the version followed: deleting
    the version then left its count of failures and its unexpected error kept for good."""
    _without_periodic_load_retries(daemon, monkeypatch)
    service = daemon.daemon.inference
    ShadowReadsFailing(daemon, monkeypatch)
    _deploy_shadowing_version_2(daemon.channel())
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert InferenceService.retry_failed_loads(service) == 1
    assert service.pool.failure_runs("m") == {2}
    registry.Deploy(registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(version=1, weight=100)]))
    registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="m", version=2))
    _wait_for(lambda: not service.pool.failure_runs("m"), "version 2's run of failures gone with it")


def test_a_failure_long_after_the_last_one_starts_a_new_run(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count of a version's failures in a row never went back: a failure hours after the
    last one (the disk fine meanwhile, the version not loaded) waited as long as the last."""
    _without_periodic_load_retries(daemon, monkeypatch)
    service = daemon.daemon.inference
    clock = _on_the_manual_clock(daemon, monkeypatch)
    ShadowReadsFailing(daemon, monkeypatch)
    _deploy_shadowing_version_2(daemon.channel())

    def retry() -> int:
        return InferenceService.retry_failed_loads(service)

    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert retry() == 1
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert retry() == 0
    clock.now += 2
    assert retry() == 1
    clock.now += 2 * LOAD_RETRY_MAX_S + 1
    assert _copy_to_the_shadow(daemon) == inference_pb2.LOAD_STATE_FAILED
    assert retry() == 1  # the first of a new run: at once


class UnreachableVersion1:
    """Model "m" whose version 1's artifact store cannot be reached: every LoadModel of it fails
    (UNAVAILABLE, retried soon); the daemon's serving layer and pool on a ManualClock, no periodic
    retries (`retry` runs a pass)."""

    def __init__(self, daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        _without_periodic_load_retries(daemon, monkeypatch)
        _on_the_manual_clock(daemon, monkeypatch)
        self.service = daemon.daemon.inference
        channel = daemon.channel()
        self.inference = inference_pb2_grpc.InferenceStub(channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(channel)
        upload(channel, "m", linear_model(1.0))
        unreachable = Unavailable("the artifact store cannot be reached")
        _unreadable_artifact(daemon.daemon.registry, monkeypatch, ("m", 1), unreachable)
        self.version_1 = common_pb2.VersionRef(model="m", version=1)

    def load_fails(self) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            self.inference.LoadModel(inference_pb2.LoadModelRequest(target=self.version_1))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    def retry(self) -> int:
        return InferenceService.retry_failed_loads(self.service)


def test_an_unload_ends_the_run_of_failures_of_the_version_it_unloads(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UnloadModel of a version whose loads kept failing (its artifact out of reach) left their
    run counted: a LoadModel after that which failed once more waited the run's longer backoff
    before its retry, as if the operator had never unloaded it."""
    version = UnreachableVersion1(daemon, monkeypatch)
    version.load_fails()
    assert version.retry() == 1  # the first failure in a row: at once
    version.load_fails()
    assert version.retry() == 0  # the second waits its turn (the clock stands)
    version.inference.UnloadModel(inference_pb2.UnloadModelRequest(target=version.version_1))
    assert version.service.pool.failure_runs("m") == set()
    version.load_fails()
    assert version.retry() == 1  # the first of a new run: at once


@pytest.mark.parametrize(
    "unload",
    [
        lambda v: v.inference.UnloadModel(inference_pb2.UnloadModelRequest(target=v.version_1)),
        lambda v: v.inference.UnloadModel(
            inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="m"))
        ),
        lambda v: v.oip.RepositoryModelUnload(oip_pb.RepositoryModelUnloadRequest(model_name="m")),
    ],
    ids=["UnloadModel of the version", "UnloadModel of the model", "RepositoryModelUnload"],
)
def test_an_unload_after_a_retry_took_the_failed_listing_ends_the_run_of_failures(
    daemon, monkeypatch: pytest.MonkeyPatch, unload: Callable[[UnreachableVersion1], object]
) -> None:
    """A retry pass takes a failed load's listing away and keeps its run: UnloadModel of the
    version then answered NOT_FOUND and left the run, UnloadModel of the model (listed versions
    only) and RepositoryModelUnload (NotFound answered OK) left it too, and the next failure
    waited the run's longer backoff. The unload answers OK, with nothing unloaded: it ended what
    the operator asked to end."""
    version = UnreachableVersion1(daemon, monkeypatch)
    version.load_fails()
    assert version.retry() == 1
    assert version.service.pool.list("m") == []
    assert version.service.pool.failure_runs("m") == {1}
    response = unload(version)
    assert list(getattr(response, "unloaded", [])) == []
    assert version.service.pool.failure_runs("m") == set()
    version.load_fails()
    assert version.retry() == 1  # the first of a new run: at once


def test_an_unload_of_a_version_with_neither_a_listing_nor_a_run_is_not_found(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = UnreachableVersion1(daemon, monkeypatch)
    with pytest.raises(grpc.RpcError) as raised:
        version.inference.UnloadModel(inference_pb2.UnloadModelRequest(target=version.version_1))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_failure_listed_as_an_unload_takes_the_listing_away_starts_a_new_run(
    daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unload took the listing away, and only in a later section ended the run: a failure
    listed in between (a background load's, list_failure) counted on from the old run, and so
    waited its longer backoff although the operator had unloaded the version."""
    version = UnreachableVersion1(daemon, monkeypatch)
    pool = version.service.pool
    version.load_fails()
    assert version.retry() == 1
    version.load_fails()
    (failed,) = pool.list("m")
    assert failed.failures_in_a_row == 2
    forget = pool._metrics.forget

    def failing_in_between(stats: Any) -> None:
        # Right after the listing is taken away: the background load's failure lands here.
        pool.list_failure("m", 1, Unavailable("the registry cannot be read"), failed.artifact_sha256)
        forget(stats)

    monkeypatch.setattr(pool._metrics, "forget", failing_in_between)
    version.inference.UnloadModel(inference_pb2.UnloadModelRequest(target=version.version_1))
    assert [e.failures_in_a_row for e in pool.list("m")] == [1]
    assert pool.failure_runs("m") == {1}
    assert version.retry() == 1  # the first of a new run: at once


def test_without_autoload_a_load_whose_routing_lags_warns_and_leaves_no_waiter(
    start_daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The refresh that moves the requests to the version just loaded is held past the load's
    wait: the load answered success as if they had moved, and its waiter stayed listed."""
    monkeypatch.setattr(service_module, "LOAD_ROUTING_WAIT_S", 0.2)
    daemon = start_daemon(**{"serving.autoload": "false"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    load = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="lag"))
    upload(channel, "lag", linear_model(1.0))
    inference.LoadModel(load)
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        upload(channel, "lag", linear_model(2.0))
        inference.LoadModel(load)
        assert any(
            r.levelno == logging.WARNING
            and "routing of 'lag' lags its load: after 0.2 s, requests naming no version still go to version 1"
            in r.getMessage()
            for r in caplog.records
        )
        assert not daemon.daemon.inference._route_waiters.get("lag")
        refreshes.release_and_wait("lag")
    assert inference.Predict(predict_request("lag", X)).version == 2

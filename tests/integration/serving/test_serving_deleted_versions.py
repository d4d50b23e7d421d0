"""Serving never answers from a version deleted from the registry: not by number, not through a
deployment or an alias held back on it because the version they moved to failed to warm, nor once
its model is deleted and registered again under its number."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from serving_models import (
    W,
    delete_model_numbered_as_before,
    half_model,
    linear_model,
    predict_request,
    reshape_model,
    to_array,
    upload,
)

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.errors import Unavailable
from tesserad.oip import grpc_service_pb2 as oip_pb2
from tesserad.oip import grpc_service_pb2_grpc as oip_grpc
from tesserad.serving.service import SOURCE_RETRY_S, InferenceService

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw: {what}")


def _loaded(inference, model: str) -> dict[int, int]:
    return {
        m.version: m.state for m in inference.ListLoaded(inference_pb2.ListLoadedRequest(model=model)).models
    }


def _predict_code(inference, request: inference_pb2.PredictRequest) -> grpc.StatusCode:
    try:
        inference.Predict(request)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_loaded_version_deleted_is_unloaded_and_answers_not_found(inference, registry, linear) -> None:
    inference.LoadModel(inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model=linear, version=1)))
    assert inference.Predict(predict_request(linear, X, version=1)).version == 1
    registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model=linear, version=1))
    _wait_for(lambda: 1 not in _loaded(inference, linear), "version 1 unloaded")
    assert _predict_code(inference, predict_request(linear, X, version=1)) == grpc.StatusCode.NOT_FOUND


def test_a_deployment_held_back_on_a_version_deleted_since_stops_serving_it(
    inference, registry, channel, linear
) -> None:
    registry.Deploy(
        registry_pb2.DeployRequest(model=linear, routes=[registry_pb2.Route(version=1, weight=100)])
    )
    assert inference.Predict(predict_request(linear, X)).version == 1
    broken = upload(channel, linear, reshape_model([3]))  # every run fails: it cannot warm up
    registry.Deploy(
        registry_pb2.DeployRequest(model=linear, routes=[registry_pb2.Route(version=broken, weight=100)])
    )
    _wait_for(
        lambda: _loaded(inference, linear).get(broken) == inference_pb2.LOAD_STATE_FAILED, "the load failed"
    )
    assert inference.Predict(predict_request(linear, X)).version == 1  # held back, as Seldon and KServe do
    # Version 1 is no longer deployed, so the registry lets it go; serving must let it go too.
    registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model=linear, version=1))
    _wait_for(lambda: 1 not in _loaded(inference, linear), "version 1 unloaded")
    assert _predict_code(inference, predict_request(linear, X)) == grpc.StatusCode.FAILED_PRECONDITION


def test_an_alias_held_back_on_a_version_deleted_since_stops_serving_it(
    inference, registry, channel, linear
) -> None:
    registry.SetAlias(registry_pb2.SetAliasRequest(model=linear, alias="production", version=1))
    assert inference.Predict(predict_request(linear, X, alias="production")).version == 1
    broken = upload(channel, linear, reshape_model([3]))
    registry.SetAlias(registry_pb2.SetAliasRequest(model=linear, alias="production", version=broken))
    _wait_for(
        lambda: _loaded(inference, linear).get(broken) == inference_pb2.LOAD_STATE_FAILED, "the load failed"
    )
    assert inference.Predict(predict_request(linear, X, alias="production")).version == 1
    registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model=linear, version=1))
    _wait_for(lambda: 1 not in _loaded(inference, linear), "version 1 unloaded")
    assert _predict_code(inference, predict_request(linear, X, alias="production")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


class HeldRefreshes:
    """Holds the serving refreshes of a daemon's registry changes: one thread runs them in turn,
    and each ends by asking the deletion listeners whether they keep anything for its model, so a
    listener that blocks there holds every refresh queued after it."""

    def __init__(self, service: InferenceService) -> None:
        self._lock = threading.Condition()
        self._hold_after = ""
        self._holding = False
        self._refreshed: Counter[str] = Counter()
        service.add_deletion_listener(lambda model, identity: None, self._refresh_ends)

    def _refresh_ends(self, model: str) -> None:
        """Asked what it keeps for `model`: nothing, it only watches the refreshes end."""
        with self._lock:
            self._refreshed[model] += 1
            self._lock.notify_all()
            if model == self._hold_after:
                self._holding = True
                self._lock.notify_all()
                self._lock.wait_for(lambda: not self._hold_after, 30)

    @contextlib.contextmanager
    def held_after(self, model: str, change: Callable[[], object]) -> Iterator[None]:
        """Hold the refreshes queued after the one that `change` (a change to `model`) queues,
        until the block ends (release_and_wait releases them earlier)."""
        with self._lock:
            self._hold_after = model
        try:
            change()
            with self._lock:
                assert self._lock.wait_for(lambda: self._holding, 30), "the change was never refreshed"
                self._refreshed.clear()
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._hold_after = ""
            self._holding = False
            self._lock.notify_all()

    def release_and_wait(self, *models: str) -> None:
        """Let the held refreshes run, and wait until each of `models` has been refreshed."""
        self._release()
        with self._lock:
            assert self._lock.wait_for(lambda: all(self._refreshed[m] for m in models), 30)

    def wait_refreshed(self, model: str, times: int) -> None:
        """Wait until `model` has been refreshed `times` times since the hold began."""
        with self._lock:
            assert self._lock.wait_for(lambda: self._refreshed[model] >= times, 30), (
                f"{model!r} was refreshed {self._refreshed[model]} times, not {times}"
            )


def test_a_model_deleted_and_registered_again_between_refreshes_answers_with_its_new_artifact(
    start_daemon,
) -> None:
    daemon = start_daemon(**{"serving.response_cache_size": "1MiB"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    cached = inference_pb2.ServingConfig(response_cache=True)
    for model in ("loaded", "refreshed"):
        upload(channel, model, linear_model(1.0))
        inference.LoadModel(
            inference_pb2.LoadModelRequest(
                target=common_pb2.VersionRef(model=model, version=1), config=cached
            )
        )
        np.testing.assert_allclose(
            to_array(inference.Predict(predict_request(model, X, version=1)).outputs[0]), X @ W, rtol=1e-6
        )
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        for model in ("loaded", "refreshed"):
            delete_model_numbered_as_before(daemon, model)
            assert upload(channel, model, linear_model(3.0)) == 1
        # Loaded again with the config it had: the registry's version 1 is another artifact now,
        # so the old one is not kept, nor are its cached answers (to X, as below) found.
        inference.LoadModel(
            inference_pb2.LoadModelRequest(
                target=common_pb2.VersionRef(model="loaded", version=1), config=cached
            )
        )
        answer = inference.Predict(predict_request("loaded", X, version=1))
        np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)
        refreshes.release_and_wait("loaded", "refreshed")
    answer = inference.Predict(predict_request("refreshed", X, version=1))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_a_version_replaced_before_its_refresh_never_answers_with_the_old_artifact(start_daemon) -> None:
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    for model in ("numbered", "latest", "deleted"):
        upload(channel, model, linear_model(1.0))
        inference.LoadModel(
            inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model=model, version=1))
        )
        assert inference.Predict(predict_request(model, X, version=1)).version == 1
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        # Serving has not refreshed any of these changes yet: a request must still not find the
        # artifact the registry no longer has under the version it asks for.
        for model in ("numbered", "latest"):
            delete_model_numbered_as_before(daemon, model)
            assert upload(channel, model, linear_model(3.0)) == 1
        upload(channel, "deleted", linear_model(2.0))
        registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="deleted", version=1))
        answer = inference.Predict(predict_request("numbered", X, version=1))
        np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)
        answer = inference.Predict(predict_request("latest", X))
        np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)
        assert _predict_code(inference, predict_request("deleted", X, version=1)) == grpc.StatusCode.NOT_FOUND


def test_without_autoload_a_version_replaced_before_its_refresh_is_not_loaded(start_daemon) -> None:
    daemon = start_daemon(**{"serving.autoload": "false"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "numbered", linear_model(1.0))
    inference.LoadModel(
        inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="numbered", version=1))
    )
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "numbered")
        assert upload(channel, "numbered", linear_model(3.0)) == 1
        # The old artifact is unloaded, and the request may not load the new one.
        assert _predict_code(inference, predict_request("numbered", X, version=1)) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        assert 1 not in _loaded(inference, "numbered")


def test_a_request_without_a_version_before_the_refresh_goes_to_the_new_models_latest(start_daemon) -> None:
    """Its route to the old model's latest version (or alias target), cached, named a version
    the model created again lacks: the request was answered NOT_FOUND for that version, which it
    never named."""
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "routed", linear_model(1.0))
    upload(channel, "routed", linear_model(2.0), alias="production")
    assert inference.Predict(predict_request("routed", X)).version == 2
    assert inference.Predict(predict_request("routed", X, alias="production")).version == 2
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "routed", force=True)
        assert upload(channel, "routed", linear_model(3.0), alias="production") == 1
        for request in (predict_request("routed", X), predict_request("routed", X, alias="production")):
            answer = inference.Predict(request)
            assert answer.version == 1
            np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_metadata_before_the_refresh_describes_the_new_models_version(start_daemon) -> None:
    """A loaded version of the model deleted since was described, by number or as the model's
    cached latest, although a request would be served by the new model's version."""
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "described", linear_model(1.0))
    upload(channel, "described", linear_model(2.0))
    assert inference.Predict(predict_request("described", X, version=1)).version == 1
    assert inference.Predict(predict_request("described", X)).version == 2
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "described")
        assert upload(channel, "described", half_model()) == 1
        for version in ("1", ""):
            metadata = oip.ModelMetadata(oip_pb2.ModelMetadataRequest(name="described", version=version))
            assert list(metadata.versions) == ["1"]
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP16", [-1, 2])]


def _infer_request(model: str, x: np.ndarray) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def test_without_autoload_a_stale_route_is_answered_for_the_version_the_registry_names_now(
    start_daemon,
) -> None:
    """A request without a version whose cached route named a version deleted since, before the
    refresh, was answered that this version is not loaded: a version it never named."""
    daemon = start_daemon(**{"serving.autoload": "false"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    for scale in (1.0, 2.0, 3.0):
        upload(channel, "stale", linear_model(scale))
    inference.LoadModel(
        inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="stale", version=1))
    )
    with contextlib.suppress(grpc.RpcError):
        inference.Predict(predict_request("stale", X))  # routes `latest` to 3 (cached), not loaded
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="stale", version=3))
        for call in (
            lambda: inference.Predict(predict_request("stale", X)),
            lambda: oip.ModelInfer(_infer_request("stale", X)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert "version 2 is not loaded" in refused.value.details()
            assert "version 3" not in refused.value.details()
        registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="stale", version=2))
        answer = inference.Predict(predict_request("stale", X))
        assert answer.version == 1
        np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W, rtol=1e-6)
        assert oip.ModelInfer(_infer_request("stale", X)).model_version == "1"


def test_metadata_unloads_nothing_the_registry_replaced(start_daemon) -> None:
    """ModelMetadata (gRPC and HTTP) unloaded a loaded version replaced or deleted before the
    refresh of its change, as a request does: a metadata call changes nothing loaded (Triton's
    neither); the refresh unloads it."""
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/models"
    for model in ("replaced", "deleted"):
        upload(channel, model, linear_model(1.0))
        assert inference.Predict(predict_request(model, X)).version == 1
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "replaced")
        assert upload(channel, "replaced", half_model()) == 1
        upload(channel, "deleted", linear_model(2.0))
        registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="deleted", version=1))
        for version in ("1", ""):
            metadata = oip.ModelMetadata(oip_pb2.ModelMetadataRequest(name="replaced", version=version))
            assert [(t.name, t.datatype) for t in metadata.inputs] == [("x", "FP16")]
        with urllib.request.urlopen(f"{base}/replaced/versions/1", timeout=30) as response:
            assert json.loads(response.read())["inputs"][0]["datatype"] == "FP16"
        with pytest.raises(grpc.RpcError) as refused:
            oip.ModelMetadata(oip_pb2.ModelMetadataRequest(name="deleted", version="1"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(f"{base}/deleted/versions/1", timeout=30)
        assert gone.value.code == 404
        assert 1 in _loaded(inference, "replaced")
        assert 1 in _loaded(inference, "deleted")
        refreshes.release_and_wait("replaced", "deleted")
    assert 1 not in _loaded(inference, "replaced")
    assert 1 not in _loaded(inference, "deleted")


def test_while_the_registry_cannot_be_read_requests_read_it_once_an_interval(
    start_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the refresh of a change kept failing (the registry unreadable), each request read the
    registry to check its loaded version; once readable, the artifact it replaced never answers."""
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "unreadable", linear_model(1.0))
    assert inference.Predict(predict_request("unreadable", X)).version == 1  # `latest` cached
    now = [0.0]
    monkeypatch.setattr(daemon.daemon.inference, "_clock", lambda: now[0])
    resolve = daemon.daemon.registry.resolve
    reads: list[int | None] = []
    failing = threading.Event()

    def unreadable(model: str, version: int | None = None, alias: str | None = None) -> object:
        if model == "unreadable":
            reads.append(version)
            if failing.is_set():
                raise Unavailable("the registry's store cannot be read")
        return resolve(model, version, alias)

    monkeypatch.setattr(daemon.daemon.registry, "resolve", unreadable)
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "unreadable")
        assert upload(channel, "unreadable", linear_model(3.0)) == 1
        failing.set()
        refreshes.release_and_wait("unreadable")  # it failed: `latest` could not be read
    reads.clear()
    for _ in range(5):  # the registry cannot say it was replaced: served as it is
        answer = inference.Predict(predict_request("unreadable", X, version=1))
        np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W, rtol=1e-6)
    assert reads == [1]
    failing.clear()
    now[0] += SOURCE_RETRY_S
    answer = inference.Predict(predict_request("unreadable", X, version=1))
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_a_refresh_that_failed_is_retried_once_the_registry_is_readable(
    start_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that failed (the registry unreadable just then) was never retried: `latest` stayed
    on the version it served until the model's next change, though the registry was readable."""
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "retried", linear_model(1.0))
    assert inference.Predict(predict_request("retried", X)).version == 1  # `latest` cached
    now = [0.0]
    monkeypatch.setattr(daemon.daemon.inference, "_clock", lambda: now[0])
    resolve = daemon.daemon.registry.resolve
    failing = threading.Event()

    def unreadable(model: str, version: int | None = None, alias: str | None = None) -> object:
        if model == "retried" and failing.is_set():
            raise Unavailable("the registry's store cannot be read")
        return resolve(model, version, alias)

    monkeypatch.setattr(daemon.daemon.registry, "resolve", unreadable)
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        assert upload(channel, "retried", linear_model(3.0)) == 2
        failing.set()
        refreshes.release_and_wait("retried")  # it failed: `latest` could not be read
    failing.clear()
    assert inference.Predict(predict_request("retried", X)).version == 1  # within the interval
    now[0] += SOURCE_RETRY_S
    inference.Predict(predict_request("retried", X))  # queues the refresh again
    # It loads version 2 like version 1, and the refresh that load queues moves `latest`.
    refreshes.wait_refreshed("retried", 3)
    answer = inference.Predict(predict_request("retried", X))
    assert answer.version == 2
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)


def test_a_refresh_that_failed_for_a_deleted_model_is_retried_without_a_call_for_it(
    start_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a primary, only a request or metadata call for the model queued a refresh that failed
    again: a model deleted while the registry could not be read kept its versions loaded (listed,
    in the metrics, holding their memory) until the daemon stopped, as no call comes for it."""
    daemon = start_daemon()
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    upload(channel, "swept", linear_model(1.0))
    assert inference.Predict(predict_request("swept", X)).version == 1
    now = [0.0]
    monkeypatch.setattr(daemon.daemon.inference, "_clock", lambda: now[0])
    resolve = daemon.daemon.registry.resolve
    failing = threading.Event()

    def unreadable(model: str, version: int | None = None, alias: str | None = None) -> object:
        if model == "swept" and failing.is_set():
            raise Unavailable("the registry's store cannot be read")
        return resolve(model, version, alias)

    monkeypatch.setattr(daemon.daemon.registry, "resolve", unreadable)
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        registry.DeleteModel(registry_pb2.DeleteModelRequest(name="swept"))
        failing.set()
        refreshes.release_and_wait("swept")  # it failed: version 1 could not be read
    failing.clear()
    assert _loaded(inference, "swept") == {1: inference_pb2.LOAD_STATE_READY}
    now[0] += SOURCE_RETRY_S  # no call for "swept" from here on
    refreshes.wait_refreshed("swept", 2)
    listed = inference.ListLoaded(inference_pb2.ListLoadedRequest()).models
    assert [m.version for m in listed if m.model == "swept"] == []


def test_model_ready_says_not_ready_for_a_version_replaced_or_deleted_before_its_refresh(
    start_daemon,
) -> None:
    """ModelReady (gRPC, HTTP) said a loaded version the registry replaced (its model deleted and
    registered again) or deleted was ready until the refresh of that change unloaded it, though
    a request would not be served by it; it changes nothing loaded."""
    daemon = start_daemon(**{"serving.oip_http_listen": "127.0.0.1:0"})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    base = f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/models"

    def ready_over_grpc(model: str, version: str) -> bool:
        return oip.ModelReady(oip_pb2.ModelReadyRequest(name=model, version=version)).ready

    def ready_over_http(model: str, version: str) -> bool:
        path = f"{base}/{model}/versions/{version}/ready" if version else f"{base}/{model}/ready"
        try:
            with urllib.request.urlopen(path, timeout=30):
                return True
        except urllib.error.HTTPError as refused:
            code = refused.code
        assert code == 400  # as Triton answers a model not ready
        return False

    for model in ("replaced", "deleted"):
        upload(channel, model, linear_model(1.0))
        assert inference.Predict(predict_request(model, X)).version == 1
        for ready in (ready_over_grpc, ready_over_http):
            assert ready(model, "1") and ready(model, "")
    refreshes = HeldRefreshes(daemon.daemon.inference)
    with refreshes.held_after("other", lambda: upload(channel, "other", linear_model(1.0))):
        delete_model_numbered_as_before(daemon, "replaced")
        assert upload(channel, "replaced", half_model()) == 1
        upload(channel, "deleted", linear_model(2.0))
        registry.DeleteVersion(registry_pb2.DeleteVersionRequest(model="deleted", version=1))
        for ready in (ready_over_grpc, ready_over_http):
            for model in ("replaced", "deleted"):
                assert not ready(model, "1"), (ready.__name__, model)
                assert not ready(model, ""), (ready.__name__, model)
        assert 1 in _loaded(inference, "replaced")
        assert 1 in _loaded(inference, "deleted")
        answer = inference.Predict(predict_request("replaced", X.astype(np.float16)[:, :2]))
        assert answer.version == 1  # the new artifact, loaded for the request: ready
        for ready in (ready_over_grpc, ready_over_http):
            assert ready("replaced", "1") and ready("replaced", "")

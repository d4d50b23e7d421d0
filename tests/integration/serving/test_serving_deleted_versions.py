"""Serving never answers from a version deleted from the registry: not by number, not through a
deployment or an alias held back on it because the version they moved to failed to warm."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import numpy as np
from serving_models import predict_request, reshape_model, upload

from tessera.v1 import common_pb2, inference_pb2, registry_pb2

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

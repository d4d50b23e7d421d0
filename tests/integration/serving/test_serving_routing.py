"""What a request naming no version gets: the deployment, else serving.default_alias's version
(latest by default); a version registered into a model served by latest says so in the log; and
a SetAlias, Deploy or Rollback is routed by as soon as it returns."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from serving_models import W, linear_model, predict_request, reshape_model, tensor, to_array, upload

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _set_alias(registry, model: str, alias: str, version: int) -> None:
    registry.SetAlias(registry_pb2.SetAliasRequest(model=model, alias=alias, version=version))


def _unversioned(inference, model: str) -> int:
    response = inference.Predict(predict_request(model, X))
    scale = response.version  # linear_model(scale) uploads below number their versions by scale
    np.testing.assert_allclose(to_array(response.outputs[0]), X @ (W * scale), rtol=1e-6)
    return response.version


def _oip_unversioned(oip, model: str) -> str:
    request = oip_pb.ModelInferRequest(model_name=model, model_version="")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(X.ravel())
    return oip.ModelInfer(request).model_version


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _wait_logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The records holding `text`, once one is there (the refresh logs it on its own thread)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if found := _logged(caplog, text):
            return found
        time.sleep(0.02)
    raise AssertionError(f"nothing logged with {text!r}")


def test_by_default_a_version_registered_takes_the_unversioned_requests_and_the_log_says_how_to_pin(
    inference, registry, channel, caplog
) -> None:
    for scale in (1.0, 2.0):
        upload(channel, "m", linear_model(scale))
    _set_alias(registry, "m", "production", 1)
    # serving.default_alias is latest by default: the aliases do not route a request naming nothing.
    assert _unversioned(inference, "m") == 2
    with caplog.at_level(logging.INFO, logger="tesserad"):
        assert upload(channel, "m", linear_model(3.0)) == 3
        (moved,) = _wait_logged(caplog, "naming no version now go to version 3")
        assert "'m'" in moved and "(was 2)" in moved and "tessera models deploy m 2=100" in moved
        deadline = time.monotonic() + 30
        while _unversioned(inference, "m") != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _unversioned(inference, "m") == 3
    assert len(_logged(caplog, "naming no version now go to version 3")) == 1


@pytest.fixture
def prod_daemon(start_daemon):
    return start_daemon(**{"serving.default_alias": "production"})


def test_default_alias_routes_requests_naming_no_version_to_that_alias(prod_daemon) -> None:
    channel = prod_daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    for scale in (1.0, 2.0):
        upload(channel, "m", linear_model(scale))
    # Without the alias, a model serves its latest version, as with the default.
    assert _unversioned(inference, "m") == 2
    _set_alias(registry, "m", "production", 1)
    assert _unversioned(inference, "m") == 1
    assert _oip_unversioned(oip, "m") == "1"
    # A version a training job registers takes none of the unversioned traffic.
    assert upload(channel, "m", linear_model(3.0)) == 3
    for _ in range(5):
        assert _unversioned(inference, "m") == 1
    # LoadModel naming no version loads what those requests get.
    loaded = inference.LoadModel(inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m")))
    assert loaded.version == 1
    _set_alias(registry, "m", "production", 3)
    assert _unversioned(inference, "m") == 3
    registry.DeleteAlias(registry_pb2.DeleteAliasRequest(model="m", alias="production"))
    assert _unversioned(inference, "m") == 3  # latest again
    # A deployment still comes first.
    _set_alias(registry, "m", "production", 1)
    registry.Deploy(registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(version=2, weight=100)]))
    assert _unversioned(inference, "m") == 2


def test_a_deployment_held_back_names_the_version_the_default_alias_serves(prod_daemon, caplog) -> None:
    """Its log said the model kept serving its latest version, which serving.default_alias kept
    from serving."""
    channel = prod_daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    upload(channel, "m", linear_model(1.0), alias="production")
    upload(channel, "m", linear_model(2.0))
    assert _unversioned(inference, "m") == 1
    # Of version 1's signature (Deploy refuses routes whose answers differ in shape); cannot warm up.
    broken = upload(channel, "m", reshape_model([-1, 3], declared=["batch", 3]))
    routes = [registry_pb2.Route(version=1, weight=50), registry_pb2.Route(version=broken, weight=50)]
    registry.Deploy(registry_pb2.DeployRequest(model="m", routes=routes))
    _wait_logged(caplog, f"the deployment of 'm' keeps serving version 1: version {broken}:")
    assert _unversioned(inference, "m") == 1


def test_set_alias_then_predict_is_answered_by_the_new_version_every_time(
    inference, registry, channel
) -> None:
    for scale in (1.0, 2.0):
        upload(channel, "m", linear_model(scale))
    _set_alias(registry, "m", "production", 1)
    registry.Deploy(
        registry_pb2.DeployRequest(model="m", routes=[registry_pb2.Route(alias="production", weight=100)])
    )
    assert _unversioned(inference, "m") == 1
    for i in range(20):
        version = 2 - i % 2
        _set_alias(registry, "m", "production", version)
        assert _unversioned(inference, "m") == version, f"round {i}"


def test_deploy_and_rollback_are_routed_by_as_soon_as_they_return(inference, registry, channel) -> None:
    for scale in (1.0, 2.0):
        upload(channel, "m", linear_model(scale))

    def deploy(version: int) -> None:
        route = registry_pb2.Route(version=version, weight=100)
        registry.Deploy(registry_pb2.DeployRequest(model="m", routes=[route]))

    deploy(1)
    assert _unversioned(inference, "m") == 1
    for i in range(10):
        version = 2 - i % 2
        deploy(version)
        assert _unversioned(inference, "m") == version, f"round {i}"
        restored = registry.Rollback(registry_pb2.RollbackRequest(model="m")).routes
        # Rolled back to no deployment, requests go to the latest version.
        expected = restored[0].resolved_version if restored else 2
        assert _unversioned(inference, "m") == expected, f"round {i}"


def test_predict_over_max_batch_size_runs_in_batches_of_at_most_that_many_rows(
    inference, channel, oip
) -> None:
    upload(channel, "m", linear_model(1.0))
    target = common_pb2.VersionRef(model="m", version=1)
    inference.LoadModel(
        inference_pb2.LoadModelRequest(target=target, config=inference_pb2.ServingConfig(max_batch_size=16))
    )
    rows = np.arange(37 * 4, dtype=np.float32).reshape(37, 4)
    response = inference.Predict(inference_pb2.PredictRequest(target=target, inputs=[tensor("x", rows)]))
    np.testing.assert_allclose(to_array(response.outputs[0]), rows @ W, rtol=1e-6)
    assert response.batch_rows <= 16
    (stats,) = inference.GetStats(inference_pb2.GetStatsRequest(target=target)).stats
    assert (stats.request_count, stats.error_count, stats.row_count) == (1, 0, 37)
    assert {b.rows: b.count for b in stats.batch_sizes} == {16: 2, 5: 1}

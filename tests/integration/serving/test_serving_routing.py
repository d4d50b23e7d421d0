"""A SetAlias, Deploy or Rollback is routed by as soon as it returns: the caller's next request is
answered by the version it moved to."""

from __future__ import annotations

import numpy as np
from serving_models import W, linear_model, predict_request, to_array, upload

from tessera.v1 import registry_pb2

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _set_alias(registry, model: str, alias: str, version: int) -> None:
    registry.SetAlias(registry_pb2.SetAliasRequest(model=model, alias=alias, version=version))


def _unversioned(inference, model: str) -> int:
    response = inference.Predict(predict_request(model, X))
    scale = response.version  # linear_model(scale) uploads below number their versions by scale
    np.testing.assert_allclose(to_array(response.outputs[0]), X @ (W * scale), rtol=1e-6)
    return response.version


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

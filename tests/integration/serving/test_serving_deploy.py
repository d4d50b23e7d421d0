"""The README's serving steps: safetensors weights (v1), their ONNX export (v2), a predict, then a
canary deployment across the two formats, warmed before it takes traffic."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest
from serving_models import cnn4d_weights, tensor, to_array, upload_weights

from tessera.v1 import common_pb2, inference_pb2, registry_pb2
from tesserad.oip import grpc_service_pb2 as oip_pb

CLIPS = np.random.default_rng(0).normal(size=(3, 1, 3, 4, 4, 4)).astype(np.float32)


@pytest.fixture
def torch_warns_every_time():
    """torch gives some warnings once per process: show each, so an earlier test cannot hide one."""
    import torch

    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


def _predict(inference, rows: np.ndarray, **target: object) -> inference_pb2.PredictResponse:
    request = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model="clips-cnn4d", **target), inputs=[tensor("input", rows)]
    )
    return inference.Predict(request)


def _wait_until_loaded(
    inference, version: int, caplog: pytest.LogCaptureFixture
) -> inference_pb2.LoadedModel:
    """The version once the swap has loaded it; fails at once if the swap logged a warning."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        swap_warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not swap_warnings
        loaded = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="clips-cnn4d")).models
        ready = [m for m in loaded if m.version == version and m.state == inference_pb2.LOAD_STATE_READY]
        if ready:
            return ready[0]
        time.sleep(0.05)
    raise AssertionError(f"version {version} was not loaded for the deployment: {loaded}")


def test_a_canary_of_an_export_beside_its_weights_is_warmed_and_serves_without_warnings(
    inference, registry, oip, channel, caplog, torch_warns_every_time
) -> None:
    assert upload_weights(channel, "clips-cnn4d", cnn4d_weights(), alias="staging") == 1
    # Weights run by tessera's own code are not TorchScript (Triton's pytorch_libtorch).
    metadata = oip.ModelMetadata(oip_pb.ModelMetadataRequest(name="clips-cnn4d", version="1"))
    assert metadata.platform == "pytorch"
    exported = registry.ExportOnnx(
        registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model="clips-cnn4d"), alias="staging")
    )
    assert exported.version.version == 2
    assert _predict(inference, CLIPS).version == 2  # latest, loaded on first use (onnx)

    with caplog.at_level(logging.WARNING, logger="tesserad"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.Deploy(
            registry_pb2.DeployRequest(
                model="clips-cnn4d",
                routes=[registry_pb2.Route(version=2, weight=90), registry_pb2.Route(version=1, weight=10)],
            )
        )
        weights = _wait_until_loaded(inference, 1, caplog)
        export = _wait_until_loaded(inference, 2, caplog)
        assert weights.config.runtime == inference_pb2.RUNTIME_TORCH
        # Warmed like the version already serving, on its own format's runtime.
        assert (weights.config.device, weights.config.instances) == (
            export.config.device,
            export.config.instances,
        )
        # One row and several, alone and through OIP: each request's array views its message.
        v1 = [_predict(inference, CLIPS[:1], version=1), _predict(inference, CLIPS, version=1)]
        v2 = [_predict(inference, CLIPS[:1], version=2), _predict(inference, CLIPS, version=2)]
        infer = oip_pb.ModelInferRequest(model_name="clips-cnn4d", model_version="1")
        infer.inputs.add(name="input", datatype="FP32", shape=CLIPS.shape)
        infer.raw_input_contents.append(CLIPS.tobytes())
        oip.ModelInfer(infer)
        served = {_predict(inference, CLIPS).version for _ in range(20)}
    assert served == {1, 2}
    assert not [str(w.message) for w in caught]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for torch_answer, onnx_answer in zip(v1, v2, strict=True):
        np.testing.assert_allclose(
            to_array(torch_answer.outputs[0]), to_array(onnx_answer.outputs[0]), atol=1e-4
        )

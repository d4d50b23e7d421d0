"""Serving on a CUDA GPU: ONNX through onnxruntime's CUDA provider and safetensors weights through
torch, each against the same version served on the CPU. Skipped without a GPU (bench/gpu_check.sh
runs them with TESSERA_REQUIRE_GPU set, where a skip fails)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_models import W, cnn4d_weights, predict_request, tensor, to_array, upload_weights

from tessera.v1 import common_pb2, inference_pb2, registry_pb2


def _cuda_problem() -> str:
    import torch

    from tesserad.serving.runtimes import cuda_available

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    if not cuda_available():
        return "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return ""


CUDA_PROBLEM = _cuda_problem()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(bool(CUDA_PROBLEM), reason=CUDA_PROBLEM or "-")]

# cuDNN and cuBLAS may compute float32 convolutions and products in TF32 (10-bit mantissa).
TF32_TOLERANCE = {"rtol": 1e-2, "atol": 1e-3}


def _load(inference, model: str, version: int, device: str, **config: object) -> inference_pb2.LoadedModel:
    return inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=model, version=version),
            config=inference_pb2.ServingConfig(device=device, **config),
        )
    )


def _unload(inference, model: str) -> None:
    inference.UnloadModel(inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model=model)))


def test_an_onnx_model_on_cuda_answers_alone_and_in_batches(inference, linear) -> None:
    loaded = _load(inference, linear, 2, "cuda:0", max_batch_size=16)
    assert (loaded.config.device, loaded.state) == ("cuda:0", inference_pb2.LOAD_STATE_READY)
    rows = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    single = inference.Predict(predict_request(linear, rows[:1], version=2))
    np.testing.assert_allclose(to_array(single.outputs[0]), rows[:1] @ W * 2, **TF32_TOLERANCE)
    # 64 callers at once: whether the batcher joins them is its own measured choice (it stops
    # when batches do not pay for this model); either way each caller gets its own row back.
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda i: inference.Predict(predict_request(linear, rows[i : i + 1], version=2)), range(64)
            )
        )
    got = np.concatenate([to_array(a.outputs[0]) for a in answers])
    np.testing.assert_allclose(got, rows @ W * 2, **TF32_TOLERANCE)
    assert all(1 <= a.batch_rows <= 16 for a in answers)


def test_cnn4d_weights_and_their_export_on_cuda_agree_with_the_cpu(inference, registry, channel) -> None:
    assert upload_weights(channel, "clips-cnn4d", cnn4d_weights()) == 1
    exported = registry.ExportOnnx(
        registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model="clips-cnn4d", version=1))
    )
    assert exported.version.version == 2
    clips = np.random.default_rng(1).normal(size=(5, 1, 3, 4, 4, 4)).astype(np.float32)

    def outputs(device: str) -> dict[int, np.ndarray]:
        answers = {}
        for version in (1, 2):  # 1: torch with the safetensors weights, 2: onnxruntime
            assert _load(inference, "clips-cnn4d", version, device).config.device == device
            request = inference_pb2.PredictRequest(
                target=common_pb2.VersionRef(model="clips-cnn4d", version=version),
                inputs=[tensor("input", clips)],
            )
            answers[version] = to_array(inference.Predict(request).outputs[0])
        _unload(inference, "clips-cnn4d")
        return answers

    on_gpu, on_cpu = outputs("cuda:0"), outputs("cpu")
    for version in (1, 2):
        np.testing.assert_allclose(on_gpu[version], on_cpu[version], **TF32_TOLERANCE)
    np.testing.assert_allclose(on_cpu[1], on_cpu[2], atol=1e-4)

"""The response cache, against a real daemon: hits and misses, their figures, LRU eviction by
bytes, keys that never collide, and no stale answer across unloads, reloads and new versions."""

from __future__ import annotations

import grpc
import numpy as np
from serving_models import (
    W,
    delete_model_numbered_as_before,
    linear_model,
    predict_request,
    to_array,
    two_output_model,
    upload,
)

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.serving.response_cache import ENTRY_OVERHEAD_BYTES

X = np.arange(8, dtype=np.float32).reshape(2, 4)
# Room for three answers of the linear model to X's shape (2 rows of 3 float32), not four.
THREE_ANSWERS = 3 * (ENTRY_OVERHEAD_BYTES + 2 * 3 * 4) + 10


def _load(inference: inference_pb2_grpc.InferenceStub, model: str, version: int, **config: object) -> None:
    inference.LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model=model, version=version),
            config=inference_pb2.ServingConfig(**config),  # type: ignore[arg-type]
        )
    )


def _stats(inference: inference_pb2_grpc.InferenceStub, model: str, version: int) -> inference_pb2.ModelStats:
    (stats,) = inference.GetStats(
        inference_pb2.GetStatsRequest(target=common_pb2.VersionRef(model=model, version=version))
    ).stats
    return stats


def test_hits_skip_the_model_and_answer_the_same_bytes(start_daemon) -> None:
    channel = start_daemon(**{"serving.response_cache_size": THREE_ANSWERS}).channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    _load(inference, "linear", 1, response_cache=True)

    miss = inference.Predict(predict_request("linear", X, version=1))
    hit = inference.Predict(predict_request("linear", X, version=1))
    assert miss.batch_rows == 2 and hit.batch_rows == 0  # 0: answered without a batch
    assert hit.outputs[0].data == miss.outputs[0].data and list(hit.outputs[0].shape) == [2, 3]
    np.testing.assert_allclose(to_array(hit.outputs[0]), X @ W, rtol=1e-6)
    assert inference.Predict(predict_request("linear", X + 1, version=1)).batch_rows == 2

    stats = _stats(inference, "linear", 1)
    assert (stats.cache_hit_count, stats.cache_miss_count) == (1, 2)
    # A hit is a request answered, as Triton counts it a success, but no row the model ran.
    assert (stats.request_count, stats.row_count) == (3, 4)
    assert [(b.rows, b.count) for b in stats.batch_sizes] == [(2, 2)]

    infer = oip_pb.ModelInferRequest(model_name="linear", model_version="1")
    infer.inputs.add(name="x", datatype="FP32", shape=X.shape)
    infer.raw_input_contents.append(X.tobytes())
    assert oip.ModelInfer(infer).raw_output_contents[0] == miss.outputs[0].data
    (model_stats,) = oip.ModelStatistics(
        oip_pb.ModelStatisticsRequest(name="linear", version="1")
    ).model_stats
    figures = model_stats.inference_stats
    assert (figures.cache_hit.count, figures.cache_miss.count) == (2, 2)
    assert figures.cache_hit.ns > 0 and figures.cache_miss.ns > 0
    assert (figures.success.count, figures.queue.count, figures.compute_infer.count) == (4, 4, 2)
    assert (model_stats.inference_count, model_stats.execution_count) == (4, 2)
    config = oip.ModelConfig(oip_pb.ModelConfigRequest(name="linear", version="1")).config
    assert config.response_cache.enable
    loaded = inference.ListLoaded(inference_pb2.ListLoadedRequest(model="linear")).models
    assert loaded[0].config.response_cache


def test_eviction_outputs_unloads_and_versions_never_serve_a_stale_answer(start_daemon) -> None:
    daemon = start_daemon(**{"serving.response_cache_size": THREE_ANSWERS})
    channel = daemon.channel()
    inference = inference_pb2_grpc.InferenceStub(channel)
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "linear", linear_model(2.0))
    _load(inference, "linear", 1, response_cache=True)
    _load(inference, "linear", 2, response_cache=True)

    def rows(x: np.ndarray, version: int = 1) -> int:
        return inference.Predict(predict_request("linear", x, version=version)).batch_rows

    # Least recently used out, by bytes: the fourth answer evicts the one used longest ago.
    assert [rows(X + i) for i in range(3)] == [2, 2, 2]
    assert rows(X) == 0  # X is now the most recently used
    assert rows(X + 3) == 2  # evicts X + 1
    assert [rows(X), rows(X + 2), rows(X + 1)] == [0, 0, 2]
    # The cache is shared across versions, and a version never finds another's answers.
    answer = inference.Predict(predict_request("linear", X, version=2))
    assert answer.batch_rows == 2
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 2, rtol=1e-6)

    # Unloaded, reloaded: computed again.
    inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="linear", version=1))
    )
    _load(inference, "linear", 1, response_cache=True)
    assert rows(X) == 2 and rows(X) == 0
    # The model deleted and registered again: the same version number, another artifact.
    inference.UnloadModel(inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="linear")))
    delete_model_numbered_as_before(daemon, "linear", force=True)
    assert upload(channel, "linear", linear_model(3.0)) == 1
    _load(inference, "linear", 1, response_cache=True)
    answer = inference.Predict(predict_request("linear", X, version=1))
    assert answer.batch_rows == 2
    np.testing.assert_allclose(to_array(answer.outputs[0]), X @ W * 3, rtol=1e-6)

    # Other requested outputs are other answers.
    upload(channel, "two", two_output_model())
    _load(inference, "two", 1, response_cache=True)

    def outputs(*names: str) -> list[tuple[str, bytes]]:
        request = oip_pb.ModelInferRequest(model_name="two", model_version="1")
        request.inputs.add(name="x", datatype="FP32", shape=X.shape)
        request.raw_input_contents.append(X.tobytes())
        for name in names:
            request.outputs.add(name=name)
        response = oip.ModelInfer(request)
        return [(o.name, raw) for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)]

    for names in [("a",), ("b",), ("a",), ("b",), ("b", "a")]:
        assert [name for name, _ in outputs(*names)] == list(names)
    assert dict(outputs("b"))["b"] == (X + X).tobytes()
    (stats,) = oip.ModelStatistics(oip_pb.ModelStatisticsRequest(name="two", version="1")).model_stats
    assert (stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count) == (3, 3)


def test_cache_is_off_by_default_and_bad_configs_are_refused(channel, expect_rpc_error) -> None:
    inference = inference_pb2_grpc.InferenceStub(channel)
    upload(channel, "linear", linear_model(1.0))
    expect_rpc_error(
        lambda: _load(inference, "linear", 1, response_cache=True),
        grpc.StatusCode.FAILED_PRECONDITION,
        "set serving.response_cache_size",
    )
    expect_rpc_error(
        lambda: _load(inference, "linear", 1, response_cache=True, max_queue_size=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "config.max_queue_size must be in 1..1000000",
    )
    assert [inference.Predict(predict_request("linear", X, version=1)).batch_rows for _ in range(2)] == [2, 2]
    stats = _stats(inference, "linear", 1)
    assert (stats.cache_hit_count, stats.cache_miss_count) == (0, 0)

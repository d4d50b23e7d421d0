"""ListShadowResults pages at what fits in one gRPC message a client takes by default (4 MiB):
each result carries the shadow's outputs, so a model with large outputs filled an answer past it
at the default limit, and the client refused the answer with a message about its own limit."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
from serving_models import predict_request

import tessera
import tessera.aio
from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc

# 60,000 rows of 3 float32 outputs: about 0.69 MiB a result, so that 4 fit in one answer (3 MiB)
# and 6 take more than a client takes by default (4 MiB).
ROWS = 60_000
SHADOWED = 8


def _shadowed_requests(
    inference: inference_pb2_grpc.InferenceStub, registry: registry_pb2_grpc.RegistryStub, model: str
) -> None:
    registry.Deploy(
        registry_pb2.DeployRequest(
            model=model,
            routes=[registry_pb2.Route(version=1, weight=100)],
            shadow=registry_pb2.Shadow(version=2, percent=100),
        )
    )
    inference.LoadModel(inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model=model, version=2)))
    x = np.ones((ROWS, 4), dtype=np.float32)
    for i in range(SHADOWED):
        request = predict_request(model, x)
        request.request_id = f"q{i}"
        assert inference.Predict(request).version == 1
        # The shadow's copy finishes after the answer, and records its result when done.
        deadline = time.monotonic() + 30
        while _newest_request_id(inference, model) != request.request_id:
            assert time.monotonic() < deadline, f"no shadow result for {request.request_id}"
            time.sleep(0.05)


def _newest_request_id(inference: inference_pb2_grpc.InferenceStub, model: str) -> str:
    request = inference_pb2.ListShadowResultsRequest(model=model, limit=1)
    return next((r.request_id for r in inference.ListShadowResults(request).results), "")


def _page(
    inference: inference_pb2_grpc.InferenceStub, model: str, limit: int, token: str = ""
) -> tuple[list[str], str]:
    request = inference_pb2.ListShadowResultsRequest(model=model, limit=limit, page_token=token)
    response = inference.ListShadowResults(request)
    return [r.request_id for r in response.results], response.next_page_token


def test_results_past_one_answer_end_the_page_with_a_token_for_the_rest(
    inference, registry, linear, daemon
) -> None:
    _shadowed_requests(inference, registry, linear)
    assert _page(inference, linear, 4)[0] == ["q7", "q6", "q5", "q4"]
    # The default limit (0) and one past what fits both end the page at what fits.
    first, token = _page(inference, linear, 0)
    assert first == ["q7", "q6", "q5", "q4"]
    assert _page(inference, linear, 0, token) == (["q3", "q2", "q1", "q0"], "")
    first, token = _page(inference, linear, 7)
    assert first == ["q7", "q6", "q5", "q4"]
    rest, token = _page(inference, linear, 3, token)
    assert rest == ["q3", "q2", "q1"] and token
    assert _page(inference, linear, 3, token) == (["q0"], "")
    # The SDK follows the pages up to the limit asked.
    with tessera.Client(daemon.target, timeout=30) as sdk:
        assert [r.request_id for r in sdk.inference.shadow_results(linear, limit=7)] == [
            f"q{i}" for i in range(7, 0, -1)
        ]
        assert len(sdk.inference.shadow_results(linear)) == SHADOWED

    async def asyncio_results() -> list[str]:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            return [r.request_id for r in await client.inference.shadow_results(linear, limit=5)]

    assert asyncio.run(asyncio_results()) == [f"q{i}" for i in range(7, 2, -1)]


def test_a_page_token_of_another_listing_is_refused(inference, registry, linear, expect_rpc_error) -> None:
    _shadowed_requests(inference, registry, linear)
    _, token = _page(inference, linear, 1)
    registry.CreateModel(registry_pb2.CreateModelRequest(name="other"))
    models_token = registry.ListModels(registry_pb2.ListModelsRequest(page_size=1)).next_page_token
    for model, foreign in (("other", token), (linear, models_token)):
        request = inference_pb2.ListShadowResultsRequest(model=model, page_token=foreign)
        expect_rpc_error(
            lambda request=request: inference.ListShadowResults(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token belongs to a different query; keep the filters the same across pages",
        )

"""ListShadowResults answers what fits in one gRPC message a client takes by default (4 MiB):
each result carries the shadow's outputs, so a model with large outputs filled an answer past it
at the default limit, and the client refused the answer with a message about its own limit."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from serving_models import predict_request

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


def test_results_past_one_answer_are_refused_naming_a_limit_that_fits(inference, registry, linear) -> None:
    _shadowed_requests(inference, registry, linear)
    with_results = [
        len(
            inference.ListShadowResults(inference_pb2.ListShadowResultsRequest(model=linear, limit=n)).results
        )
        for n in (1, 4)
    ]
    assert with_results == [1, 4]
    for limit in (0, 7):
        request = inference_pb2.ListShadowResultsRequest(model=linear, limit=limit)
        with pytest.raises(grpc.RpcError) as refused:
            inference.ListShadowResults(request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert refused.value.details() == (
            "limit: the newest 5 shadow results of model 'linear' take more than one answer holds "
            "(3 MiB): ask for limit 4 or less (each result holds the shadow's outputs)"
        )

"""A request's deadline ends its wait in a batch held open for more rows (max_queue_delay_us),
as Triton's scheduler wakes at the nearest deadline: it is not held to the delay's end."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving_models import linear_model, upload

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc

# The longest delay a version may hold a batch open; the client waits less than this for its
# answer, so an answer past the delay's end would be the client's own DEADLINE_EXCEEDED.
DELAY_US = 10_000_000
CLIENT_WAIT_S = 8.0


def test_a_request_timeout_ends_its_wait_in_a_batch_held_open(channel) -> None:
    upload(channel, "linear", linear_model(1.0))
    inference_pb2_grpc.InferenceStub(channel).LoadModel(
        inference_pb2.LoadModelRequest(
            target=common_pb2.VersionRef(model="linear"),
            config=inference_pb2.ServingConfig(max_batch_size=8, max_queue_delay_us=DELAY_US, warmup_runs=0),
        )
    )
    x = np.ones((1, 4), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    request.parameters["timeout"].int64_param = 200_000  # 0.2 s
    oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as expired:
        oip.ModelInfer(request, timeout=CLIENT_WAIT_S)
    assert (expired.value.code(), expired.value.details()) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request's deadline passed while it was queued; it was not run",
    )
    statistics = oip.ModelStatistics(pb.ModelStatisticsRequest(name="linear")).model_stats[0]
    assert statistics.inference_stats.fail.count == 1

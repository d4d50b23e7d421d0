"""A burst of concurrent calls on one connection: each is served, refused by
limits.max_concurrent_calls (counted), or refused as a stream by gRPC core's Rapid Reset defence
(UNAVAILABLE, REFUSED_STREAM: retryable); never cancelled unseen by gRPC's core."""

from __future__ import annotations

import asyncio
import collections
import re
import urllib.request

import grpc
import numpy as np
from serving_models import linear_model, upload

from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc

# Over gRPC core's default queue of calls the server has not taken yet (1000 calls, refused at
# random up to 3000), and over the streams a connection may open (here 20 + 100): the calls
# past those wait in the client for a stream.
BURST = 3000


async def _burst(target: str, request: pb.ModelInferRequest) -> list[tuple[grpc.StatusCode, str]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> tuple[grpc.StatusCode, str]:
            try:
                await stub.ModelInfer(request, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        return await asyncio.gather(*(one() for _ in range(BURST)))


def test_a_burst_over_the_call_limit_is_served_or_refused_never_cancelled_unseen(start_daemon) -> None:
    daemon = start_daemon(
        **{
            "limits.max_concurrent_calls": "20",
            # Requests wait for their batch, so that many are in flight at once.
            "serving.max_queue_delay_us": "20000",
            "serving.inline_max_compute_us": "0",
        }
    )
    upload(daemon.channel(), "linear", linear_model(1.0))
    x = np.ones((1, 4), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(daemon.channel()).ModelInfer(request)

    answers = asyncio.run(_burst(daemon.target, request))

    codes = collections.Counter(code for code, _ in answers)
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }, codes
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0, codes
    assert {details for code, details in answers if code == grpc.StatusCode.UNAVAILABLE} <= {
        "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"
    }
    refusals = {details for code, details in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert refusals == {
        "too many calls at once: limits.max_concurrent_calls = 20 is reached; retry later, or raise "
        "limits.max_concurrent_calls (env TESSERA_LIMITS_MAX_CONCURRENT_CALLS)"
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=30) as page:
        metrics = page.read().decode()
    # The failure series the alerts watch are exported at 0 from the start: only the counted ones.
    counted = {
        code: float(count)
        for code, count in re.findall(
            r'tessera_rpc_total\{code="(\w+)",method="ModelInfer",service="inference.GRPCInferenceService"\} (\S+)',
            metrics,
        )
        if float(count)
    }
    # A stream core refused never reached the daemon: it is not counted.
    assert counted == {
        "OK": codes[grpc.StatusCode.OK] + 1,
        "RESOURCE_EXHAUSTED": codes[grpc.StatusCode.RESOURCE_EXHAUSTED],
    }

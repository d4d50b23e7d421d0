"""A reload of the tokens file that removes a token refuses that token's inference requests still
waiting in a batcher's queue, on gRPC (ModelInfer, Predict) and HTTP alike: they leave the queue
unrun, and the batch that runs meanwhile is unaffected."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serving_models import pairwise_model, predict_request, upload

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad import cli
from tesserad.oip import grpc_service_pb2 as pb
from tesserad.oip import grpc_service_pb2_grpc
from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer
from tests.integration.security.conftest import tokens as tokens  # one token per role

# A batch of ROWS rows of the pairwise model runs for seconds (its work grows with the square of
# the batch), and a request of one row cannot join it (max_batch_size), so it queues behind it.
ROWS = 64
WIDTH = 16384


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), *self._metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def infer_request(rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pairwise")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, WIDTH])
    request.raw_input_contents.append(np.full((rows, WIDTH), 0.01, dtype=np.float32).tobytes())
    return request


def until(check: Any) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the daemon never reached the state waited for")
        time.sleep(0.01)


def test_a_removed_token_s_queued_inference_requests_are_refused_unrun(
    tmp_path: Path, tokens: Tokens
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "security.tokens_file": str(tokens.file),
            "security.tokens_reload_interval_s": 0,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        admin = grpc.intercept_channel(daemon.channel(), _Bearer(tokens.token[Role.ADMIN]))
        reader = grpc.intercept_channel(daemon.channel(), _Bearer(tokens.token[Role.READER]))
        upload(admin, "pairwise", pairwise_model())
        inference_pb2_grpc.InferenceStub(admin).LoadModel(
            inference_pb2.LoadModelRequest(
                target=common_pb2.VersionRef(model="pairwise"),
                config=inference_pb2.ServingConfig(max_batch_size=ROWS, instances=1),
            )
        )
        assert daemon.daemon._auth is not None
        calls = daemon.daemon._auth.calls
        running = grpc_service_pb2_grpc.GRPCInferenceServiceStub(admin).ModelInfer.future(
            infer_request(ROWS), timeout=300
        )
        until(lambda: calls.in_flight == 1)

        queued_infer = grpc_service_pb2_grpc.GRPCInferenceServiceStub(reader).ModelInfer.future(
            infer_request(1), timeout=300
        )
        queued_predict = inference_pb2_grpc.InferenceStub(reader).Predict.future(
            predict_request("pairwise", np.zeros((1, WIDTH), dtype=np.float32)), timeout=300
        )
        http_answer: list[tuple[int, str]] = []
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.0] * WIDTH}]}

        def http_infer() -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{daemon.daemon.oip_http_port}/v2/models/pairwise/infer",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {tokens.token[Role.READER]}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    http_answer.append((response.status, ""))
            except urllib.error.HTTPError as exc:
                http_answer.append((exc.code, json.loads(exc.read())["error"]))

        sender = threading.Thread(target=http_infer)
        sender.start()
        until(lambda: calls.in_flight == 4)

        assert cli.main(["tokens", "remove", "reader-holder", "--file", str(tokens.file)]) == 0
        daemon.run(daemon.daemon.reload())

        for future, rpc in (
            (queued_infer, "inference.GRPCInferenceService/ModelInfer"),
            (queued_predict, "tessera.v1.Inference/Predict"),
        ):
            failure = future.exception(timeout=60)
            assert isinstance(failure, grpc.RpcError)
            assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
            assert failure.details() == (
                f"the token this {rpc} call was sent with was removed from the tesserad's tokens file "
                "(or replaced); make the call again with a valid token"
            )
        sender.join(timeout=60)
        assert http_answer == [
            (
                401,
                "the token this inference request was sent with was removed from the tesserad's "
                "tokens file (or replaced) before it was answered; send it again with a valid token",
            )
        ]
        assert list(running.result().outputs[0].shape) == [ROWS, 1]
        (stats,) = (
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(admin)
            .ModelStatistics(pb.ModelStatisticsRequest(name="pairwise"))
            .model_stats
        )
        # Only the running batch ran: the refused requests left the queue.
        assert stats.execution_count == 1
    finally:
        daemon.stop()

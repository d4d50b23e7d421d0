"""gRPC retries the idempotent calls from the channel's service config: against a real gRPC
server that fails a call's first attempt with UNAVAILABLE, a listed call survives (on the
blocking and the asyncio client, whatever the request's size) and any other is tried once."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
from tessera.transport import RETRIED_METHODS, service_config
from tessera.v1 import (
    datasets_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    training_pb2,
)

FAST_RETRY = tessera.RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


class FirstAttemptFails:
    """Counts each method's attempts; the first attempt of every call fails UNAVAILABLE."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def attempt(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            first = self.attempts[method] % 2 == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: daemon restarting")


class FlakyInference(inference_pb2_grpc.InferenceServicer):
    def __init__(self, flaky: FirstAttemptFails) -> None:
        self.flaky = flaky
        self.rows: list[int] = []

    def Predict(self, request, context):
        self.flaky.attempt("Predict", context)
        self.rows.append(request.inputs[0].shape[0])
        return inference_pb2.PredictResponse(model=request.target.model, version=1)


class FlakyRegistry(registry_pb2_grpc.RegistryServicer):
    def __init__(self, flaky: FirstAttemptFails) -> None:
        self.flaky = flaky

    def GetModel(self, request, context):
        self.flaky.attempt("GetModel", context)
        return registry_pb2.Model(name=request.name)

    def SetAlias(self, request, context):
        self.flaky.attempt("SetAlias", context)
        return registry_pb2.Alias(model=request.model, alias=request.alias, version=request.version)

    def Deploy(self, request, context):
        self.flaky.attempt("Deploy", context)
        return registry_pb2.Deployment(model=request.model)


@pytest.fixture
def flaky() -> Iterator[tuple[str, FirstAttemptFails, FlakyInference]]:
    attempts = FirstAttemptFails()
    inference = FlakyInference(attempts)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    registry_pb2_grpc.add_RegistryServicer_to_server(FlakyRegistry(attempts), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", attempts, inference
    server.stop(0).wait(5)


def test_a_listed_call_survives_a_transient_unavailable(flaky):
    target, attempts, inference = flaky
    with tessera.Client(target, retry=FAST_RETRY) as client:
        assert client.models.get("m").name == "m"
        # 4 MiB of inputs: past gRPC's default 256 KiB retry buffer, still retried.
        prediction = client.inference.predict("m", np.zeros((1024, 1024), np.float32))
    assert prediction.model == "m" and inference.rows == [1024]
    assert attempts.attempts == {"GetModel": 2, "Predict": 2}


def test_calls_off_the_list_are_tried_once(flaky):
    target, attempts, _ = flaky
    with tessera.Client(target, retry=FAST_RETRY) as client:
        with pytest.raises(tessera.Unavailable) as deploy:
            client.models.deploy("m", {1: 100})
        with pytest.raises(tessera.Unavailable) as set_alias:
            client.models.set_alias("m", "staging", 1, expected_version=0)
    assert deploy.value.daemon_message == "Deploy: daemon restarting"
    assert set_alias.value.daemon_message == "SetAlias: daemon restarting"
    assert attempts.attempts == {"Deploy": 1, "SetAlias": 1}


def test_a_policy_of_one_attempt_retries_nothing(flaky):
    target, attempts, _ = flaky
    with (
        tessera.Client(target, retry=tessera.RetryPolicy(attempts=1)) as client,
        pytest.raises(tessera.Unavailable),
    ):
        client.models.get("m")
    assert attempts.attempts == {"GetModel": 1}


def test_the_asyncio_client_is_retried_by_the_same_config(flaky):
    target, attempts, _ = flaky

    async def scenario() -> str:
        async with tessera.aio.Client(target, retry=FAST_RETRY) as client:
            with pytest.raises(tessera.Unavailable):
                await client.models.deploy("m", {1: 100})
            return (await client.models.get("m")).name

    assert asyncio.run(scenario()) == "m"
    assert attempts.attempts == {"Deploy": 1, "GetModel": 2}


def test_the_retried_methods_are_unary_rpcs_that_change_nothing_or_set_a_given_state():
    services = {
        "Registry": registry_pb2,
        "Datasets": datasets_pb2,
        "Training": training_pb2,
        "Inference": inference_pb2,
        "System": system_pb2,
    }
    for service, methods in RETRIED_METHODS.items():
        descriptor = services[service].DESCRIPTOR.services_by_name[service]
        for name in methods:
            method = descriptor.methods_by_name[name]
            assert not method.client_streaming and not method.server_streaming, name
    retried = {name for methods in RETRIED_METHODS.values() for name in methods}
    creating_or_moving = {
        "CreateModel",
        "UploadVersion",
        "UploadVersionInline",
        "UploadVersionBatch",
        "Deploy",
        "Rollback",
        "SetAlias",
    }
    assert not retried & creating_or_moving
    assert not {name for name in retried if name.startswith(("Delete", "Cancel", "Create"))}
    # The creating calls retried: the SDK sends each submit with a request_id
    # (test_submit_request_ids, test_sweep_request_ids), which makes a repeat answer the job or
    # sweep the first created.
    assert retried & {"SubmitJob", "SubmitSweep", "CreateRun", "CreateExperiment"} == {
        "SubmitJob",
        "SubmitSweep",
    }
    config = json.loads(service_config(FAST_RETRY))["methodConfig"][0]
    assert config["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.02s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert len(config["name"]) == len(retried)


def test_more_attempts_than_grpc_allows_are_capped_at_its_five():
    policy = json.loads(service_config(tessera.RetryPolicy(attempts=9)))["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 5

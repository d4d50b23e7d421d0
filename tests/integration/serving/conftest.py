"""Fixtures for the serving tests: stubs, an uploaded model, a second daemon with other settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from serving_models import linear_model, upload

from tessera.v1 import inference_pb2_grpc, registry_pb2_grpc
from tesserad.oip import grpc_service_pb2_grpc


@pytest.fixture
def inference(channel: grpc.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture
def registry(channel: grpc.Channel) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(channel)


@pytest.fixture
def oip(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def linear(channel: grpc.Channel) -> str:
    """Model "linear" with version 1 (scale 1) and version 2 (scale 2)."""
    upload(channel, "linear", linear_model(1.0))
    upload(channel, "linear", linear_model(2.0))
    return "linear"


@pytest.fixture
def expect_rpc_error() -> Callable[[Callable[[], object], grpc.StatusCode, str], grpc.RpcError]:
    """expect_rpc_error(call, code, text): asserts call() fails with `code` and a message holding `text`."""

    def expect(call: Callable[[], object], code: grpc.StatusCode, text: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == code, raised.value.details()
        assert text in raised.value.details(), raised.value.details()
        return raised.value

    return expect


@pytest.fixture
def start_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start another in-process daemon with settings overrides (the root conftest's helpers)."""
    root = next(
        p
        for p in request.config.pluginmanager.get_plugins()
        if hasattr(p, "InProcessDaemon") and hasattr(p, "daemon_settings")
    )
    started: list[Any] = []

    def start(**overrides: Any) -> Any:
        daemon = root.InProcessDaemon(
            root.daemon_settings(tmp_path / f"daemon{len(started)}", **overrides)
        ).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()

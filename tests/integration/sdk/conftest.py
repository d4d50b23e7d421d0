"""SDK fixtures: a tessera.Client on the real daemon, a small ONNX model, and an in-test gRPC
server (`FakeDaemon`) for status codes and stream cuts the real daemon cannot be made to give."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

import tessera
from tessera.v1 import system_pb2, system_pb2_grpc, training_pb2, training_pb2_grpc
from tests.integration.sdk.affine import affine_onnx
from tests.tcp_proxy import CuttableProxy


@pytest.fixture
def client(daemon) -> Iterator[tessera.Client]:
    with tessera.Client(daemon.target, timeout=30) as sdk:
        yield sdk


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return affine_onnx(tmp_path / "affine.onnx")


@pytest.fixture
def make_onnx(tmp_path: Path):
    """make_onnx(name, scale=...) -> path of an affine ONNX model in tmp_path."""
    return lambda name, **kwargs: affine_onnx(tmp_path / f"{name}.onnx", **kwargs)


@pytest.fixture
def clips() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 1, 2, 2, 2, 2)).astype(np.float32), rng.integers(0, 2, 20).astype(np.int64)


class FakeSystem(system_pb2_grpc.SystemServicer):
    """GetServerInfo fails with each code queued in `failures` (one per call), then answers;
    it records every call's metadata and can stall to trip a client deadline."""

    def __init__(self) -> None:
        self.failures: list[grpc.StatusCode] = []
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self.stall_s = 0.0
        self.version = "fake"
        self._lock = threading.Lock()

    def GetServerInfo(self, request, context):
        with self._lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            code = self.failures.pop(0) if self.failures else None
        if code is not None:
            context.abort(code, f"fake {code.name} for the test")
        if self.stall_s:
            threading.Event().wait(self.stall_s)
        return system_pb2.ServerInfo(version=self.version)


class FakeTraining(training_pb2_grpc.TrainingServicer):
    """WatchJob replays `events` from from_seq; a stream ends with `cut_with` (UNAVAILABLE, as a
    restart) after the number of events given in `cut_after` (one entry per stream), and each
    request is recorded. A
    `gate` makes streams wait before sending event `gate_seq`, so a test can cut the wire."""

    def __init__(self, count: int = 10) -> None:
        self.events = [
            training_pb2.JobEvent(
                seq=seq, attempt=1, step=training_pb2.StepMetrics(epoch=1, step=seq, loss=1.0 / seq)
            )
            for seq in range(1, count + 1)
        ]
        self.cut_after: list[int] = []
        self.cut_with = (grpc.StatusCode.UNAVAILABLE, "fake daemon restarting; resume from seq")
        self.requests: list[int] = []
        self.gate: threading.Event | None = None
        self.gate_seq = 0
        self.final_state = training_pb2.JOB_STATE_SUCCEEDED
        self.submits = 0
        self.sweep_submits = 0
        self.run_creates = 0
        self.request_ids: list[str] = []
        self.sweep_request_ids: list[str] = []

    def WatchJob(self, request, context):
        self.requests.append(request.from_seq)
        limit = self.cut_after.pop(0) if self.cut_after else None
        sent = 0
        for event in self.events:
            if event.seq < max(request.from_seq, 1):
                continue
            if limit is not None and sent == limit:
                context.abort(*self.cut_with)
            if self.gate is not None and event.seq == self.gate_seq:
                self.gate.wait(10)
            yield event
            sent += 1

    def GetJob(self, request, context):
        return training_pb2.Job(job_id=request.job_id, state=self.final_state, last_seq=len(self.events))

    def SubmitJob(self, request, context):
        self.submits += 1
        self.request_ids.append(request.request_id)
        context.abort(grpc.StatusCode.UNAVAILABLE, "fake: not taking jobs")

    def SubmitSweep(self, request, context):
        self.sweep_submits += 1
        self.sweep_request_ids.append(request.request_id)
        context.abort(grpc.StatusCode.UNAVAILABLE, "fake: not taking sweeps")

    def CreateRun(self, request, context):
        self.run_creates += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "fake: not creating runs")


class FakeDaemon:
    """A plain gRPC server on 127.0.0.1 with the fake System and Training servicers."""

    def __init__(self) -> None:
        self.system = FakeSystem()
        self.training = FakeTraining()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        system_pb2_grpc.add_SystemServicer_to_server(self.system, self.server)
        training_pb2_grpc.add_TrainingServicer_to_server(self.training, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait(5)


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    server = FakeDaemon()
    yield server
    server.stop()


@pytest.fixture
def proxy_to():
    proxies: list[CuttableProxy] = []

    def make(port: int) -> CuttableProxy:
        proxy = CuttableProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory to download into, apart from the files a test pushes from."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory

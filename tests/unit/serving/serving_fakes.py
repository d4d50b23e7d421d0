"""Helpers for the serving unit tests: ONNX graph saving, weights, a gated runtime, and a lock
that says who waits for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tesserad.serving.signature import Signature, TensorSpec

LINEAR_W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
LINEAR_B = np.array([1.0, -1.0, 0.5], dtype=np.float32)


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class GatedRuntime:
    """Doubles its input; each run waits for the gate, so tests control when batches finish."""

    def __init__(self) -> None:
        self.signature = Signature(
            (TensorSpec("x", np.dtype(np.float32), (-1, 2)),),
            (TensorSpec("y", np.dtype(np.float32), (-1, 2)),),
        )
        self.memory_bytes = 0
        self.device = "cpu"
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.batches: list[int] = []
        self.helper_ns = 0  # what its "helper threads" have spent, for tests of costs
        self.closed = False

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["x"]))
        self.started.release()
        assert self.gate.wait(30)
        if (inputs["x"] < 0).any():
            raise RuntimeError("negative input")
        return {"y": inputs["x"] * 2}

    def helper_cpu_ns(self) -> int:
        return self.helper_ns

    def close(self) -> None:
        self.closed = True


class ArrivalLock:
    """A lock that releases `arrivals` for each caller that finds it held (about to wait)."""

    def __init__(self, arrivals: threading.Semaphore) -> None:
        self._lock = threading.Lock()
        self._arrivals = arrivals

    def __enter__(self) -> None:
        if self._lock.locked():
            self._arrivals.release()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class HeldArtifact:
    """An artifact opener for a ServableVersion that sets `inside` when a load opens it and holds
    that load until `release` is set: a load under way, for as long as a test needs it. `opened`
    counts the loads that opened it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inside = threading.Event()
        self.release = threading.Event()
        self.opened = 0

    @contextmanager
    def __call__(self) -> Iterator[Path]:
        self.opened += 1
        self.inside.set()
        assert self.release.wait(30)
        yield self.path

"""Helpers for the serving unit tests: ONNX graph saving, weights, a gated runtime, and a lock
that says who waits for it."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tesserad.errors import NotFound, Unavailable
from tesserad.serving.pool import ServableVersion
from tesserad.serving.service import DeploymentPlan
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


class Versions:
    """A VersionSource of ONNX versions of 'm', which a test deletes from `versions`."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        self.versions = versions

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        number = version if version is not None else max(self.versions, default=0)
        if number not in self.versions:
            raise NotFound(f"model 'm' has no version {number}")
        return self.versions[number]

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)

    def deployment(self, model: str) -> DeploymentPlan | None:
        return None

    def model_names(self) -> list[str]:
        return ["m"]

    def model_identity(self, model: str) -> Hashable:
        return 1


class UnreadableVersions(Versions):
    """Versions whose reads fail (Unavailable, a registry out of reach) while `failing` is set;
    `reads` counts the reads of a version by its number."""

    def __init__(self, versions: dict[int, ServableVersion]) -> None:
        super().__init__(versions)
        self.failing = False
        self.reads = 0

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        if version is not None:
            self.reads += 1
        if self.failing:
            raise Unavailable("the registry cannot be reached")
        return super().servable(model, version, alias)

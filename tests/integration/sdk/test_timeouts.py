"""One rule for a method's `timeout=` on the blocking and the asyncio client: seconds above 0,
None for the default; 0 (or less) is refused with ValueError before anything is sent. Some
methods took 0 for the default (`timeout or default`), the others for a deadline already
past, which the asyncio channel did not always fail."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tessera
import tessera.aio
from tessera.calls import Part
from tessera.models import VersionFile
from tessera.v1 import training_pb2
from tests.conftest import InProcessDaemon, daemon_settings


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    """One daemon for the module's hundred-odd tests: each checks the daemon got nothing from
    it (_nothing_sent), which holds on a shared daemon for as long as none does; a daemon
    started and stopped for each cost more than the test itself."""
    running = InProcessDaemon(daemon_settings(tmp_path_factory.mktemp("timeouts") / "data")).start()
    yield running
    running.stop()


def _job(training: Any) -> Any:
    """A Job part for an id the daemon has never seen: a refused call never asks."""
    return tessera.Job(training._conn, training_pb2.Job(job_id="absent"))


# Every public method with a `timeout` parameter, called with `timeout` and otherwise good
# arguments: `part` is the client part the key names ("job" a Job), `files` the test's paths.
CALLS: dict[str, Callable[[Any, dict[str, Path], float], Any]] = {
    "datasets.download": lambda part, files, t: part.download("d", files["out"], timeout=t),
    "datasets.load": lambda part, files, t: part.load("d", timeout=t),
    "datasets.push": lambda part, files, t: part.push("d", files["npz"], timeout=t),
    "inference.explain": lambda part, files, t: part.explain("m", np.zeros((1, 4), np.float32), timeout=t),
    "inference.predict": lambda part, files, t: part.predict("m", np.zeros((1, 4), np.float32), timeout=t),
    "inference.predict_stream": lambda part, files, t: part.predict_stream(
        "m", [np.zeros((1, 4), np.float32)], timeout=t
    ),
    "job.wait": lambda part, files, t: part.wait(timeout=t),
    "job.watch": lambda part, files, t: part.watch(timeout=t),
    "models.download": lambda part, files, t: part.download("m", files["out"], timeout=t),
    "models.export_onnx": lambda part, files, t: part.export_onnx("m", 1, timeout=t),
    "models.push": lambda part, files, t: part.push("m", files["onnx"], timeout=t),
    "models.push_batch": lambda part, files, t: part.push_batch([VersionFile("m", files["onnx"])], timeout=t),
    "models.register_ensemble": lambda part, files, t: part.register_ensemble("e", ["m:1", "m:2"], timeout=t),
    "models.watch_changes": lambda part, files, t: part.watch_changes(timeout=t),
    "system.backup": lambda part, files, t: part.backup(files["out"], timeout=t),
    "system.watch": lambda part, files, t: part.watch(timeout=t),
    "training.download_artifact": lambda part, files, t: part.download_artifact(
        "r", "a.txt", files["out"], timeout=t
    ),
    "training.download_artifacts": lambda part, files, t: part.download_artifacts(
        "r", "", files["out"], timeout=t
    ),
    "training.log_artifact": lambda part, files, t: part.log_artifact("r", files["npz"], timeout=t),
    "training.log_artifacts": lambda part, files, t: part.log_artifacts("r", files["npz"].parent, timeout=t),
    "training.log_metrics_stream": lambda part, files, t: part.log_metrics_stream(
        "r", [(0, {"m": 1.0})], timeout=t
    ),
    "training.watch": lambda part, files, t: part.watch("j", timeout=t),
}
REFUSED = pytest.raises(ValueError, match=r"timeout must be seconds above 0 \(at most 1,000,000,000\), got ")


def _part(client: Any, key: str) -> Any:
    owner = key.split(".")[0]
    return _job(client.training) if owner == "job" else getattr(client, owner)


def _timeout_methods(client: Any) -> set[str]:
    parts = {name: part for name, part in vars(client).items() if isinstance(part, Part)}
    parts["job"] = _job(client.training)
    return {
        f"{owner}.{name}"
        for owner, part in parts.items()
        for name in dir(type(part))
        if not name.startswith("_")
        and callable(method := getattr(part, name))
        and "timeout" in inspect.signature(method).parameters
    }


@pytest.fixture
def files(tmp_path, make_onnx) -> dict[str, Path]:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    return {"onnx": make_onnx("m"), "npz": tmp_path / "d.npz", "out": tmp_path / "out"}


def _nothing_sent(client: tessera.Client, files: dict[str, Path]) -> None:
    assert list(client.models.list()) == [] and list(client.datasets.list()) == []
    assert not files["out"].exists()


def test_every_method_with_a_timeout_is_in_the_rule_s_test(daemon):
    with tessera.Client(daemon.target) as client:
        assert _timeout_methods(client) == set(CALLS)

    async def aio_methods() -> set[str]:
        async with tessera.aio.Client(daemon.target) as aio_client:
            return _timeout_methods(aio_client)

    assert asyncio.run(aio_methods()) == set(CALLS)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
@pytest.mark.parametrize("key", sorted(CALLS))
def test_a_timeout_not_above_0_is_refused_before_anything_is_sent(client, files, key, timeout):
    with REFUSED:
        result = CALLS[key](_part(client, key), files, timeout)
        # A stream refuses when it is made; anything else would be sent when iterated.
        next(iter(result))
    _nothing_sent(client, files)


@pytest.mark.parametrize("timeout", [0, -1.0])
@pytest.mark.parametrize("key", sorted(CALLS))
def test_the_asyncio_client_refuses_it_alike(daemon, client, files, key, timeout):
    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as aio_client:
            with REFUSED:
                result = CALLS[key](_part(aio_client, key), files, timeout)
                await (result if inspect.isawaitable(result) else anext(result))

    asyncio.run(asyncio.wait_for(scenario(), 60))
    _nothing_sent(client, files)


def test_a_watch_whose_timeout_ran_out_before_it_began_is_deadline_exceeded(daemon):
    with (
        tessera.Client(daemon.target) as client,
        pytest.raises(tessera.DeadlineExceeded, match="watch again"),
    ):
        next(iter(client.models.watch_changes(timeout=1e-9)))

    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as aio_client:
            with pytest.raises(tessera.DeadlineExceeded, match="watch again from seq 0"):
                await anext(aio_client.models.watch_changes(timeout=1e-9))

    asyncio.run(asyncio.wait_for(scenario(), 60))

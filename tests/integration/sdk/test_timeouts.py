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
from tessera.calls import Part, _CallMethod, _ListingMethod, _StreamMethod
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


class _Figure:
    def savefig(self, path: Path) -> None:
        path.write_bytes(b"image")


def _job(training: Any) -> Any:
    """A Job part for an id the daemon has never seen: a refused call never asks."""
    return tessera.Job(training._conn, training_pb2.Job(job_id="absent"))


# Every public method (each takes `timeout`), called with `timeout` and otherwise good
# arguments: `part` is the client part the key names ("job" a Job), `files` the test's paths.
CALLS: dict[str, Callable[[Any, dict[str, Path], float], Any]] = {
    "datasets.delete": lambda part, files, t: part.delete("d", timeout=t),
    "datasets.download": lambda part, files, t: part.download("d", files["out"], timeout=t),
    "datasets.get": lambda part, files, t: part.get("d", timeout=t),
    "datasets.list": lambda part, files, t: part.list(timeout=t),
    "datasets.load": lambda part, files, t: part.load("d", timeout=t),
    "datasets.push": lambda part, files, t: part.push("d", files["npz"], timeout=t),
    "datasets.split_indices": lambda part, files, t: part.split_indices("d", "val", timeout=t),
    "datasets.version": lambda part, files, t: part.version("d", timeout=t),
    "datasets.versions": lambda part, files, t: part.versions("d", timeout=t),
    "inference.cluster_stats": lambda part, files, t: part.cluster_stats(timeout=t),
    "inference.explain": lambda part, files, t: part.explain("m", np.zeros((1, 4), np.float32), timeout=t),
    "inference.load": lambda part, files, t: part.load("m", timeout=t),
    "inference.loaded": lambda part, files, t: part.loaded(timeout=t),
    "inference.predict": lambda part, files, t: part.predict("m", np.zeros((1, 4), np.float32), timeout=t),
    "inference.predict_stream": lambda part, files, t: part.predict_stream(
        "m", [np.zeros((1, 4), np.float32)], timeout=t
    ),
    "inference.shadow_results": lambda part, files, t: part.shadow_results("m", timeout=t),
    "inference.stats": lambda part, files, t: part.stats(timeout=t),
    "inference.unload": lambda part, files, t: part.unload("m", timeout=t),
    "job.cancel": lambda part, files, t: part.cancel(timeout=t),
    "job.refresh": lambda part, files, t: part.refresh(timeout=t),
    "job.wait": lambda part, files, t: part.wait(timeout=t),
    "job.watch": lambda part, files, t: part.watch(timeout=t),
    "models.alias": lambda part, files, t: part.alias("m", "prod", timeout=t),
    "models.alias_history": lambda part, files, t: part.alias_history("m", timeout=t),
    "models.aliases": lambda part, files, t: part.aliases("m", timeout=t),
    "models.compare": lambda part, files, t: part.compare("m", 1, 2, timeout=t),
    "models.create": lambda part, files, t: part.create("m", timeout=t),
    "models.delete": lambda part, files, t: part.delete("m", timeout=t),
    "models.delete_alias": lambda part, files, t: part.delete_alias("m", "prod", timeout=t),
    "models.delete_version": lambda part, files, t: part.delete_version("m", 1, timeout=t),
    "models.deploy": lambda part, files, t: part.deploy("m", {1: 100}, timeout=t),
    "models.deployment": lambda part, files, t: part.deployment("m", timeout=t),
    "models.deployments": lambda part, files, t: part.deployments("m", timeout=t),
    "models.download": lambda part, files, t: part.download("m", files["out"], timeout=t),
    "models.export_onnx": lambda part, files, t: part.export_onnx("m", 1, timeout=t),
    "models.get": lambda part, files, t: part.get("m", timeout=t),
    "models.lineage": lambda part, files, t: part.lineage("m", timeout=t),
    "models.list": lambda part, files, t: part.list(timeout=t),
    "models.push": lambda part, files, t: part.push("m", files["onnx"], timeout=t),
    "models.push_batch": lambda part, files, t: part.push_batch([VersionFile("m", files["onnx"])], timeout=t),
    "models.register_ensemble": lambda part, files, t: part.register_ensemble("e", ["m:1", "m:2"], timeout=t),
    "models.rollback": lambda part, files, t: part.rollback("m", timeout=t),
    "models.set_alias": lambda part, files, t: part.set_alias("m", "prod", 1, timeout=t),
    "models.update": lambda part, files, t: part.update("m", timeout=t),
    "models.version": lambda part, files, t: part.version("m", timeout=t),
    "models.versions": lambda part, files, t: part.versions("m", timeout=t),
    "models.watch_changes": lambda part, files, t: part.watch_changes(timeout=t),
    "system.backup": lambda part, files, t: part.backup(files["out"], timeout=t),
    "system.info": lambda part, files, t: part.info(timeout=t),
    "system.verify": lambda part, files, t: part.verify(timeout=t),
    "system.watch": lambda part, files, t: part.watch(timeout=t),
    "training.cancel": lambda part, files, t: part.cancel("j", timeout=t),
    "training.cancel_sweep": lambda part, files, t: part.cancel_sweep("s", timeout=t),
    "training.compare_runs": lambda part, files, t: part.compare_runs(["r", "s"], timeout=t),
    "training.create_experiment": lambda part, files, t: part.create_experiment("e", timeout=t),
    "training.create_run": lambda part, files, t: part.create_run("e", timeout=t),
    "training.delete_experiment": lambda part, files, t: part.delete_experiment("e", timeout=t),
    "training.delete_run": lambda part, files, t: part.delete_run("r", timeout=t),
    "training.download_artifact": lambda part, files, t: part.download_artifact(
        "r", "a.txt", files["out"], timeout=t
    ),
    "training.download_artifacts": lambda part, files, t: part.download_artifacts(
        "r", "", files["out"], timeout=t
    ),
    "training.experiment": lambda part, files, t: part.experiment("e", timeout=t),
    "training.experiments": lambda part, files, t: part.experiments(timeout=t),
    "training.job": lambda part, files, t: part.job("j", timeout=t),
    "training.jobs": lambda part, files, t: part.jobs(timeout=t),
    "training.leaderboard": lambda part, files, t: part.leaderboard("e", "loss", timeout=t),
    "training.list_artifacts": lambda part, files, t: part.list_artifacts("r", timeout=t),
    "training.list_metrics": lambda part, files, t: part.list_metrics("r", timeout=t),
    "training.log_artifact": lambda part, files, t: part.log_artifact("r", files["npz"], timeout=t),
    "training.log_artifacts": lambda part, files, t: part.log_artifacts("r", files["npz"].parent, timeout=t),
    "training.log_dict": lambda part, files, t: part.log_dict("r", {"a": 1}, "a.json", timeout=t),
    "training.log_figure": lambda part, files, t: part.log_figure("r", _Figure(), "a.png", timeout=t),
    "training.log_text": lambda part, files, t: part.log_text("r", "a", "a.txt", timeout=t),
    "training.log_batch": lambda part, files, t: part.log_batch("r", [("loss", 1.0, 1)], timeout=t),
    "training.log_metrics": lambda part, files, t: part.log_metrics("r", {"loss": 1.0}, 1, timeout=t),
    "training.log_metrics_stream": lambda part, files, t: part.log_metrics_stream(
        "r", [(0, {"m": 1.0})], timeout=t
    ),
    "training.log_params": lambda part, files, t: part.log_params("r", {"lr": 0.1}, timeout=t),
    "training.metric_history": lambda part, files, t: part.metric_history("r", "loss", timeout=t),
    "training.register": lambda part, files, t: part.register("j", "m", timeout=t),
    "training.restore_experiment": lambda part, files, t: part.restore_experiment("e", timeout=t),
    "training.restore_run": lambda part, files, t: part.restore_run("r", timeout=t),
    "training.run": lambda part, files, t: part.run("r", timeout=t),
    "training.runs": lambda part, files, t: part.runs(timeout=t),
    "training.start_run": lambda part, files, t: part.start_run("e", timeout=t),
    "training.submit": lambda part, files, t: part.submit({"data": {"dataset": "d"}}, timeout=t),
    "training.submit_sweep": lambda part, files, t: part.submit_sweep({}, timeout=t),
    "training.sweep": lambda part, files, t: part.sweep("s", timeout=t),
    "training.sweeps": lambda part, files, t: part.sweeps(timeout=t),
    "training.update_experiment": lambda part, files, t: part.update_experiment("e", timeout=t),
    "training.update_run": lambda part, files, t: part.update_run("r", timeout=t),
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


def _public_methods(client: Any) -> set[str]:
    parts = {name: part for name, part in vars(client).items() if isinstance(part, Part)}
    parts["job"] = _job(client.training)
    return {
        f"{owner}.{name}"
        for owner, part in parts.items()
        for name, value in vars(type(part)).items()
        if isinstance(value, _CallMethod | _ListingMethod | _StreamMethod)
    }


@pytest.fixture
def files(tmp_path, make_onnx) -> dict[str, Path]:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    return {"onnx": make_onnx("m"), "npz": tmp_path / "d.npz", "out": tmp_path / "out"}


def _nothing_sent(client: tessera.Client, files: dict[str, Path]) -> None:
    assert list(client.models.list()) == [] and list(client.datasets.list()) == []
    assert not files["out"].exists()


def test_every_method_takes_a_timeout_and_is_in_the_rule_s_test(daemon):
    with tessera.Client(daemon.target) as client:
        assert _timeout_methods(client) == set(CALLS) == _public_methods(client)

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
            with pytest.raises(tessera.DeadlineExceeded, match="watch again from seq 1"):
                await anext(aio_client.models.watch_changes(timeout=1e-9))

    asyncio.run(asyncio.wait_for(scenario(), 60))

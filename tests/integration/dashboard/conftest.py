"""Dashboard test helpers: one daemon with a dashboard per module, HTTP calls, tiny training jobs."""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tessera
from tests.conftest import InProcessDaemon, daemon_settings

TRAINING_SETTINGS = {
    "training.cpu_slots": 2,
    "training.threads_per_slot": 1,
    "training.cancel_grace_s": 5,
    "training.resource_interval_s": 0.5,
}


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    port: int,
    path: str,
    headers: dict[str, str | bytes] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> HttpAnswer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def read_events(port: int, path: str, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Every server-sent event of a stream that ends (a finished job's), as {id, event, data}."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        events: list[dict[str, str]] = []
        current: dict[str, str] = {}
        for raw in response:
            line = raw.decode().rstrip("\n")
            if not line:
                if "event" in current:
                    events.append(current)
                    if current["event"] == "end":
                        break
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
        return events
    finally:
        connection.close()


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(
        daemon_settings(tmp_path_factory.mktemp("dashboard") / "data", **TRAINING_SETTINGS)
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(dash: InProcessDaemon) -> Iterator[tessera.Client]:
    with tessera.Client(dash.target, timeout=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def table(client: tessera.Client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    version = client.datasets.push("table", x=x, y=y, splits={"train": 0.75, "val": 0.25})
    return f"table:{version.version}"


def small_spec(dataset: str, **overrides: Any) -> dict[str, Any]:
    spec = {
        "experiment": "dash",
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 2,
        "batch_size": 8,
        "seed": 0,
        "log_every_n_steps": 1,
    }
    spec.update(overrides)
    return spec


def wait_until(condition: Callable[[], Any], timeout: float = 120, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def finished_job(client: tessera.Client, table: str) -> str:
    """A two-epoch job that has succeeded."""
    job = client.training.submit(small_spec(table, register_as={"model": "tiny", "alias": "staging"}))
    job.wait()
    assert job.state == tessera.JobState.SUCCEEDED
    return str(job.id)


# The committed screenshots change only on `make screenshots`; other runs take them elsewhere,
# so a test run leaves the working tree clean.
SCREENSHOTS = (
    Path(__file__).resolve().parents[3] / "docs" / "screenshots"
    if os.environ.get("TESSERA_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "tessera-screenshots"
)

"""Training test helpers: one shared daemon per module, tiny datasets, spec builders, event collection."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tessera.v1 import (
    architecture_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.registry.aliases import move_alias
from tesserad.registry.tables import model_data, put_model_data
from tesserad.store import WriteTxn
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload

TRAINING_SETTINGS = {
    "training.cpu_slots": 2,
    "training.threads_per_slot": 1,
    "training.cancel_grace_s": 5,
    "training.resource_interval_s": 0.2,
}


@pytest.fixture(scope="module")
def training_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(
        daemon_settings(tmp_path_factory.mktemp("training") / "data", **TRAINING_SETTINGS)
    ).start()
    channel = running.channel()
    upload_standard_datasets(channel)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def training(training_daemon: InProcessDaemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(training_daemon.channel())


def upload_dataset(
    channel: grpc.Channel,
    name: str,
    arrays: dict[str, np.ndarray],
    splits: dict[str, list[int]] | None = None,
) -> datasets_pb2.DatasetVersion:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    header = datasets_pb2.UploadDatasetHeader(name=name, format=datasets_pb2.DATASET_FORMAT_NPZ)
    if splits:
        header.splits.indices.splits.extend(
            datasets_pb2.SplitIndices(name=k, indices=v) for k, v in splits.items()
        )
    data = buffer.getvalue()
    requests = [datasets_pb2.UploadDatasetRequest(header=header)] + [
        datasets_pb2.UploadDatasetRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    return datasets_pb2_grpc.DatasetsStub(channel).UploadDataset(iter(requests))


def upload_standard_datasets(channel: grpc.Channel) -> None:
    """Small, learnable datasets for every architecture family, with train/val splits."""
    rng = np.random.default_rng(0)
    n = 96
    split = {"train": list(range(72)), "val": list(range(72, n))}
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    upload_dataset(
        channel, "flat", {"x": x, "y": y, "t": (x[:, :2].sum(1, keepdims=True)).astype(np.float32)}, split
    )
    seq = rng.normal(size=(n, 5, 3)).astype(np.float32)
    upload_dataset(channel, "seq", {"x": seq, "y": (seq[:, :, 0].mean(1) > 0).astype(np.int64)}, split)
    img = rng.normal(size=(n, 1, 6, 6)).astype(np.float32)
    upload_dataset(channel, "img", {"x": img, "y": (img.mean((1, 2, 3)) > 0).astype(np.int64)}, split)
    clip = rng.normal(size=(n, 1, 3, 4, 4, 4)).astype(np.float32)
    upload_dataset(
        channel, "clips", {"x": clip, "y": (clip.mean((1, 2, 3, 4, 5)) > 0).astype(np.int64)}, split
    )


def architecture(family: str, **fields: Any) -> architecture_pb2.Architecture:
    shapes = {"mlp": [6], "lstm": [5, 3], "transformer": [5, 3], "cnn2d": [1, 6, 6], "cnn4d": [1, 3, 4, 4, 4]}
    defaults: dict[str, Any] = {
        "mlp": {"hidden_sizes": [16]},
        "lstm": {"hidden_size": 8},
        "transformer": {"d_model": 8, "num_heads": 2, "num_layers": 1, "dim_feedforward": 16},
        "cnn2d": {"channels": [4]},
        "cnn4d": {"channels": [2], "kernel_size": 3},
    }
    body = getattr(
        architecture_pb2,
        {
            "mlp": "MlpSpec",
            "lstm": "LstmSpec",
            "transformer": "TransformerSpec",
            "cnn2d": "Cnn2dSpec",
            "cnn4d": "Cnn4dSpec",
        }[family],
    )(**{**defaults[family], **fields})
    return architecture_pb2.Architecture(input_shape=shapes[family], output_size=2, **{family: body})


DATASET_OF = {"mlp": "flat", "lstm": "seq", "transformer": "seq", "cnn2d": "img", "cnn4d": "clips"}


def job_spec(family: str = "mlp", **fields: Any) -> job_spec_pb2.JobSpec:
    spec = job_spec_pb2.JobSpec(
        experiment="tests",
        architecture=architecture(family),
        data=job_spec_pb2.DataSpec(dataset={"name": DATASET_OF[family]}),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=0.01),
        epochs=2,
        batch_size=24,
        seed=7,
        log_every_n_steps=1,
    )
    for key, value in fields.items():
        field = spec.DESCRIPTOR.fields_by_name[key]
        if field.message_type is not None:
            getattr(spec, key).CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def stopped_early_spec(**fields: Any) -> job_spec_pb2.JobSpec:
    """An MLP job of 50 epochs that early stopping ends after epoch 2: no val_loss improves by 100,
    so the first epoch's stays the best."""
    early_stopping = job_spec_pb2.EarlyStopping(metric="val_loss", patience=1, min_delta=100.0)
    return job_spec("mlp", **{"epochs": 50, "early_stopping": early_stopping, **fields})


def forget_stopped_early(txn: WriteTxn, job_id: str) -> dict[str, Any]:
    """Leave the ended job's record and its end event as the daemons of store schema 3 stored
    them: without why early stopping ended it, which only the worker's line holds. The end
    event's data."""
    raw = txn.get("jobs", (job_id,))
    assert raw is not None
    record = json.loads(raw)
    del record["data"]["stopped_early"]
    txn.put("jobs", (job_id,), json.dumps(record).encode())
    key, raw = next(iter(txn.scan("job_events", (job_id,), reverse=True, limit=1)))
    end = json.loads(raw)
    del end["data"]["data"]["stopped_early"]
    txn.put("job_events", key, json.dumps(end).encode())
    return dict(end["data"]["data"])


def model_with_aliases(
    registry: registry_pb2_grpc.RegistryStub, daemon: InProcessDaemon, model: str, count: int
) -> None:
    """Upload `model` v1 and give it `count` aliases, held-0000 on: a test helper that writes them
    to the daemon's store in one transaction, each as SetAlias writes it (the registry's
    move_alias), since no RPC sets many at once and a thousand SetAlias transactions were most of
    the time of the tests that need a model at its alias cap."""
    artifact = onnx_identity()
    upload(registry, onnx_header(model, artifact), artifact)
    with daemon.daemon._store.write() as txn:
        fields = model_data(txn, model)
        for i in range(count):
            move_alias(txn, fields, f"held-{i:04}", 1, "model_with_aliases", None)
        put_model_data(txn, fields)


def submit(training: training_pb2_grpc.TrainingStub, spec: job_spec_pb2.JobSpec) -> training_pb2.Job:
    return training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))


def follow(
    training: training_pb2_grpc.TrainingStub, job_id: str, from_seq: int = 0
) -> list[training_pb2.JobEvent]:
    """Every event from from_seq until the job ends."""
    return list(
        training.WatchJob(training_pb2.WatchJobRequest(job_id=job_id, from_seq=from_seq), timeout=120)
    )


def states(events: list[training_pb2.JobEvent]) -> list[int]:
    return [e.state.state for e in events if e.WhichOneof("event") == "state"]


def of_kind(events: list[training_pb2.JobEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def wait_sweep(
    training: training_pb2_grpc.TrainingStub, sweep_id: str, timeout_s: float = 120
) -> training_pb2.Sweep:
    """The sweep once it is no longer running; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sweep = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        if sweep.state != training_pb2.SWEEP_STATE_RUNNING:
            return sweep
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} did not end")


def sweep_values(
    path: str, *values: str, when: tuple[str, list[str]] | None = None
) -> training_pb2.SweepParameter:
    """A parameter taking `values`; with `when`, only where another parameter takes one of its values."""
    parameter = training_pb2.SweepParameter(path=path, values=training_pb2.SweepValues(values=list(values)))
    if when:
        parameter.when.CopyFrom(training_pb2.SweepCondition(path=when[0], values=when[1]))
    return parameter


class Restarts:
    """Starts the next daemon on the data directory a crash test's `tesserad serve` child (its
    --data-dir) was killed or stopped on, in this process: what such a test checks of the restart
    is what a daemon does with the store it finds, which needs no process of its own, and a child
    (with the fork server of its first job) imports torch twice, seconds on two busy cores. One
    CPU slot and one thread, as the children have, unless `settings` say otherwise."""

    def __init__(self) -> None:
        self.running: list[InProcessDaemon] = []

    def __call__(self, data_dir: Path, **settings: Any) -> InProcessDaemon:
        values = {"training.cpu_slots": 1, "training.threads_per_slot": 1, **settings}
        self.running.append(InProcessDaemon(daemon_settings(data_dir, **values)).start())
        return self.running[-1]

    def stop(self, daemon: InProcessDaemon) -> None:
        """Stop `daemon` before the test ends (to open its store)."""
        self.running.remove(daemon)
        daemon.stop()


@pytest.fixture
def restart_daemon(caplog: pytest.LogCaptureFixture) -> Iterator[Restarts]:
    """Restarts; the daemons' log records are captured from before their start: read them with
    `logged`."""
    caplog.set_level(logging.INFO, logger="tesserad")
    restarts = Restarts()
    yield restarts
    for daemon in restarts.running:
        daemon.stop()


def logged(caplog: pytest.LogCaptureFixture, message: str) -> Any:
    """The first captured log record `message` (its extra fields are attributes); fails naming
    those there are."""
    found = [record for record in caplog.records if record.getMessage() == message]
    assert found, f"no log record {message!r}; there are: {[r.getMessage() for r in caplog.records]}"
    return found[0]

"""A data directory whose disk fills up: every write that finds no room is RESOURCE_EXHAUSTED
saying so, leaves nothing half-written, and works again once space is freed, without a restart.

The data directory lies on a small tmpfs, so the daemon meets a real ENOSPC from the kernel on
its own code paths; where mounting is not permitted (not root, no CAP_SYS_ADMIN) these tests
skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import tessera
from tessera.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.config import Settings
from tesserad.errors import ResourceExhausted
from tesserad.store import database
from tesserad.training import jobs as jobs_module
from tesserad.training import sweeps as sweeps_module
from tesserad.training.job_records import ENDED, decode_job
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import (
    mlp_architecture,
    mlp_weights,
    rpc_error,
    safetensors_header,
    stored_blobs,
    upload,
    upload_requests,
)
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    architecture,
    follow,
    job_spec,
    states,
    sweep_values,
    upload_dataset,
    wait_sweep,
)
from tests.tmpfs import tmpfs

FULL = "the disk under tesserad's data directory is full"


def disk_settings(data_dir: Path, **overrides: Any) -> Settings:
    """daemon_settings with the product's default durability: the store's fsyncs meet the full
    disk too."""
    return daemon_settings(data_dir, **{"store.durability": "full", **overrides})


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted after the test."""
    with tmpfs(tmp_path / "disk", "size=16m") as mount_point:
        yield mount_point


@pytest.fixture
def daemon(disk: Path) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(disk_settings(disk / "data", **TRAINING_SETTINGS)).start()
    yield running
    running.stop()


def fill(disk: Path, leave: int) -> Path:
    """A file taking all the disk's free space but `leave` bytes; delete it to free them."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    with filler.open("wb") as file:
        file.write(b"\0" * size)
    return filler


def fill_up(disk: Path) -> Path:
    """A file taking every free byte of the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def upload_flat(channel: grpc.Channel) -> None:
    """Dataset "flat": 48 rows of 6 features and a binary label, for the jobs that fill the store."""
    x = np.random.default_rng(0).normal(size=(48, 6)).astype(np.float32)
    upload_dataset(channel, "flat", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})


def grid_sweep(
    base: job_spec_pb2.JobSpec, parameter: training_pb2.SweepParameter, max_concurrent: int
) -> training_pb2.SweepSpec:
    """A grid sweep over one parameter of `base`, ranked by train_loss."""
    return training_pb2.SweepSpec(
        base=base,
        strategy=training_pb2.SWEEP_STRATEGY_GRID,
        parameters=[parameter],
        max_concurrent=max_concurrent,
        metric="train_loss",
    )


def dataset_requests(name: str, data: bytes) -> list[datasets_pb2.UploadDatasetRequest]:
    header = datasets_pb2.UploadDatasetHeader(
        name=name,
        format=datasets_pb2.DATASET_FORMAT_NPZ,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    return [datasets_pb2.UploadDatasetRequest(header=header)] + [
        datasets_pb2.UploadDatasetRequest(chunk=chunk) for chunk in chunks
    ]


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_a_dataset_upload_onto_a_full_disk_is_resource_exhausted_and_leaves_nothing(daemon, disk):
    datasets = datasets_pb2_grpc.DatasetsStub(daemon.channel())
    data = npz(x=np.zeros(800_000, np.float32))  # 3.05 MiB
    filler = fill(disk, leave=1 << 20)

    error = rpc_error(datasets.UploadDataset, iter(dataset_requests("big", data)), timeout=60)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details() and "the blob needs 3.05 MiB" in error.details(), error.details()
    assert stored_blobs(disk / "data") == []
    assert not datasets.ListDatasets(datasets_pb2.ListDatasetsRequest()).datasets

    filler.unlink()
    version = datasets.UploadDataset(iter(dataset_requests("big", data)), timeout=60)
    assert version.size_bytes == len(data)


def test_a_run_artifact_upload_onto_a_full_disk_is_resource_exhausted_and_leaves_nothing(daemon, disk):
    training = training_pb2_grpc.TrainingStub(daemon.channel())
    run_id = training.CreateRun(training_pb2.CreateRunRequest(experiment="full")).run_id
    data = os.urandom(3 << 20)
    header = training_pb2.UploadRunArtifactHeader(
        run_id=run_id, path="model.bin", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )
    requests = [training_pb2.UploadRunArtifactRequest(header=header)] + [
        training_pb2.UploadRunArtifactRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    filler = fill(disk, leave=1 << 20)

    error = rpc_error(training.UploadRunArtifact, iter(requests), timeout=60)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details() and "the blob needs 3 MiB" in error.details(), error.details()
    assert stored_blobs(disk / "data") == []
    listing = training.ListRunArtifacts(training_pb2.ListRunArtifactsRequest(run_id=run_id))
    assert not listing.artifacts

    filler.unlink()
    assert training.UploadRunArtifact(iter(requests), timeout=60).size_bytes == len(data)


def test_a_backup_whose_store_copy_does_not_fit_is_resource_exhausted_and_leaves_nothing(daemon, disk):
    training = training_pb2_grpc.TrainingStub(daemon.channel())
    run_id = training.CreateRun(training_pb2.CreateRunRequest(experiment="full")).run_id
    points = [training_pb2.MetricPoint(key="loss", value=float(step), step=step) for step in range(500)]
    training.LogMetrics(training_pb2.LogMetricsRequest(run_id=run_id, points=points))
    system = system_pb2_grpc.SystemStub(daemon.channel())
    filler = fill_up(disk)

    error = rpc_error(lambda: list(system.Backup(system_pb2.BackupRequest(), timeout=60)))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details() and "the backup's copy of the store" in error.details(), error.details()
    assert stored_blobs(disk / "data") == []

    filler.unlink()
    assert b"".join(chunk.data for chunk in system.Backup(system_pb2.BackupRequest(), timeout=60))


def test_a_model_upload_onto_a_full_disk_is_resource_exhausted_and_leaves_nothing(daemon, disk):
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    weights = mlp_weights(hidden=65_536)  # 1.75 MiB
    header = safetensors_header("big", weights, architecture=mlp_architecture(65_536))
    filler = fill(disk, leave=1 << 20)

    error = rpc_error(registry.UploadVersion, upload_requests(header, weights), timeout=60)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details(), error.details()
    assert stored_blobs(disk / "data") == []
    assert not registry.ListModels(registry_pb2.ListModelsRequest()).models

    filler.unlink()
    assert upload(registry, header, weights).version == 1


def test_a_small_upload_stored_in_one_step_onto_a_full_disk_is_resource_exhausted(daemon, disk):
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    weights = mlp_weights(hidden=20_000)  # 547 KiB, sent in one message
    header = safetensors_header("inline", weights, architecture=mlp_architecture(20_000))
    request = registry_pb2.UploadVersionInlineRequest(header=header, artifact=weights)
    filler = fill(disk, leave=256 << 10)

    error = rpc_error(registry.UploadVersionInline, request, timeout=60)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details() and "the blob needs 547 KiB" in error.details(), error.details()
    assert stored_blobs(disk / "data") == []

    filler.unlink()
    assert registry.UploadVersionInline(request, timeout=60).version == 1


def first_refused_create(registry: registry_pb2_grpc.RegistryStub) -> grpc.RpcError:
    """The error of the first of many CreateModel calls the store refuses."""
    for index in range(200):
        try:
            registry.CreateModel(registry_pb2.CreateModelRequest(name=f"m{index}", description="x" * 4000))
        except grpc.RpcError as error:
            return error
    raise AssertionError("every write fitted: the store never filled up")


@pytest.mark.parametrize("left", [0, 12 << 10], ids=["no-block-left", "three-blocks-left"])
def test_a_database_write_onto_a_full_disk_is_resource_exhausted(daemon, disk, left, caplog):
    # With a few blocks left, LMDB's write of several pages is cut short, which it reports as
    # EIO, not ENOSPC (it was INTERNAL).
    caplog.set_level(logging.WARNING, logger="tesserad.audit")
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    filler = fill_up(disk) if left == 0 else fill(disk, leave=left)

    error = first_refused_create(registry)  # once the database's file has to grow

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details() and "writing to the database failed" in error.details(), error.details()
    # The operator hears of it too, once however many writes are refused.
    first_refused_create(registry)
    [warning] = [r for r in caplog.records if r.name == "tesserad.audit"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == "write refused: no room on the data directory's disk"
    assert warning.__dict__["rpc"] == "tessera.v1.Registry/CreateModel"

    filler.unlink()
    assert registry.CreateModel(registry_pb2.CreateModelRequest(name="after")).name == "after"


def test_a_job_whose_checkpoint_does_not_fit_fails_and_the_daemon_serves_on(daemon, disk):
    channel = daemon.channel()
    upload_flat(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    # About 1 MiB of weights (and the optimiser's state besides) in each checkpoint.
    spec = job_spec(
        "mlp",
        architecture=architecture("mlp", hidden_sizes=[512, 512]),
        epochs=2,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1),
    )
    filler = fill(disk, leave=512 << 10)

    job = training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
    errors = [e.error for e in follow(training, job.job_id) if e.WhichOneof("event") == "error"]

    ended = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
    assert ended.state == training_pb2.JOB_STATE_FAILED
    assert [error.kind for error in errors] == ["storage"]
    assert "storing the checkpoint of epoch 1" in ended.error, ended.error
    assert FULL in ended.error, ended.error
    assert not [name for name in stored_blobs(disk / "data") if name.startswith("tmp/")]

    filler.unlink()
    again = training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
    follow(training, again.job_id)
    assert (
        training.GetJob(training_pb2.GetJobRequest(job_id=again.job_id)).state
        == training_pb2.JOB_STATE_SUCCEEDED
    )


def test_an_export_that_does_not_fit_is_resource_exhausted_and_adds_no_version(daemon, disk):
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    weights = mlp_weights(hidden=50_000)  # 1.3 MiB
    upload(registry, safetensors_header("wide", weights, architecture=mlp_architecture(50_000)), weights)
    filler = fill(disk, leave=512 << 10)

    request = registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model="wide", version=1))
    error = rpc_error(registry.ExportOnnx, request, timeout=120)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert FULL in error.details(), error.details()
    assert not [name for name in stored_blobs(disk / "data") if name.startswith("tmp/")]
    versions = registry.ListVersions(registry_pb2.ListVersionsRequest(model="wide")).versions
    assert [v.version for v in versions] == [1]

    filler.unlink()
    assert registry.ExportOnnx(request, timeout=120).version.version == 2


def test_an_export_with_room_for_its_file_once_but_not_twice_succeeds(daemon, disk):
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    for name, seed in (("wide", 0), ("wider", 1)):
        weights = mlp_weights(hidden=50_000, seed=seed)  # 1.3 MiB
        upload(registry, safetensors_header(name, weights, architecture=mlp_architecture(50_000)), weights)
    first = registry.ExportOnnx(
        registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model="wide", version=1)), timeout=120
    )
    size = first.version.size_bytes
    # Room for the ONNX file and the registration's pages, not for a second copy of the file.
    filler = fill(disk, leave=size + size // 2)

    request = registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model="wider", version=1))
    exported = registry.ExportOnnx(request, timeout=120)

    assert exported.version.version == 2 and exported.version.size_bytes == size
    assert not [name for name in stored_blobs(disk / "data") if name.startswith("tmp/")]
    digest = exported.version.sha256
    blob = disk / "data" / "blobs" / "sha256" / digest[:2] / digest[2:]
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    filler.unlink()


def test_a_full_database_map_is_resource_exhausted_naming_its_setting_and_deletes_make_room(tmp_path):
    running = InProcessDaemon(disk_settings(tmp_path / "data", **{"store.map_size": "256KiB"})).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(running.channel())

        error = first_refused_create(registry)

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "store.map_size = 256 KiB" in error.details(), error.details()
        assert "TESSERA_STORE_MAP_SIZE" in error.details(), error.details()
        for model in registry.ListModels(registry_pb2.ListModelsRequest()).models:
            registry.DeleteModel(registry_pb2.DeleteModelRequest(name=model.name))
        assert registry.CreateModel(registry_pb2.CreateModelRequest(name="after", description="x" * 4000))
    finally:
        running.stop()


@pytest.mark.parametrize("lock_file", [False, True], ids=["fresh", "lock-file-written"])
def test_a_start_on_a_full_disk_fails_saying_so_and_starts_once_space_is_freed(spawn_daemon, disk, lock_file):
    data_dir = disk / "data"
    if lock_file:  # the lock file fits: the database's own files are next
        data_dir.mkdir()
        (data_dir / "tesserad.lock").write_text("1\n")
    filler = fill_up(disk)
    args = ("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir))

    refused = spawn_daemon(*args)

    assert refused.process.wait(60) == 1, refused.output()
    assert "tesserad cannot start: " + FULL in refused.output()

    filler.unlink()
    assert spawn_daemon(*args).wait_serving()


def follow_resuming(training: training_pb2_grpc.TrainingStub, job_id: str) -> list[training_pb2.JobEvent]:
    """Every event until the job ends, watching again where a watcher fell behind."""
    events: list[training_pb2.JobEvent] = []
    while True:
        request = training_pb2.WatchJobRequest(job_id=job_id, from_seq=events[-1].seq + 1 if events else 0)
        try:
            for event in training.WatchJob(request, timeout=120):
                events.append(event)
            return events
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise


@pytest.mark.parametrize("checkpoints", [False, True], ids=["events", "checkpoints"])
def test_a_job_that_fills_the_database_map_ends_failed_and_stays_so_after_a_restart(tmp_path, checkpoints):
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS, **{"store.map_size": "512KiB"})
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        # A step event and its metric points at every one of 48 steps an epoch (and a checkpoint
        # each epoch): far more than fits.
        spec = job_spec("mlp", epochs=1000, batch_size=1)
        if checkpoints:
            spec.checkpoints.CopyFrom(job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1))

        job = training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
        events = follow_resuming(training, job.job_id)

        ended = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
        assert ended.state == training_pb2.JOB_STATE_FAILED, ended
        assert "store.map_size = 512 KiB" in ended.error, ended.error
        assert [e.error.kind for e in events if e.WhichOneof("event") == "error"] == ["storage"]
        assert events[-1].state.state == training_pb2.JOB_STATE_FAILED
    finally:
        running.stop()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        after = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
        assert after.state == training_pb2.JOB_STATE_FAILED, after
        assert after.error == ended.error
    finally:
        restarted.stop()


def test_a_sweep_whose_trials_fill_the_database_map_ends_and_stays_ended_after_a_restart(tmp_path):
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS, **{"store.map_size": "512KiB"})
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        spec = grid_sweep(
            job_spec("mlp", epochs=1000, batch_size=1),
            sweep_values("optimizer.lr", "0.001", "0.05"),
            max_concurrent=1,
        )

        sweep = wait_sweep(
            training, training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec)).sweep_id
        )

        assert sweep.state == training_pb2.SWEEP_STATE_FAILED, sweep
        first = sweep.trials[0]
        assert first.state == training_pb2.JOB_STATE_FAILED, sweep
        job = training.GetJob(training_pb2.GetJobRequest(job_id=first.job_id))
        assert "store.map_size = 512 KiB" in job.error, job.error
    finally:
        running.stop()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        after = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep.sweep_id))
        assert after.state == training_pb2.SWEEP_STATE_FAILED, after
        assert [t.state for t in after.trials] == [t.state for t in sweep.trials]
    finally:
        restarted.stop()


def test_a_sweep_whose_end_the_store_refuses_shows_it_ended_until_a_restart_stores_it(tmp_path, monkeypatch):
    # The sweep left the running ones before its end was written: once the store refused that
    # write, GetSweep read the stored record, still RUNNING, and the trials it had not written
    # stayed noted as unsaved for good, though nothing would write them again.
    encode_sweep = sweeps_module.encode_sweep

    def refuse_ends(sweep):
        """The store refuses the write of the sweep's end (a disk full as well)."""
        if sweep.state != "running":
            raise ResourceExhausted("the store is full")
        return encode_sweep(sweep)

    made = []
    start = sweeps_module.Sweeps.start

    def kept(sweeps):
        made.append(sweeps)
        start(sweeps)

    monkeypatch.setattr(sweeps_module, "encode_sweep", refuse_ends)
    monkeypatch.setattr(sweeps_module.Sweeps, "start", kept)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        spec = grid_sweep(
            job_spec("mlp", epochs=1), sweep_values("optimizer.lr", "0.001", "0.05"), max_concurrent=2
        )
        sweep_id = training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec)).sweep_id
        for trial in training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id)).trials:
            assert states(follow(training, trial.job_id))[-1] == training_pb2.JOB_STATE_SUCCEEDED

        shown = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert shown.state == training_pb2.SWEEP_STATE_SUCCEEDED, shown
        with pytest.raises(grpc.RpcError) as info:
            training.CancelSweep(training_pb2.CancelSweepRequest(sweep_id=sweep_id))
        assert info.value.details() == f"sweep {sweep_id} has already ended (succeeded)"
        assert made[0]._unsaved == {}
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        after = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert after.state == training_pb2.SWEEP_STATE_SUCCEEDED, after
        assert [(t.job_id, t.state, t.metric) for t in after.trials] == [
            (t.job_id, t.state, t.metric) for t in shown.trials
        ]
        assert after.best_job_id == shown.best_job_id
    finally:
        restarted.stop()


def test_a_job_whose_end_does_not_fit_either_shows_it_ended_until_a_restart(tmp_path, monkeypatch):
    submit = database.Store.submit

    def refuse_reserved(store, work, *, reserved=False):
        """The store refuses even the writes its reserve is for (a disk full as well)."""

        def refused(_txn):
            raise ResourceExhausted("the store is full")

        return submit(store, refused if reserved else work)

    monkeypatch.setattr(database.Store, "submit", refuse_reserved)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS, **{"store.map_size": "512KiB"})
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)

        job = training.SubmitJob(
            training_pb2.SubmitJobRequest(spec=job_spec("mlp", epochs=1000, batch_size=1))
        )
        events = follow_resuming(training, job.job_id)

        assert events[-1].state.state == training_pb2.JOB_STATE_FAILED
        ended = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
        assert ended.state == training_pb2.JOB_STATE_FAILED, ended
        listed = training.ListJobs(training_pb2.ListJobsRequest()).jobs
        assert [j.state for j in listed] == [training_pb2.JOB_STATE_FAILED]
    finally:
        running.stop()


def test_a_sweep_cancel_whose_trials_ends_the_store_refuses_shows_them_ended_until_a_restart(
    tmp_path, monkeypatch
):
    # The queued trials' ends share one commit: each is still its own write, refused alone and
    # leaving its job as stored, and shown ended (to watchers too) until the next start.
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        spec = grid_sweep(
            job_spec("mlp", epochs=0, max_steps=1_000_000),
            sweep_values("seed", *(str(i) for i in range(6))),
            max_concurrent=6,
        )
        sweep = training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec))
        first_queued = sweep.trials[2].job_id  # the first two run (2 CPU slots), the others wait
        submit = database.Store.submit

        def refuse_reserved(store, work, *, reserved=False):
            """The store refuses even the writes its reserve is for (a disk full as well)."""

            def refused(_txn):
                raise ResourceExhausted("the store is full")

            return submit(store, refused if reserved else work)

        watch = training.WatchJob(training_pb2.WatchJobRequest(job_id=first_queued), timeout=60)
        first = next(watch)  # replayed once the watcher is subscribed
        monkeypatch.setattr(database.Store, "submit", refuse_reserved)
        cancelled = training.CancelSweep(training_pb2.CancelSweepRequest(sweep_id=sweep.sweep_id))
        assert cancelled.state == training_pb2.SWEEP_STATE_CANCELLED
        # Ended in the queue (a trial a running one's stop let start first ends as it stops).
        ended = [t.job_id for t in cancelled.trials[2:] if t.state == training_pb2.JOB_STATE_CANCELLED]
        assert first_queued in ended
        for job_id in ended:
            assert training.GetJob(training_pb2.GetJobRequest(job_id=job_id)).state == (
                training_pb2.JOB_STATE_CANCELLED
            )
        assert states([first, *watch])[-1] == training_pb2.JOB_STATE_CANCELLED
        with running.daemon._store.read() as txn:
            stored = [decode_job(txn.get("jobs", (job_id,))).state for job_id in ended]
        assert "cancelled" not in stored
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        # The sweep was stored CANCELLED: its start cancels the trials' jobs it finds re-queued.
        assert wait_sweep(training, sweep.sweep_id).state == training_pb2.SWEEP_STATE_CANCELLED
        for trial in sweep.trials:
            assert states(follow(training, trial.job_id))[-1] == training_pb2.JOB_STATE_CANCELLED
    finally:
        restarted.stop()


def refuse_job_ends(monkeypatch, trial_number: int) -> None:
    """The store refuses the writes that store the end of the job of a sweep's trial
    `trial_number` (a disk full as well), and none other: its trial's row takes the end."""
    submit = database.Store.submit

    class JobEndRefused:
        def __init__(self, txn):
            self._txn = txn

        def __getattr__(self, name):
            return getattr(self._txn, name)

        def put(self, table, key, value, **kwargs):
            if table == "jobs":
                job = decode_job(value)
                if (
                    job.sweep_id
                    and job.state in ENDED
                    and job.config["run_name"].endswith(f"-{trial_number}")
                ):
                    raise ResourceExhausted("the store is full")
            return self._txn.put(table, key, value, **kwargs)

    def refusing(store, work, *, reserved=False):
        return submit(store, lambda txn: work(JobEndRefused(txn)), reserved=reserved)

    monkeypatch.setattr(database.Store, "submit", refusing)


def queued_trial_cancelled(training, spec):
    """The id of a sweep of `spec` whose trial 0 was cancelled in the queue, behind two jobs that
    held both CPU slots; the sweep's other trials start once those are cancelled, here."""
    blockers = [
        training.SubmitJob(training_pb2.SubmitJobRequest(spec=job_spec("mlp", epochs=0, max_steps=1_000_000)))
        for _ in range(2)
    ]
    for blocker in blockers:
        wait_running(training, blocker.job_id)
    sweep_id = training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec)).sweep_id
    first = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id)).trials[0].job_id
    assert training.GetJob(training_pb2.GetJobRequest(job_id=first)).state == training_pb2.JOB_STATE_QUEUED
    training.CancelJob(training_pb2.CancelJobRequest(job_id=first))
    for blocker in blockers:
        training.CancelJob(training_pb2.CancelJobRequest(job_id=blocker.job_id))
    return sweep_id


def wait_running(training, job_id):
    for event in training.WatchJob(training_pb2.WatchJobRequest(job_id=job_id), timeout=60):
        if event.WhichOneof("event") == "state" and event.state.state == training_pb2.JOB_STATE_RUNNING:
            return
    raise AssertionError(f"job {job_id} ended before it ran")


def test_an_ended_sweeps_trial_whose_jobs_end_the_store_refused_is_not_run_again(tmp_path, monkeypatch):
    # The trial's row holds its job's end, the job's own record not: the next start re-queued the
    # job, which trained again, a trial of a sweep that had ended.
    refuse_job_ends(monkeypatch, 0)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        x = np.random.default_rng(0).normal(size=(48, 6)).astype(np.float32)
        upload_dataset(channel, "flat", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
        training = training_pb2_grpc.TrainingStub(channel)
        spec = training_pb2.SweepSpec(
            base=job_spec("mlp", epochs=1),
            strategy=training_pb2.SWEEP_STRATEGY_GRID,
            parameters=[sweep_values("seed", "1", "2")],
            max_concurrent=2,
            metric="train_loss",
        )
        sweep_id = queued_trial_cancelled(training, spec)
        shown = wait_sweep(training, sweep_id)
        assert shown.state == training_pb2.SWEEP_STATE_SUCCEEDED, shown
        assert [t.state for t in shown.trials] == [
            training_pb2.JOB_STATE_CANCELLED,
            training_pb2.JOB_STATE_SUCCEEDED,
        ]
        refused = shown.trials[0].job_id
        with running.daemon._store.read() as txn:
            assert decode_job(txn.get("jobs", (refused,))).state == "queued"
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        assert states(follow(training, refused))[-1] == training_pb2.JOB_STATE_CANCELLED
        after = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert after.state == training_pb2.SWEEP_STATE_SUCCEEDED, after
        assert [(t.job_id, t.state, t.metric) for t in after.trials] == [
            (t.job_id, t.state, t.metric) for t in shown.trials
        ]
    finally:
        restarted.stop()


def test_a_running_sweeps_trial_whose_jobs_end_the_store_refused_keeps_its_end(tmp_path, monkeypatch):
    # The next start re-queued the ended trial's job: it trained again, and its end (or its
    # epochs' metric) overwrote the trial's, which the sweep had weighed already.
    refuse_job_ends(monkeypatch, 0)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        x = np.random.default_rng(0).normal(size=(48, 6)).astype(np.float32)
        upload_dataset(channel, "flat", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
        training = training_pb2_grpc.TrainingStub(channel)
        spec = training_pb2.SweepSpec(
            base=job_spec("mlp", epochs=0),
            strategy=training_pb2.SWEEP_STRATEGY_GRID,
            parameters=[sweep_values("max_steps", "4", "1000000")],
            max_concurrent=2,
            metric="train_loss",
        )
        sweep_id = queued_trial_cancelled(training, spec)
        shown = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        wait_running(training, shown.trials[1].job_id)
        assert shown.state == training_pb2.SWEEP_STATE_RUNNING, shown
        assert shown.trials[0].state == training_pb2.JOB_STATE_CANCELLED, shown
        refused = shown.trials[0].job_id
        with running.daemon._store.read() as txn:
            assert decode_job(txn.get("jobs", (refused,))).state == "queued"
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        assert states(follow(training, refused))[-1] == training_pb2.JOB_STATE_CANCELLED
        after = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert after.state == training_pb2.SWEEP_STATE_RUNNING, after
        assert after.trials[0].state == training_pb2.JOB_STATE_CANCELLED, after
        training.CancelSweep(training_pb2.CancelSweepRequest(sweep_id=sweep_id))
        assert wait_sweep(training, sweep_id).trials[0].state == training_pb2.JOB_STATE_CANCELLED
    finally:
        restarted.stop()


def test_a_running_sweeps_failed_trial_whose_jobs_end_the_store_refused_stays_failed(tmp_path, monkeypatch):
    # Its job, re-queued at the next start, is cancelled there: that end is the job's, not the
    # trial's, whose row holds the failure the sweep weighed.
    refuse_job_ends(monkeypatch, 0)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        spec = grid_sweep(
            job_spec("mlp", epochs=0, max_steps=1_000_000), sweep_values("seed", "1", "2"), max_concurrent=1
        )
        sweep_id = training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec)).sweep_id
        failed = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id)).trials[0].job_id
        kill_workers(running, training, failed)
        assert states(follow(training, failed))[-1] == training_pb2.JOB_STATE_FAILED
        shown = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert shown.state == training_pb2.SWEEP_STATE_RUNNING, shown
        assert shown.trials[0].state == training_pb2.JOB_STATE_FAILED, shown
        wait_running(training, shown.trials[1].job_id)
        with running.daemon._store.read() as txn:
            assert decode_job(txn.get("jobs", (failed,))).state == "running"
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        # Whether the start cancelled it queued or running, its job can end only so.
        assert states(follow(training, failed))[-1] == training_pb2.JOB_STATE_CANCELLED
        after = training.GetSweep(training_pb2.GetSweepRequest(sweep_id=sweep_id))
        assert after.state == training_pb2.SWEEP_STATE_RUNNING, after
        assert after.trials[0].state == training_pb2.JOB_STATE_FAILED, after
        training.CancelSweep(training_pb2.CancelSweepRequest(sweep_id=sweep_id))
        assert wait_sweep(training, sweep_id).trials[0].state == training_pb2.JOB_STATE_FAILED
    finally:
        restarted.stop()


def kill_workers(running: InProcessDaemon, training, job_id: str) -> None:
    """SIGKILL the job's worker processes, as its daemon holds them, once they train (a step event
    of theirs is out: their supervisor holds them from before their first message)."""
    stream = training.WatchJob(training_pb2.WatchJobRequest(job_id=job_id), timeout=60)
    try:
        if not any(event.WhichOneof("event") == "step" for event in stream):
            raise AssertionError(f"job {job_id} ended before its first step")
    finally:
        stream.cancel()
    for process in running.daemon.training._running[job_id].processes:
        process.kill()


def test_a_cancelled_sweeps_job_its_trials_rows_never_named_is_cancelled_after_a_restart(
    tmp_path, monkeypatch
):
    # Submitted, its id never written to its trial's row, its cancelled end refused as well: the
    # start looked for the cancelled sweep's jobs in its rows only, and the job ran on.
    encode_trial = sweeps_module.encode_trial

    def refuse_job_ids(trial):
        """The store refuses the write of the trials' job ids (a disk full as well)."""
        if trial.job_id:
            raise ResourceExhausted("the store is full")
        return encode_trial(trial)

    refuse_job_ends(monkeypatch, 1)
    monkeypatch.setattr(sweeps_module, "encode_trial", refuse_job_ids)
    settings = disk_settings(tmp_path / "data", **TRAINING_SETTINGS)
    running = InProcessDaemon(settings).start()
    try:
        channel = running.channel()
        x = np.random.default_rng(0).normal(size=(48, 6)).astype(np.float32)
        upload_dataset(channel, "flat", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
        training = training_pb2_grpc.TrainingStub(channel)
        blockers = [
            training.SubmitJob(
                training_pb2.SubmitJobRequest(spec=job_spec("mlp", epochs=0, max_steps=1_000_000))
            )
            for _ in range(2)
        ]
        for blocker in blockers:
            wait_running(training, blocker.job_id)
        spec = training_pb2.SweepSpec(
            base=job_spec("mlp", epochs=0, max_steps=4),
            strategy=training_pb2.SWEEP_STRATEGY_GRID,
            parameters=[sweep_values("seed", "1", "2")],
            max_concurrent=2,
            metric="train_loss",
        )
        with pytest.raises(grpc.RpcError) as info:
            training.SubmitSweep(training_pb2.SubmitSweepRequest(spec=spec))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (sweep,) = training.ListSweeps(training_pb2.ListSweepsRequest()).sweeps
        orphan = sweep.trials[1].job_id
        with pytest.raises(grpc.RpcError) as info:
            training.CancelSweep(training_pb2.CancelSweepRequest(sweep_id=sweep.sweep_id))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for blocker in blockers:
            training.CancelJob(training_pb2.CancelJobRequest(job_id=blocker.job_id))
        with running.daemon._store.read() as txn:
            assert decode_job(txn.get("jobs", (orphan,))).state == "queued"
            stored = sweeps_module.read_sweep(txn, sweep.sweep_id, txn.get("sweeps", (sweep.sweep_id,)))
        assert stored.state == "cancelled"
        assert [t.job_id for t in stored.trials] == ["", ""]
    finally:
        running.stop()
    monkeypatch.undo()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        assert states(follow(training, orphan))[-1] == training_pb2.JOB_STATE_CANCELLED
        assert wait_sweep(training, sweep.sweep_id).state == training_pb2.SWEEP_STATE_CANCELLED
    finally:
        restarted.stop()


def test_a_checkpoint_whose_record_the_store_refuses_leaves_no_blob_behind(tmp_path, monkeypatch):
    hold_blob = jobs_module.hold_blob

    def refuse_checkpoints(txn, sha256, holder):
        """The store refuses the write that would record the checkpoint (a full disk or map)."""
        if holder.endswith(":checkpoint"):
            raise ResourceExhausted("the store is full")
        hold_blob(txn, sha256, holder)

    monkeypatch.setattr(jobs_module, "hold_blob", refuse_checkpoints)
    data_dir = tmp_path / "data"
    running = InProcessDaemon(disk_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        channel = running.channel()
        upload_flat(channel)
        before = stored_blobs(data_dir)
        training = training_pb2_grpc.TrainingStub(channel)
        job = training.SubmitJob(training_pb2.SubmitJobRequest(spec=job_spec("mlp", epochs=3)))
        events = follow_resuming(training, job.job_id)
        assert [e.error.kind for e in events if e.WhichOneof("event") == "error"] == ["storage"]
        # Nothing holds the checkpoint's blob: it went with the failed write, not at the next
        # start, so the space it took is free for the user making room.
        assert stored_blobs(data_dir) == before
    finally:
        running.stop()


METRIC_POINTS = 200  # per batch of a metric stream, one key, consecutive steps
METRIC_BATCHES = 400  # about 80,000 points: far more than the room the tests leave


def metric_batch(run_id: str, index: int) -> training_pb2.LogMetricsRequest:
    steps = range(index * METRIC_POINTS, (index + 1) * METRIC_POINTS)
    points = [training_pb2.MetricPoint(key="loss", value=float(step), step=step) for step in steps]
    return training_pb2.LogMetricsRequest(run_id=run_id, points=points)


def refused_metric_stream(training: training_pb2_grpc.TrainingStub, run_id: str) -> tuple[grpc.RpcError, int]:
    """The error of a metric stream the store cannot hold, checked to say what it stored and to
    have stored exactly that, and the batches it stored."""
    requests = [metric_batch(run_id, i) for i in range(METRIC_BATCHES)]
    error = rpc_error(training.LogMetricsStream, iter(requests), timeout=60)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    trailers = dict(error.trailing_metadata())
    stored = int(trailers["tessera-stored-batches"])
    assert 0 <= stored < METRIC_BATCHES
    assert trailers["tessera-stored-points"] == str(stored * METRIC_POINTS)
    assert f"resend from batch {stored}" in error.details(), error.details()
    # No part of a batch after them: the points, the summary and the history's buckets agree.
    last = stored * METRIC_POINTS - 1
    # The largest page (100,000 points) holds every point the stream can store.
    request = training_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss", page_size=100_000)
    assert [p.step for p in training.GetMetricHistory(request).points] == list(range(last + 1))
    request.page_size = 0
    request.max_points = 4
    assert training.GetMetricHistory(request).total_points == last + 1
    summaries = training.GetRun(training_pb2.GetRunRequest(run_id=run_id)).metrics
    assert [(s.count, s.last_step, s.last, s.max) for s in summaries] == (
        [(last + 1, last, last, last)] if stored else []
    )
    return error, stored


@pytest.mark.parametrize("left", [0, 1 << 20], ids=["no-block-left", "room-for-some-batches"])
def test_a_metric_stream_whose_commit_finds_the_disk_full_stores_only_the_batches_it_says(daemon, disk, left):
    # A commit that fails as a whole fails every batch in it after their work ran: the stream
    # stored the batches of the commits before it, and no part of a batch after them.
    training = training_pb2_grpc.TrainingStub(daemon.channel())
    run_id = training.CreateRun(training_pb2.CreateRunRequest(experiment="full")).run_id
    filler = fill_up(disk) if left == 0 else fill(disk, leave=left)

    error, stored = refused_metric_stream(training, run_id)

    assert FULL in error.details() and "writing to the database failed" in error.details(), error.details()
    filler.unlink()
    resent = [metric_batch(run_id, i) for i in range(stored, METRIC_BATCHES)]
    assert training.LogMetricsStream(iter(resent), timeout=60).accepted == len(resent) * METRIC_POINTS
    history = training.GetMetricHistory(training_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss"))
    assert history.total_points == METRIC_BATCHES * METRIC_POINTS


def test_a_metric_stream_that_fills_the_database_map_stores_only_the_batches_it_says(tmp_path):
    running = InProcessDaemon(disk_settings(tmp_path / "data", **{"store.map_size": "1MiB"})).start()
    try:
        training = training_pb2_grpc.TrainingStub(running.channel())
        run_id = training.CreateRun(training_pb2.CreateRunRequest(experiment="full")).run_id

        error, stored = refused_metric_stream(training, run_id)

        assert stored > 0
        assert "store.map_size = 1 MiB" in error.details(), error.details()
    finally:
        running.stop()


def test_an_http_write_onto_a_full_disk_is_507_insufficient_storage(daemon, disk):
    # It was 429 Too Many Requests, which clients retry after a while: more room is what it needs.
    with tessera.Client(daemon.target) as client:
        run_id = client.training.create_run("full", create_experiment=True).run_id
        client.training.delete_run(run_id)
    filler = fill_up(disk)
    first_refused_create(registry_pb2_grpc.RegistryStub(daemon.channel()))  # the store's file is at its end
    port = daemon.daemon.http_port
    status, body = _restore(port, run_id)
    assert status == 507 and FULL in body["error"], body
    filler.unlink()
    assert _restore(port, run_id)[0] == 200


def _restore(port: int, run_id: str) -> tuple[int, dict[str, Any]]:
    """The dashboard's restore of `run_id`: (status, JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/runs/{run_id}/restore",
        method="POST",
        headers={"X-Tessera-Dashboard": "1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)

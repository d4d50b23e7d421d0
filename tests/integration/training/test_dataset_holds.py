"""A job holds its dataset version while it is queued or running, not after it ends: deleting a
dataset an ended job used needs no force; a model version trained on it still protects it. A
sweep holds its trials' dataset version until it ends, between trials too. A submit holds the
version in the transaction that stores the job or sweep, so a delete since its check refuses it.
A version force-deleted while a job ran does not lose the job's model: it is registered, its
lineage naming the version as deleted. One force-deleted before its job could start (it was queued)
or resume (the daemon stopped meanwhile) fails the job, saying so, as does a stored npz that
fails the checks an upload passes now (a job's workers would open it)."""

from __future__ import annotations

import io
from typing import Any

import grpc
import numpy as np
import pytest
from rich.console import Console

from tessera.cli import main
from tessera.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
)
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.datasets import arrays
from tesserad.datasets.references import DATASET_HOLDS, HOLDS_INDEXED, hold_dataset, job_holder, sweep_holder
from tesserad.errors import FailedPrecondition
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import upload_dataset as upload_file
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    job_spec,
    of_kind,
    states,
    submit,
    sweep_values,
    upload_dataset,
    wait_sweep,
)
from tests.unit.datasets.zips import with_zip64_end

S = training_pb2


def _push(channel: grpc.Channel, name: str) -> datasets_pb2.DatasetVersion:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    return upload_dataset(channel, name, {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})


def _spec(dataset: str, **fields) -> job_spec_pb2.JobSpec:
    spec = job_spec("mlp", **fields)
    spec.data.dataset.name = dataset
    return spec


def _delete(channel: grpc.Channel, name: str, force: bool = False) -> int:
    request = datasets_pb2.DeleteDatasetRequest(name=name, force=force)
    return datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(request).deleted_versions


def _refusal(channel: grpc.Channel, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        _delete(channel, name)
    return refused.value


def test_a_running_job_holds_its_dataset_and_releases_it_when_it_ends(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    _push(channel, "held-while-running")
    job = submit(training, _spec("held-while-running", epochs=0, max_steps=1_000_000))
    refused = _refusal(channel, "held-while-running")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        f"dataset 'held-while-running' is in use by training job {job.job_id} (v1); wait for the jobs "
        "to end or cancel them with CancelJob, or pass force to delete it anyway"
    ) == refused.details()
    training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_CANCELLED
    assert _delete(channel, "held-while-running") == 1


def test_a_failed_job_does_not_hold_its_dataset(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    huge = np.full((16, 6), 3e38, np.float32)
    upload_dataset(channel, "held-then-failed", {"x": huge, "t": huge[:, :1]})
    spec = _spec("held-then-failed", task=job_spec_pb2.TASK_REGRESSION)
    spec.architecture.output_size = 1
    spec.data.target_array = "t"
    job = submit(training, spec)
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_FAILED
    assert _delete(channel, "held-then-failed") == 1


def test_a_model_version_trained_on_a_dataset_still_holds_it(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    _push(channel, "held-by-lineage")
    job = submit(
        training,
        _spec("held-by-lineage", epochs=1, register_as=job_spec_pb2.RegisterAs(model="trained-on-held")),
    )
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_SUCCEEDED
    refused = _refusal(channel, "held-by-lineage")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == (
        "dataset 'held-by-lineage' is in use by model trained-on-held v1's lineage (v1); delete those "
        "model versions first, or pass force to delete it anyway"
    )
    assert job.job_id not in refused.details()


def test_holds_of_jobs_that_ended_under_an_older_daemon_are_released_at_start(tmp_path) -> None:
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        channel = daemon.channel()
        _push(channel, "held-by-old-job")
        training = training_grpc.TrainingStub(channel)
        job = submit(training, _spec("held-by-old-job", epochs=0, max_steps=1_000_000))
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
        assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_CANCELLED
    finally:
        daemon.stop()
    # What an older daemon left: the ended job still holds its dataset.
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            hold_dataset(txn, "held-by-old-job", 1, job_holder(job.job_id))
    finally:
        store.close()
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        assert _delete(daemon.channel(), "held-by-old-job") == 1
    finally:
        daemon.stop()


def _sweep(dataset: str, lrs: tuple[str, ...] = ("0.01", "0.02"), **fields) -> S.SweepSpec:
    return S.SweepSpec(
        base=_spec(dataset, **fields),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", *lrs)],
        max_concurrent=1,
        metric="train_loss",
    )


def test_a_sweep_holds_its_dataset_between_one_trial_and_the_next(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 0 has ended (its job's hold is gone) and trial 1 is not submitted yet: a delete then
    # succeeded, and every later trial failed to submit.
    _push(training_daemon.channel(), "held-between-trials")
    jobs, datasets = training_daemon.daemon.training, training_daemon.daemon.datasets
    submit_trial, refusals = jobs.submit, []

    def delete_first(raw: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if raw["run_name"].endswith("-1"):
            try:
                datasets.delete("held-between-trials")
                refusals.append("deleted")
            except FailedPrecondition as exc:
                refusals.append(exc.message)
        return submit_trial(raw, *args, **kwargs)

    monkeypatch.setattr(jobs, "submit", delete_first)
    sweep_id = training.SubmitSweep(
        S.SubmitSweepRequest(spec=_sweep("held-between-trials", epochs=1))
    ).sweep_id
    sweep = wait_sweep(training, sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.state for t in sweep.trials] == [S.JOB_STATE_SUCCEEDED] * 2
    assert refusals == [
        f"dataset 'held-between-trials' is in use by sweep {sweep_id} (v1); wait for sweep {sweep_id} to "
        f"end or cancel it with `tessera sweeps cancel {sweep_id}`, or pass force to delete it anyway"
    ]
    assert _delete(training_daemon.channel(), "held-between-trials") == 1


def test_a_running_sweep_holds_its_dataset_until_it_is_cancelled(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    _push(channel, "held-by-sweep")
    spec = _sweep("held-by-sweep", epochs=0, max_steps=1_000_000)
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    refused = _refusal(channel, "held-by-sweep")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"sweep {sweep_id} (v1)" in refused.details()
    assert f"cancel it with `tessera sweeps cancel {sweep_id}`" in refused.details()
    training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
    ended = wait_sweep(training, sweep_id)
    assert ended.state == S.SWEEP_STATE_CANCELLED
    # The sweep ends at once; its running trial's job holds the dataset until it has stopped.
    for trial in ended.trials:
        if trial.job_id:
            follow(training, trial.job_id)
    assert _delete(channel, "held-by-sweep") == 1


def test_holds_of_sweeps_that_ended_under_an_older_daemon_are_released_at_start(tmp_path) -> None:
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        _push(daemon.channel(), "held-by-old-sweep")
    finally:
        daemon.stop()
    # What a sweep that ended before its release was written left.
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            hold_dataset(txn, "held-by-old-sweep", 1, sweep_holder("sweep-01ended"))
    finally:
        store.close()
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        assert _delete(daemon.channel(), "held-by-old-sweep") == 1
    finally:
        daemon.stop()


def test_holds_stored_before_the_by_holder_rows_are_indexed_at_start(tmp_path) -> None:
    # An ended sweep finds what it holds by holder: a store from before those rows gets them at
    # start, or the cancelled sweep below would hold its dataset for ever.
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        _push(daemon.channel(), "held-by-older-sweep")
        spec = _sweep("held-by-older-sweep", epochs=0, max_steps=1_000_000)
        sweep_id = (
            training_grpc.TrainingStub(daemon.channel()).SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
        )
    finally:
        daemon.stop()
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            assert txn.delete_range(DATASET_HOLDS, ()) == 2  # the sweep's and its running trial's
            assert txn.delete_range("meta", HOLDS_INDEXED) == 1
    finally:
        store.close()
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        channel = daemon.channel()
        training = training_grpc.TrainingStub(channel)
        training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
        for trial in wait_sweep(training, sweep_id).trials:
            if trial.job_id:
                follow(training, trial.job_id)
        assert _delete(channel, "held-by-older-sweep") == 1
    finally:
        daemon.stop()


def _delete_after_check(daemon: InProcessDaemon, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Delete `name` right after the first spec check reads it, before the submit's write."""
    jobs, datasets = daemon.daemon.training, daemon.daemon.datasets
    check, deleted = jobs.check, []

    def check_then_delete(raw_spec: dict[str, Any]) -> dict[str, Any]:
        config = check(raw_spec)
        if not deleted:
            deleted.append(datasets.delete(name))
        return config

    monkeypatch.setattr(jobs, "check", check_then_delete)


def test_a_dataset_deleted_while_a_job_is_submitted_refuses_the_submit(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(training_daemon.channel(), "deleted-during-submit")
    before = len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs)
    _delete_after_check(training_daemon, monkeypatch, "deleted-during-submit")
    with pytest.raises(grpc.RpcError) as refused:
        submit(training, _spec("deleted-during-submit"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details().startswith(
        "spec.data.dataset: dataset 'deleted-during-submit' does not exist"
    )
    assert len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs) == before


def test_a_dataset_deleted_while_a_sweep_is_submitted_refuses_the_sweep(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(training_daemon.channel(), "deleted-during-sweep")
    before = len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps)
    # One trial, so one check: the sweep was stored and ended FAILED, its trial unable to submit.
    _delete_after_check(training_daemon, monkeypatch, "deleted-during-sweep")
    with pytest.raises(grpc.RpcError) as refused:
        training.SubmitSweep(S.SubmitSweepRequest(spec=_sweep("deleted-during-sweep", ("0.01",), epochs=1)))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details().startswith(
        "spec.data.dataset: dataset 'deleted-during-sweep' does not exist"
    )
    assert len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps) == before


def test_a_job_whose_dataset_was_force_deleted_while_it_ran_registers_its_model_saying_so(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    sha256 = _push(channel, "deleted-while-running").sha256
    spec = _spec(
        "deleted-while-running",
        epochs=40,
        register_as=job_spec_pb2.RegisterAs(model="trained-on-deleted", alias="staging"),
    )
    job = submit(training, spec)
    events = training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120)
    next(e for e in events if e.WhichOneof("event") == "epoch")
    assert _delete(channel, "deleted-while-running", force=True) == 1
    # The delete came while the job ran (not after its end, which would prove nothing).
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    rest = list(events)
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.error) == (S.JOB_STATE_SUCCEEDED, "")
    assert (ended.registered.model, ended.registered.version) == ("trained-on-deleted", 1)
    said = [e.log.message for e in rest if e.WhichOneof("event") == "log" and e.log.level == "warning"]
    assert said == [
        "dataset 'deleted-while-running' v1 was deleted while the job ran; the model version's "
        "lineage names it, marked deleted, with the sha256 of the data it was trained on"
    ]
    registry = registry_pb2_grpc.RegistryStub(channel)
    version = registry.GetVersion(
        registry_pb2.GetVersionRequest(ref={"model": "trained-on-deleted", "alias": "staging"})
    )
    assert [(d.name, d.version, d.sha256, d.deleted) for d in version.lineage.datasets] == [
        ("deleted-while-running", 1, sha256, True)
    ]
    screen = io.StringIO()
    shown = ["--target", training_daemon.target, "models", "show", "trained-on-deleted"]
    assert main(shown, console=Console(file=screen, width=200, color_system=None)) == 0
    assert f"deleted-while-running:1 (deleted, sha256 {sha256[:12]})" in screen.getvalue()
    # Nothing holds a version that is gone: one uploaded again under the name is not held by it.
    _push(channel, "deleted-while-running")
    assert _delete(channel, "deleted-while-running") == 1


def test_a_job_whose_dataset_was_force_deleted_before_it_resumed_fails_naming_the_version(tmp_path) -> None:
    # The job failed at its resume with "the job could not start: dataset ... does not exist;
    # upload it with UploadDataset": a new upload is another version, which the job does not use.
    data_dir = tmp_path / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        channel = daemon.channel()
        _push(channel, "deleted-while-stopped")
        training = training_grpc.TrainingStub(channel)
        job = submit(training, _spec("deleted-while-stopped", epochs=100_000))
        events = training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120)
        next(e for e in events if e.WhichOneof("event") == "checkpoint")
        events.cancel()
        assert _delete(channel, "deleted-while-stopped", force=True) == 1
    finally:
        daemon.stop()  # before the job ends: it is interrupted, to resume at the next start
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS)).start()
    try:
        training = training_grpc.TrainingStub(daemon.channel())
        events = follow(training, job.job_id)
        assert states(events)[-3:] == [S.JOB_STATE_INTERRUPTED, S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED]
        ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
        latest = max(ended.checkpoints, key=lambda c: c.step)  # kept: the retention policy's to drop
        message = (
            f"dataset 'deleted-while-stopped' v1 was deleted before the job could resume from its "
            f"epoch {latest.epoch} checkpoint (its checkpoints are kept as its checkpoint retention "
            "says), and a job trains only on the version it was submitted with: submit it again on "
            "another version of the dataset (ListDatasetVersions lists them)"
        )
        assert (ended.state, ended.error) == (S.JOB_STATE_FAILED, message)
        assert [(e.kind, e.message) for e in of_kind(events, "error")] == [("dataset_deleted", message)]
    finally:
        daemon.stop()


def test_a_job_whose_dataset_was_force_deleted_while_it_was_queued_fails_before_it_starts(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    _push(channel, "deleted-while-queued")
    # One job per CPU slot: the job on the deleted version waits in the queue behind them.
    blockers = [submit(training, job_spec("mlp", epochs=0, max_steps=1_000_000)) for _ in range(2)]
    for blocker in blockers:
        watched = training.WatchJob(S.WatchJobRequest(job_id=blocker.job_id), timeout=120)
        next(e for e in watched if e.WhichOneof("event") == "state" and e.state.state == S.JOB_STATE_RUNNING)
        watched.cancel()
    job = submit(training, _spec("deleted-while-queued", epochs=1))
    try:
        assert _delete(channel, "deleted-while-queued", force=True) == 1
        assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_QUEUED
    finally:
        for blocker in blockers:
            training.CancelJob(S.CancelJobRequest(job_id=blocker.job_id))
    events = follow(training, job.job_id)
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED]
    message = (
        "dataset 'deleted-while-queued' v1 was deleted before the job could start, and a job trains "
        "only on the version it was submitted with: submit it again on another version of the dataset "
        "(ListDatasetVersions lists them)"
    )
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.error, ended.attempt) == (S.JOB_STATE_FAILED, message, 0)
    assert [(e.kind, e.message) for e in of_kind(events, "error")] == [("dataset_deleted", message)]
    assert of_kind(events, "state")[-1].reason == message
    run = training.GetRun(S.GetRunRequest(run_id=ended.run_id))
    assert (run.status, run.attempts) == (S.RUN_STATUS_FAILED, 0)
    # It holds nothing: a version uploaded again under the name is deleted without force.
    _push(channel, "deleted-while-queued")
    assert _delete(channel, "deleted-while-queued") == 1


def test_a_job_on_a_stored_npz_an_upload_would_refuse_fails_before_it_starts(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=(x[:, 0] > 0).astype(np.int64))
    # End records claiming 50 million arrays, which zipfile never looks at: a worker's open
    # would read the archive as it is, however many entries its directory lists.
    crafted = with_zip64_end(buffer.getvalue(), entries=50_000_000)
    # Stored as a tesserad from before the check stored it (a store restored from its backup).
    with monkeypatch.context() as older:
        older.setattr(arrays, "check_npz_directory", lambda _path, _format: None)
        upload_file(datasets_pb2_grpc.DatasetsStub(training_daemon.channel()), "unchecked", crafted)
    job = submit(training, _spec("unchecked", epochs=1))
    events = follow(training, job.job_id)
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED]
    message = (
        "the job could not start: dataset 'unchecked' v1's stored file fails a check every upload "
        "passes now: the npz archive holds 50000000 members, over the 10000 arrays a dataset may have "
        "(so that any answer holding its version fits gRPC's 4 MiB); stack arrays of one shape into "
        "one, or split the data into several datasets. A tesserad older than that check stored it (a "
        "store restored from its backup), or it was damaged: upload the data again and submit the job "
        "on that version"
    )
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.error, ended.attempt) == (S.JOB_STATE_FAILED, message, 0)
    assert [(e.kind, e.message) for e in of_kind(events, "error")] == [("exception", message)]

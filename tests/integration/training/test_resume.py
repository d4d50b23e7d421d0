"""Crash resume: SIGKILL the daemon while a job runs; the next daemon resumes it from its
checkpoint, unless the job's cancel was accepted before the kill."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training.job_records import decode_job
from tesserad.training.tracking import Tracking
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    Restarts,
    job_spec,
    logged,
    of_kind,
    states,
    upload_standard_datasets,
)

S = training_pb2
ENV = {"TESSERA_TRAINING_CPU_SLOTS": "1", "TESSERA_TRAINING_THREADS_PER_SLOT": "1"}
# A cancelled worker is never killed for missing its step boundary while a test runs: the
# daemon's SIGKILL comes first.
LONG_GRACE = {**ENV, "TESSERA_TRAINING_CANCEL_GRACE_S": "3600"}


def _start(spawn_daemon: Any, data_dir: Path, env: dict[str, str] = ENV) -> tuple[Any, grpc.Channel]:
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir), env=env
    )
    channel = grpc.insecure_channel(daemon.wait_serving())
    return daemon, channel


def _logged(daemon: Any, message: str) -> dict[str, Any]:
    """The daemon's first JSON log entry `message`, whether read already or still to come."""
    for line in daemon.log:
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("msg") == message:
            return entry
    return daemon.wait_for_log(message)


def _run_until_checkpoint(
    channel: grpc.Channel, epoch: int, epochs: int = 60
) -> tuple[job_spec_pb2.JobSpec, training_pb2.Job, list[training_pb2.JobEvent]]:
    """Submit an `epochs`-epoch job checkpointing every 2 epochs; its spec, the job and its
    events up to the checkpoint of `epoch`."""
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = job_spec(
        "mlp", epochs=epochs, checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1)
    )
    job = training.SubmitJob(S.SubmitJobRequest(spec=spec))
    seen = []
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        seen.append(event)
        if event.WhichOneof("event") == "checkpoint" and event.checkpoint.epoch == epoch:
            break
    return spec, job, seen


def test_sigkilled_daemon_resumes_the_job_from_its_last_checkpoint(
    spawn_daemon: Any, restart_daemon: Restarts, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    spec, job, seen = _run_until_checkpoint(channel, epoch=4)
    workers = [
        child
        for child in psutil.Process(daemon.process.pid).children(recursive=True)
        if "forkserver" in " ".join(child.parent().cmdline())
    ]
    assert workers
    daemon.kill()
    channel.close()
    # Its worker saw the daemon's end of the pipe close and stopped: none trains unsupervised.
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert events[: len(seen)] == seen  # the old attempt's events are kept, numbered as before
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ]
    resumed = [s for s in of_kind(events, "state") if s.state == S.JOB_STATE_RUNNING][1]
    # The first attempt may checkpoint again between the watcher's break and the kill.
    first_attempt = [e for e in events if e.attempt == 1]
    checkpoint_epoch = max(c.epoch for c in of_kind(first_attempt, "checkpoint"))
    assert f"resumed from the epoch {checkpoint_epoch} checkpoint (attempt 2)" in resumed.reason
    checkpoint_step = max(c.step for c in of_kind(first_attempt, "checkpoint"))
    requeued = logged(caplog, "interrupted job re-queued")
    assert (requeued.job_id, requeued.attempt) == (job.job_id, 2)
    assert (requeued.from_epoch, requeued.from_step) == (checkpoint_epoch, checkpoint_step)
    resumed_at = logged(caplog, "job resumed from a checkpoint")
    assert (resumed_at.job_id, resumed_at.attempt) == (job.job_id, 2)
    assert (resumed_at.epoch, resumed_at.step) == (checkpoint_epoch, checkpoint_step)
    assert {e.attempt for e in events if e.WhichOneof("event") == "step"} == {1, 2}

    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.state == S.JOB_STATE_SUCCEEDED and final.attempt == 2 and final.epoch == 60
    run = training.GetRun(S.GetRunRequest(run_id=final.run_id))
    assert run.attempts == 2 and run.status == S.RUN_STATUS_SUCCEEDED
    # The resumed attempt superseded the old one's points after the checkpoint: one point per step.
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=final.run_id, key="loss"))
    assert [p.step for p in history.points] == list(range(1, final.total_steps + 1))

    # Same curve as an uninterrupted run of the same spec and seed.
    again = training.SubmitJob(S.SubmitJobRequest(spec=spec))
    assert states(list(training.WatchJob(S.WatchJobRequest(job_id=again.job_id), timeout=120)))[-1] == (
        S.JOB_STATE_SUCCEEDED
    )
    reference_run = training.GetJob(S.GetJobRequest(job_id=again.job_id)).run_id
    reference = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=reference_run, key="loss"))
    assert [p.value for p in history.points] == [p.value for p in reference.points]
    # The resumed attempt truncated the run's summaries with its points: downsampled answers and
    # summaries are those of the uninterrupted run.
    for max_points in (6, 40):
        shapes = [
            training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=r, key="loss", max_points=max_points))
            for r in (final.run_id, reference_run)
        ]
        assert shapes[0].downsampled and len(shapes[0].points) <= max_points
        assert [(p.step, p.value) for p in shapes[0].points] == [(p.step, p.value) for p in shapes[1].points]
    summaries = [
        {
            m.key: (m.count, m.min, m.max, m.last, m.last_step)
            for m in training.GetRun(S.GetRunRequest(run_id=r)).metrics
        }
        for r in (final.run_id, reference_run)
    ]
    assert summaries[0] == summaries[1]


def test_a_daemon_stopped_gracefully_interrupts_its_running_job_and_the_next_one_resumes_it(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    _, job, _ = _run_until_checkpoint(channel, epoch=2)
    daemon.terminate()  # SIGTERM: a graceful stop
    daemon.output()
    channel.close()
    # The operator reading the stopping daemon's log learns that the job is not lost.
    stopped = _logged(daemon, "job interrupted by the shutdown; it resumes when tesserad starts again")
    assert (stopped["job_id"], stopped["attempt"]) == (job.job_id, 1)
    assert stopped["from_epoch"] >= 2 and stopped["from_step"] > 0

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    interrupted = [s for s in of_kind(events, "state") if s.state == S.JOB_STATE_INTERRUPTED]
    assert [s.reason for s in interrupted] == [
        "tesserad is shutting down; the job resumes when it starts again"
    ]
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.attempt == 2 and final.epoch == 60


def test_a_running_job_cancelled_just_before_a_sigkill_ends_cancelled_at_the_next_start(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path, LONG_GRACE)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = job_spec(
        "mlp",
        epochs=0,
        max_steps=1_000_000,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1),
    )
    job = training.SubmitJob(S.SubmitJobRequest(spec=spec))
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.WhichOneof("event") == "checkpoint":
            break
    # Stopped, the job's worker cannot act on the cancel: the daemon dies with the job still
    # running, as it would when killed within the cancel's grace period.
    workers = psutil.Process(daemon.process.pid).children(recursive=True)
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)
    assert training.CancelJob(S.CancelJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    daemon.kill()
    channel.close()
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()

    restarted = restart_daemon(tmp_path, **{"training.cancel_grace_s": 3600})
    training = training_pb2_grpc.TrainingStub(restarted.channel())
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    # Ended as the daemon started, before its scheduler could run it again.
    assert (final.state, final.attempt) == (S.JOB_STATE_CANCELLED, 1)
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLED]
    assert max(e.attempt for e in events) == 1
    assert of_kind(events, "state")[-1].reason == (
        "cancelled: tesserad stopped before the job did, and it was not started again"
    )
    run = training.GetRun(S.GetRunRequest(run_id=final.run_id))
    assert (run.status, run.attempts) == (S.RUN_STATUS_CANCELLED, 1)
    restart_daemon.stop(restarted)

    # The job keeps its last checkpoint, as a job cancelled while the daemon ran does.
    store = Store.open(tmp_path / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            record = decode_job(txn.get("jobs", (job.job_id,)) or b"")
    finally:
        store.close()
    saved = of_kind(events, "checkpoint")
    assert [c.step for c in record.checkpoints] == [saved[-1].step]
    sha256 = record.checkpoints[0].sha256
    assert (tmp_path / "blobs" / "sha256" / sha256[:2] / sha256[2:]).is_file()


def test_a_daemon_stopped_gracefully_while_a_cancel_waits_says_the_job_ends_cancelled_at_the_next_start(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path, LONG_GRACE)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    job = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", epochs=0, max_steps=1_000_000)))
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.WhichOneof("event") == "step":
            break
    # Stopped, the worker cannot act on the cancel: the SIGTERM comes within its grace period.
    # (Only the worker: the fork server that started it reaps it at the shutdown.)
    workers = [
        child
        for child in psutil.Process(daemon.process.pid).children(recursive=True)
        if "forkserver" in " ".join(child.parent().cmdline())
    ]
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)
    assert training.CancelJob(S.CancelJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    daemon.terminate()
    daemon.output()
    channel.close()
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    stopped = _logged(
        daemon,
        "job stopped by the shutdown while its cancel waited; it ends cancelled when tesserad starts again",
    )
    assert (stopped["job_id"], stopped["attempt"]) == (job.job_id, 1)

    training = training_pb2_grpc.TrainingStub(
        restart_daemon(tmp_path, **{"training.cancel_grace_s": 3600}).channel()
    )
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_CANCELLED,
    ]
    assert of_kind(events, "state")[2].reason == (
        "tesserad is shutting down while the job's cancel waits; it ends cancelled when tesserad starts again"
    )


def _forked_workers() -> set[psutil.Process]:
    """This process's job workers: the children of its fork servers (training.worker_start)."""
    workers = set()
    for child in psutil.Process().children(recursive=True):
        # Workers of earlier tests' daemons share the fork server and may exit meanwhile.
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = child.parent()
            if parent is not None and "forkserver" in " ".join(parent.cmdline()):
                workers.add(child)
    return workers


def test_a_worker_that_dies_while_its_cancel_waits_is_not_said_to_have_been_killed_for_the_grace(
    tmp_path: Path,
) -> None:
    # Only the worker gets signals: a daemon in this process serves.
    settings = {**TRAINING_SETTINGS, "training.cancel_grace_s": 3600}
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data", **settings)).start()
    try:
        channel = daemon.channel()
        upload_standard_datasets(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        before = _forked_workers()
        job = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", epochs=0, max_steps=1_000_000)))
        for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
            if event.WhichOneof("event") == "step":
                break
        (worker,) = _forked_workers() - before
        # Stopped, it cannot act on the cancel; then it dies, an hour before its grace runs out.
        worker.send_signal(signal.SIGSTOP)
        assert training.CancelJob(S.CancelJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
        worker.kill()
        events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    finally:
        daemon.stop()
    assert states(events)[-1] == S.JOB_STATE_CANCELLED
    reason = of_kind(events, "state")[-1].reason
    assert reason.startswith("cancelled, though the worker died before it stopped: ") and "SIGKILL" in reason
    assert "cancel_grace_s" not in reason


def test_a_queued_job_cancelled_before_a_sigkill_stays_cancelled(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    # The daemon's one CPU slot is this job's until it is cancelled.
    first = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", epochs=0, max_steps=1_000_000)))
    second = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp")))
    assert second.state == S.JOB_STATE_QUEUED
    assert training.CancelJob(S.CancelJobRequest(job_id=second.job_id)).state == S.JOB_STATE_CANCELLED
    daemon.kill()
    channel.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    final = training.GetJob(S.GetJobRequest(job_id=second.job_id))
    assert (final.state, final.attempt) == (S.JOB_STATE_CANCELLED, 0)
    events = list(training.WatchJob(S.WatchJobRequest(job_id=second.job_id), timeout=120))
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED]
    training.CancelJob(S.CancelJobRequest(job_id=first.job_id))


def test_a_job_cancelled_while_queued_to_resume_does_not_say_it_never_started(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    _, job, _ = _run_until_checkpoint(channel, epoch=2)
    daemon.terminate()
    daemon.output()
    channel.close()
    # No CPU slot: the interrupted job waits in the queue to resume.
    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 0}).channel())
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_QUEUED
    cancelled = training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    assert (cancelled.state, cancelled.attempt) == (S.JOB_STATE_CANCELLED, 1)
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    # Its first attempt trained for epochs: "cancelled before it started" said it never had.
    assert of_kind(events, "state")[-1].reason == "cancelled before attempt 2 started"


def test_a_job_cancelled_while_queued_to_train_again_is_not_said_to_have_stopped_early(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = job_spec(
        "mlp",
        epochs=60,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1),
        early_stopping=job_spec_pb2.EarlyStopping(metric="val_loss", patience=50),
    )
    job = training.SubmitJob(S.SubmitJobRequest(spec=spec))
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.WhichOneof("event") == "checkpoint":
            break
    daemon.terminate()
    daemon.output()
    channel.close()
    # The record as an attempt leaves it that early stopping ended after its epoch 3, killed
    # before its final checkpoint was stored: the next attempt trains again from epoch 2.
    store = Store.open(tmp_path / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            record = json.loads(txn.get("jobs", (job.job_id,)) or b"")
            assert record["data"]["state"] == "interrupted"
            assert [c["reason"] for c in record["data"]["checkpoints"]] != ["final"]
            record["data"]["stopped_early"] = {
                "metric": "val_loss",
                "mode": "min",
                "best": 0.5,
                "best_epoch": 1,
                "epoch": 3,
                "patience": 2,
                "min_delta": 0.0,
            }
            txn.put("jobs", (job.job_id,), json.dumps(record).encode())
    finally:
        store.close()

    # No CPU slot: the job waits in the queue to train again, and is cancelled there.
    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 0}).channel())
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_QUEUED
    cancelled = training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    assert (cancelled.state, cancelled.attempt) == (S.JOB_STATE_CANCELLED, 1)
    # The stop was the interrupted attempt's, which the queued one was to train past: `jobs ls`
    # said a job cancelled in the queue had been ended by early stopping.
    assert not cancelled.HasField("stopped_early")
    (listed,) = training.ListJobs(S.ListJobsRequest(experiment=spec.experiment)).jobs
    assert not listed.HasField("stopped_early")
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    end = of_kind(events, "state")[-1]
    assert (end.state, end.HasField("stopped_early")) == (S.JOB_STATE_CANCELLED, False)


def test_a_watcher_of_a_job_the_shutdown_interrupts_is_told_to_watch_again_and_misses_nothing(
    tmp_path: Path,
) -> None:
    # The shutdown's INTERRUPTED ended the watch as if the job had: `tessera jobs watch` then
    # said "job ... ended interrupted" and gave up on a job the next start resumes.
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    daemon = InProcessDaemon(settings).start()
    # Not the daemon's own channel, which its stop closes before the shutdown reaches the watch.
    channel = grpc.insecure_channel(daemon.target)
    try:
        # Long enough not to end before the stop; the next daemon cancels it.
        _, job, seen = _run_until_checkpoint(channel, epoch=2, epochs=100_000)
        watch = training_pb2_grpc.TrainingStub(channel).WatchJob(
            S.WatchJobRequest(job_id=job.job_id, from_seq=seen[-1].seq + 1), timeout=120
        )
        seen.append(next(watch))
    finally:
        daemon.stop(grace=5)
    with pytest.raises(grpc.RpcError) as info:
        seen.extend(watch)
    channel.close()
    # Whether INTERRUPTED comes before the UNAVAILABLE or from the next start (a worker that did
    # not stop within the grace is stored as interrupted there) depends on load; none is lost.
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        f"tesserad is shutting down; watch again with from_seq={seen[-1].seq + 1} to resume",
    )

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        resumed = training.WatchJob(
            S.WatchJobRequest(job_id=job.job_id, from_seq=seen[-1].seq + 1), timeout=120
        )
        for event in resumed:
            seen.append(event)
            if event.WhichOneof("event") == "state" and event.state.state == S.JOB_STATE_RUNNING:
                training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    finally:
        restarted.stop()
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert states(seen)[-4:] == [
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_CANCELLED,
    ]


def test_a_full_resume_killed_before_its_own_checkpoint_keeps_the_source_points_at_the_next_start(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    training = training_pb2_grpc.TrainingStub(channel)
    spec, source, _ = _run_until_checkpoint(channel, epoch=2)
    training.CancelJob(S.CancelJobRequest(job_id=source.job_id))
    list(training.WatchJob(S.WatchJobRequest(job_id=source.job_id), timeout=120))
    ended = training.GetJob(S.GetJobRequest(job_id=source.job_id))
    kept = max(ended.checkpoints, key=lambda checkpoint: checkpoint.step)
    resumed_spec = job_spec_pb2.JobSpec()
    resumed_spec.CopyFrom(spec)
    resumed_spec.resume_from = source.job_id
    resumed_spec.checkpoints.every_n_epochs = 60  # none of its own before the kill
    job = training.SubmitJob(S.SubmitJobRequest(spec=resumed_spec))
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.WhichOneof("event") == "step":
            break
    daemon.kill()
    channel.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED
    again = [s for s in of_kind(events, "state") if s.state == S.JOB_STATE_RUNNING][1]
    assert f"resumed from job {source.job_id}'s epoch {kept.epoch} checkpoint (attempt 2)" in again.reason
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    # The source's points up to its checkpoint stay in the run; the second attempt's follow.
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=final.run_id, key="loss"))
    before = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=ended.run_id, key="loss"))
    assert [p.step for p in history.points] == list(range(1, final.total_steps + 1))
    assert [(p.step, p.value) for p in history.points if p.step <= kept.step] == [
        (p.step, p.value) for p in before.points if p.step <= kept.step
    ]


def test_a_daemon_stopped_while_a_full_resume_copied_the_source_points_copies_them_again_at_start(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    training = training_pb2_grpc.TrainingStub(channel)
    spec, source, _ = _run_until_checkpoint(channel, epoch=2)
    training.CancelJob(S.CancelJobRequest(job_id=source.job_id))
    list(training.WatchJob(S.WatchJobRequest(job_id=source.job_id), timeout=120))
    ended = training.GetJob(S.GetJobRequest(job_id=source.job_id))
    kept = max(ended.checkpoints, key=lambda checkpoint: checkpoint.step)
    # The one CPU slot busy: the full resume stays queued.
    long_spec = job_spec_pb2.JobSpec()
    long_spec.CopyFrom(spec)
    long_spec.epochs = 100_000
    blocker = training.SubmitJob(S.SubmitJobRequest(spec=long_spec))
    for event in training.WatchJob(S.WatchJobRequest(job_id=blocker.job_id), timeout=120):
        if event.WhichOneof("event") == "step":
            break
    resumed_spec = job_spec_pb2.JobSpec()
    resumed_spec.CopyFrom(spec)
    resumed_spec.resume_from = source.job_id
    resumed_spec.epochs = kept.epoch + 2  # queued at the kill: it trains only after the restart
    job = training.SubmitJob(S.SubmitJobRequest(spec=resumed_spec))
    daemon.kill()
    channel.close()

    # As a daemon stopped part way through the copy leaves it: the job's row says the copy is not
    # done, and its run holds the points of the first step alone.
    store = Store.open(tmp_path / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.put("resume_copies", (job.job_id,), b"")
            Tracking(store).truncate_metrics_after(txn, job.run_id, 1)
    finally:
        store.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    training.CancelJob(S.CancelJobRequest(job_id=blocker.job_id))
    events = list(training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120))
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=job.run_id, key="loss"))
    before = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=ended.run_id, key="loss"))
    assert [p.step for p in history.points] == list(range(1, len(history.points) + 1))
    assert [(p.step, p.value) for p in history.points if p.step <= kept.step] == [
        (p.step, p.value) for p in before.points if p.step <= kept.step
    ]

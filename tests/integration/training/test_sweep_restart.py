"""A sweep survives a SIGKILL of the daemon mid-sweep, mid-rung: its trials resume or rerun, none is
counted twice, and the searcher goes on drawing from the stored trials."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tests.integration.training.conftest import Restarts, job_spec, upload_standard_datasets
from tests.integration.training.test_job_finish import kill_hook_env

S = training_pb2
ENV = {"TESSERA_TRAINING_CPU_SLOTS": "2", "TESSERA_TRAINING_THREADS_PER_SLOT": "1"}


def _start(spawn_daemon: Any, data_dir: Path) -> tuple[Any, grpc.Channel]:
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir), env=ENV
    )
    return daemon, grpc.insecure_channel(daemon.wait_serving())


def test_sigkilled_daemon_continues_a_tpe_sweep_with_asha(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = S.SweepSpec(
        # Batches of 1: 72 steps an epoch, so a trial started from the fork server in a moment
        # still runs for a while after its first rung, when the daemon is killed.
        base=job_spec(
            "mlp",
            epochs=9,
            batch_size=1,
            log_every_n_steps=24,
            checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1),
        ),
        strategy=S.SWEEP_STRATEGY_TPE,
        pruner=S.SWEEP_PRUNER_ASHA,
        parameters=[
            S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=1e-4, max=0.1, log_scale=True))
        ],
        max_trials=5,
        max_concurrent=2,
        metric="val_loss",
        seed=2,
        asha=S.AshaSettings(min_epochs=1, reduction_factor=3),
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    # Kill once a trial has passed its first rung (epoch 1) and is still running. Asked of the
    # jobs: the sweep's record takes its trials' states from their jobs only when a trial ends.
    deadline = time.monotonic() + 120
    while True:
        before = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))
        jobs_before = training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs
        if any(j.state == S.JOB_STATE_RUNNING and j.epoch >= 1 for j in jobs_before):
            break
        assert time.monotonic() < deadline and before.state == S.SWEEP_STATE_RUNNING
        time.sleep(0.05)
    daemon.kill()
    channel.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 2}).channel())
    deadline = time.monotonic() + 300
    while (after := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == S.SWEEP_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert after.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.number for t in after.trials] == list(range(5))  # each trial once, none lost
    # The trials drawn before the kill kept their values and their jobs.
    for old, new in zip(before.trials, after.trials, strict=False):
        assert new.params == old.params
        assert not old.job_id or new.job_id == old.job_id
    jobs = training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs
    assert sorted(j.job_id for j in jobs) == sorted(t.job_id for t in after.trials)  # no job counted twice
    assert all(t.state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_CANCELLED) for t in after.trials)
    assert all(t.pruned == (t.state == S.JOB_STATE_CANCELLED) for t in after.trials)
    # The trials running at the kill resumed (or reran) as their own jobs, not as new ones; one of
    # them may have ended in the instant between the last look and the kill.
    running = {j.job_id for j in jobs_before if j.state == S.JOB_STATE_RUNNING}
    attempts = [j.attempt for j in jobs if j.job_id in running]
    assert 2 in attempts and set(attempts) <= {1, 2}
    assert len({t.params["optimizer.lr"] for t in after.trials}) == 5


def test_a_sweep_cancelled_just_before_a_sigkill_stays_cancelled(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[S.SweepParameter(path="seed", values=S.SweepValues(values=["1", "2"]))],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    deadline = time.monotonic() + 120
    while not any(
        j.state == S.JOB_STATE_RUNNING and j.step >= 1
        for j in training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Stopped, the trial's worker cannot act on the cancel: the daemon dies with the trial's
    # job still running, as it would when killed within the cancel's grace period.
    workers = psutil.Process(daemon.process.pid).children(recursive=True)
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
    assert cancelled.state == S.SWEEP_STATE_CANCELLED
    daemon.kill()
    channel.close()
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 2}).channel())
    deadline = time.monotonic() + 120
    while (after := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).trials[0].state != (
        S.JOB_STATE_CANCELLED
    ):
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    assert after.state == S.SWEEP_STATE_CANCELLED
    assert after.spec.seed == cancelled.spec.seed  # the seed drawn at submit, as stored
    assert [t.state for t in after.trials] == [S.JOB_STATE_CANCELLED, S.JOB_STATE_CANCELLED]
    jobs = training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs
    assert [j.state for j in jobs] == [S.JOB_STATE_CANCELLED]


def _submit_quietly(training: training_pb2_grpc.TrainingStub, spec: S.SweepSpec) -> None:
    with contextlib.suppress(grpc.RpcError):  # the daemon is killed under it
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))


def test_a_sweep_killed_while_it_submits_its_first_trials_keeps_them(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    # A planned sweep's record was first written after its first max_concurrent jobs were
    # submitted: a SIGKILL in between left jobs of a sweep that did not exist, running untracked.
    daemon, channel = _start(spawn_daemon, tmp_path)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1, max_steps=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[S.SweepParameter(path="seed", values=S.SweepValues(values=[str(i) for i in range(300)]))],
        max_concurrent=300,
        metric="train_loss",
    )
    submitting = threading.Thread(target=_submit_quietly, args=(training, spec), daemon=True)
    submitting.start()
    deadline = time.monotonic() + 60
    while not (jobs := training.ListJobs(S.ListJobsRequest(page_size=1)).jobs):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    daemon.kill()
    channel.close()
    submitting.join(timeout=60)

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 2}).channel())
    sweep_id = jobs[0].sweep_id
    sweep = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
    stored = training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id, page_size=1000)).jobs
    assert stored and sorted(j.job_id for j in stored) == sorted(t.job_id for t in sweep.trials if t.job_id)


def test_a_trial_pruned_just_before_a_sigkill_is_cancelled_at_the_next_start(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    # The prune is stored in the trial's row, then the daemon dies before its run is tagged and
    # its job cancelled: the next start finishes the prune, so the trial is neither run on to its
    # end nor counted as anything but pruned.
    env = {**ENV, **kill_hook_env("pruned_saved")}
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path), env=env
    )
    channel = grpc.insecure_channel(daemon.wait_serving())
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    # The second trial (lr 1e-7) barely moves from the same initial weights: it trails the first
    # at ASHA's first rung (epoch 1), and is pruned there, before its last (epoch 4).
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=4),
        strategy=S.SWEEP_STRATEGY_GRID,
        pruner=S.SWEEP_PRUNER_ASHA,
        parameters=[
            S.SweepParameter(path="optimizer.lr", values=S.SweepValues(values=["0.05", "0.0000001"]))
        ],
        max_concurrent=1,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=2),
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    assert daemon.process.wait(120) == -signal.SIGKILL
    channel.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path, **{"training.cpu_slots": 2}).channel())
    deadline = time.monotonic() + 120
    while (after := training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))).state == S.SWEEP_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert after.state == S.SWEEP_STATE_SUCCEEDED and after.best_job_id == after.trials[0].job_id
    assert [(t.state, t.pruned, t.pruned_at_epoch) for t in after.trials] == [
        (S.JOB_STATE_SUCCEEDED, False, 0),
        (S.JOB_STATE_CANCELLED, True, 1),
    ]
    pruned = training.GetJob(S.GetJobRequest(job_id=after.trials[1].job_id))
    assert pruned.state == S.JOB_STATE_CANCELLED and pruned.epoch < 4
    run = training.GetRun(S.GetRunRequest(run_id=pruned.run_id))
    assert run.tags["tessera.pruned_at_epoch"] == "1"

"""A job whose training finished but whose end was not stored (the daemon was SIGKILLed or
stopped in between) ends at the next start from its final checkpoint: it is not trained again,
and it is registered once, even when the kill came after the registry committed its version. A
job whose worker died in between is finished from it at once.

The kills land at exact points through tests/integration/training/kill_hook (see there)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.v1 import job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2, training_pb2_grpc
from tests.integration.training.conftest import (
    Restarts,
    follow,
    job_spec,
    logged,
    of_kind,
    sweep_values,
    upload_standard_datasets,
    wait_sweep,
)

S = training_pb2
ENV = {"TESSERA_TRAINING_CPU_SLOTS": "1", "TESSERA_TRAINING_THREADS_PER_SLOT": "1"}
HOOK = Path(__file__).parent / "kill_hook"
EPOCHS = 3


def _start(spawn_daemon: Any, data_dir: Path, env: dict[str, str]) -> tuple[Any, grpc.Channel]:
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir), env=env
    )
    return daemon, grpc.insecure_channel(daemon.wait_serving())


def kill_hook_env(point: str) -> dict[str, str]:
    """The environment of a daemon that SIGKILLs itself at `point` (see kill_hook)."""
    path = os.pathsep.join([str(HOOK), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "TESSERA_TEST_KILL_AT": point}


def finishing_spec(model: str) -> job_spec_pb2.JobSpec:
    """EPOCHS epochs, registered to `model`, keeping only the last checkpoint (the final one)."""
    return job_spec(
        "mlp",
        epochs=EPOCHS,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1),
        register_as=job_spec_pb2.RegisterAs(model=model, alias="staging"),
    )


def _killed_at(spawn_daemon: Any, data_dir: Path, point: str, model: str) -> training_pb2.Job:
    """Submit a job that registers to `model` to a daemon that SIGKILLs itself at `point`."""
    daemon, channel = _start(spawn_daemon, data_dir, {**ENV, **kill_hook_env(point)})
    upload_standard_datasets(channel)
    spec = finishing_spec(model)
    job = training_pb2_grpc.TrainingStub(channel).SubmitJob(S.SubmitJobRequest(spec=spec))
    assert daemon.process.wait(120) == -signal.SIGKILL
    channel.close()
    return job


def _stopped_at(spawn_daemon: Any, data_dir: Path, point: str, model: str) -> training_pb2.Job:
    """Submit a job that registers to `model` to a daemon that stops gracefully at `point`."""
    daemon, channel = _start(spawn_daemon, data_dir, {**ENV, **kill_hook_env(point)})
    upload_standard_datasets(channel)
    job = training_pb2_grpc.TrainingStub(channel).SubmitJob(S.SubmitJobRequest(spec=finishing_spec(model)))
    assert daemon.process.wait(120) == 0
    said = [json.loads(line)["msg"] for line in daemon.output().splitlines() if line.startswith("{")]
    assert [m for m in said if m.startswith("job interrupted by the shutdown")] == [
        "job interrupted by the shutdown after its training finished; it finishes from its final "
        "checkpoint when tesserad starts again"
    ]
    channel.close()
    return job


def check_finished_once(channel: grpc.Channel, job_id: str, model: str) -> list[training_pb2.JobEvent]:
    """The job SUCCEEDED with one version of `model`, trained once; its events."""
    training = training_pb2_grpc.TrainingStub(channel)
    events = follow(training, job_id)
    job = training.GetJob(S.GetJobRequest(job_id=job_id))
    assert job.state == S.JOB_STATE_SUCCEEDED
    registry = registry_pb2_grpc.RegistryStub(channel)
    versions = registry.ListVersions(registry_pb2.ListVersionsRequest(model=model)).versions
    assert [(v.version, v.lineage.job_id) for v in versions] == [(1, job_id)]
    # Every epoch trained once, by the first attempt only.
    assert [e.epoch for e in of_kind(events, "epoch")] == list(range(1, EPOCHS + 1))
    requeued = [s.reason for s in of_kind(events, "state") if s.state == S.JOB_STATE_QUEUED][-1]
    assert requeued.startswith(f"re-queued to finish from its final (epoch {EPOCHS}) checkpoint")
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=job.run_id, key="train_loss"))
    assert len(history.points) == EPOCHS and len({p.step for p in history.points}) == EPOCHS
    loss = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=job.run_id, key="loss"))
    assert len(loss.points) == len({p.step for p in loss.points}) == job.total_steps
    run = training.GetRun(S.GetRunRequest(run_id=job.run_id))
    assert run.status == S.RUN_STATUS_SUCCEEDED and run.attempts == 1

    assert (job.registered.model, job.registered.version) == (model, 1)
    assert [(r.model, r.version) for r in of_kind(events, "registered")] == [(model, 1)]
    staging = registry.GetVersion(registry_pb2.GetVersionRequest(ref={"model": model, "alias": "staging"}))
    assert staging.version == 1
    return events


@pytest.mark.parametrize("point", ["final_checkpoint", "registered"])
def test_a_job_killed_after_its_training_finished_is_finished_not_trained_again(
    spawn_daemon: Any, restart_daemon: Restarts, caplog: pytest.LogCaptureFixture, tmp_path: Path, point: str
) -> None:
    model = f"finish-{point.replace('_', '-')}"
    job = _killed_at(spawn_daemon, tmp_path, point, model)
    check_finished_once(restart_daemon(tmp_path).channel(), job.job_id, model)
    finishing = logged(caplog, "job finishing from its final checkpoint, without training again")
    assert finishing.job_id == job.job_id


def test_a_sweep_trial_killed_after_its_training_finished_counts_once(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    daemon, channel = _start(spawn_daemon, tmp_path, {**ENV, **kill_hook_env("final_checkpoint")})
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = S.SweepSpec(
        base=job_spec(
            "mlp", epochs=EPOCHS, checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1)
        ),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.01")],
        max_concurrent=1,
        metric="val_loss",
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    assert daemon.process.wait(120) == -signal.SIGKILL
    channel.close()

    training = training_pb2_grpc.TrainingStub(restart_daemon(tmp_path).channel())
    sweep = wait_sweep(training, sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [(t.number, t.state, t.has_metric) for t in sweep.trials] == [(0, S.JOB_STATE_SUCCEEDED, True)]
    jobs = training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs
    assert [j.job_id for j in jobs] == [sweep.trials[0].job_id]
    events = follow(training, jobs[0].job_id)
    assert [e.epoch for e in of_kind(events, "epoch")] == list(range(1, EPOCHS + 1))
    assert sweep.trials[0].metric == pytest.approx(of_kind(events, "epoch")[-1].metrics["val_loss"])


def test_a_job_stopped_by_the_shutdown_after_its_final_checkpoint_is_said_to_finish(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    model = "finish-after-stop"
    job = _stopped_at(spawn_daemon, tmp_path, "stop_after_final_checkpoint", model)
    events = check_finished_once(restart_daemon(tmp_path).channel(), job.job_id, model)
    interrupted = [s.reason for s in of_kind(events, "state") if s.state == S.JOB_STATE_INTERRUPTED]
    assert interrupted == [
        f"tesserad is shutting down after the job's training finished; it finishes from its final "
        f"(epoch {EPOCHS}) checkpoint when tesserad starts again, without training again"
    ]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_job_whose_worker_died_after_its_final_checkpoint_is_finished_from_it(
    spawn_daemon: Any, tmp_path: Path, processes: int
) -> None:
    """The leader's worker dies once it has sent the final checkpoint: under DDP the other rank
    still reports its outcome, which carries no weights; the job is finished from the checkpoint."""
    model = "finish-worker-died"
    env = {**ENV, "TESSERA_TRAINING_CPU_SLOTS": str(processes), **kill_hook_env("worker_final_checkpoint")}
    daemon, channel = _start(spawn_daemon, tmp_path, env)
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = finishing_spec(model)
    spec.devices.CopyFrom(job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=processes))
    job = training.SubmitJob(S.SubmitJobRequest(spec=spec))
    events = follow(training, job.job_id)
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.attempt, ended.error) == (S.JOB_STATE_SUCCEEDED, 1, "")
    assert [e.epoch for e in of_kind(events, "epoch")] == list(range(1, EPOCHS + 1))
    assert [s.state for s in of_kind(events, "state")] == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ]
    assert of_kind(events, "error") == []
    registry = registry_pb2_grpc.RegistryStub(channel)
    versions = registry.ListVersions(registry_pb2.ListVersionsRequest(model=model)).versions
    assert [(v.version, v.lineage.job_id) for v in versions] == [(1, job.job_id)]
    assert (ended.registered.model, ended.registered.version) == (model, 1)
    final = [c for c in of_kind(events, "checkpoint") if c.reason == "final"]
    assert [c.epoch for c in final] == [EPOCHS]
    assert ended.metrics["val_loss"] == pytest.approx(of_kind(events, "epoch")[-1].metrics["val_loss"])
    run = training.GetRun(S.GetRunRequest(run_id=ended.run_id))
    assert (run.status, run.attempts) == (S.RUN_STATUS_SUCCEEDED, 1)
    daemon.wait_for_log("job finishing from its final checkpoint, without training again")
    channel.close()

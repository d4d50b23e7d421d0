"""Checkpoints an ended job no longer needs are released: it keeps its newest and its best (the
daemon's training.checkpoints_keep_* or its spec's retain_*), the rest leave its record and the
disk. A sweep's trials keep theirs until the sweep ends (PBT copies them); an interrupted job keeps
all of its own to resume from; a store from before the policy has it applied once at start.
GetJob and ListJobs show the kept checkpoints (up to a cap) and how many were released."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training.job_records import MAX_LISTED_CHECKPOINTS, Checkpoint, JobRecord, decode_job
from tesserad.training.jobs import CHECKPOINTS_RETAINED
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    job_spec,
    of_kind,
    submit,
    upload_standard_datasets,
    wait_sweep,
)

S = training_pb2


def _blob(data_dir: Path, sha256: str) -> Path:
    return data_dir / "blobs" / "sha256" / sha256[:2] / sha256[2:]


def _checkpoint_blobs(data_dir: Path) -> set[str]:
    """The sha256 of every checkpoint file in the blob directory (its safetensors header says so)."""
    found = set()
    for path in (data_dir / "blobs" / "sha256").glob("*/*"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # retention removed it since the listing: not kept
            continue
        if data[8:9] != b"{":  # not a safetensors file (a dataset's)
            continue
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        if "tessera.checkpoint" in header.get("__metadata__", {}):
            found.add(path.parent.name + path.name)
    return found


def _new_checkpoint_blobs(data_dir: Path, before: set[str], kept: set[str]) -> set[str]:
    """The checkpoint files added since `before`, once they are `kept` or 30 s have passed: the
    job's end is committed (and its watchers' streams end) before the released blobs are deleted."""
    deadline = time.monotonic() + 30
    while (found := _checkpoint_blobs(data_dir) - before) != kept and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _shas(checkpoints: tuple[Checkpoint, ...]) -> set[str]:
    return {c.sha256 for c in checkpoints}


def test_an_ended_job_keeps_only_its_newest_and_best_checkpoints(training_daemon, training) -> None:
    data_dir = Path(training_daemon.settings.data_dir)
    before = _checkpoint_blobs(data_dir)
    policy = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=4, retain_latest=1, retain_best=0)
    job = submit(training, job_spec("mlp", epochs=4, seed=101, checkpoints=policy))
    saved = of_kind(follow(training, job.job_id), "checkpoint")
    assert sorted({c.epoch for c in saved}) == [1, 2, 3, 4]

    record = training_daemon.daemon.training.get(job.job_id)
    assert record.state == "succeeded"
    assert [c.epoch for c in record.checkpoints] == [4]
    assert record.checkpoints_released >= 3
    # The released blobs were deleted; the kept one is the only checkpoint file the job left.
    assert _new_checkpoint_blobs(data_dir, before, _shas(record.checkpoints)) == _shas(record.checkpoints)
    assert _blob(data_dir, record.checkpoints[0].sha256).is_file()


def test_the_daemon_defaults_keep_the_newest_and_the_best_by_the_checkpoint_metric(
    training_daemon, training
) -> None:
    data_dir = Path(training_daemon.settings.data_dir)
    before = _checkpoint_blobs(data_dir)
    # Best by the highest train_loss: an early epoch, not the newest one.
    policy = job_spec_pb2.CheckpointPolicy(
        every_n_epochs=1,
        keep_last=5,
        keep_best_metric="train_loss",
        keep_best_mode=job_spec_pb2.OPTIMIZE_MODE_MAX,
    )
    spec = job_spec("mlp", epochs=5, seed=102, checkpoints=policy)
    job = submit(training, spec)
    events = follow(training, job.job_id)
    losses = {
        e.epoch.epoch: e.epoch.metrics["train_loss"] for e in events if e.WhichOneof("event") == "epoch"
    }
    best_epoch = max(losses, key=losses.__getitem__)
    assert best_epoch != 5

    record = training_daemon.daemon.training.get(job.job_id)
    assert [c.epoch for c in record.checkpoints] == sorted({best_epoch, 5})
    assert _new_checkpoint_blobs(data_dir, before, _shas(record.checkpoints)) == _shas(record.checkpoints)


def test_a_pbt_sweep_copies_ended_trials_checkpoints_and_releases_them_when_it_ends(
    training_daemon, training
) -> None:
    data_dir = Path(training_daemon.settings.data_dir)
    jobs = training_daemon.daemon.training
    at_end: dict[str, tuple[Checkpoint, ...]] = {}

    def ended(job: JobRecord, kind: str, _data: dict[str, Any]) -> None:
        if kind == "ended" and job.sweep_id:
            at_end[job.job_id] = job.checkpoints

    jobs.add_listener(ended)
    policy = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=3)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=3, seed=103, checkpoints=policy),
        strategy=S.SWEEP_STRATEGY_PBT,
        parameters=[
            S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=0.001, max=0.1, log_scale=True))
        ],
        max_trials=4,
        metric="val_loss",
        seed=1,
        pbt=S.SweepPbtSettings(population=2),
    )
    sweep = wait_sweep(
        training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=240
    )
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    first, following = sweep.trials[:2], sweep.trials[2:]
    # Each trial ended with all three of its checkpoints: its sweep still ran.
    assert all(len(at_end[t.job_id]) == 3 for t in sweep.trials)
    for trial in following:
        parent = at_end[trial.parent_job_id]
        started = jobs.get(trial.job_id).start_weights
        assert started == max(parent, key=lambda c: c.step).sha256
        logs = [e.log.message for e in follow(training, trial.job_id) if e.WhichOneof("event") == "log"]
        assert "starting from another trial's weights" in logs
    # At the sweep's end each keeps its newest (no checkpoint metric: no best), the rest are gone.
    released = set()
    for trial in [*first, *following]:
        record = jobs.get(trial.job_id)
        assert [c.step for c in record.checkpoints] == [max(c.step for c in at_end[trial.job_id])]
        assert record.checkpoints_released == 2
        released |= _shas(at_end[trial.job_id]) - _shas(record.checkpoints)
        assert _blob(data_dir, record.checkpoints[0].sha256).is_file()
    assert released
    deadline = time.monotonic() + 30  # deleted after the sweep's end commits
    while any(_blob(data_dir, sha256).exists() for sha256 in released):
        assert time.monotonic() < deadline, "released checkpoint blobs are still on disk"
        time.sleep(0.05)


def _read_job(data_dir: Path, job_id: str, forget_marker: bool = False) -> JobRecord:
    store = Store.open(data_dir / "store", map_size=2**30, tables=STORE_TABLES)
    try:
        if forget_marker:  # as a daemon from before the retention policy left the store
            with store.write() as txn:
                txn.delete("meta", CHECKPOINTS_RETAINED)
        with store.read() as txn:
            raw = txn.get("jobs", (job_id,))
        assert raw is not None
        return decode_job(raw)
    finally:
        store.close()


def _daemon(data_dir: Path, **settings: Any) -> tuple[InProcessDaemon, training_pb2_grpc.TrainingStub]:
    daemon = InProcessDaemon(daemon_settings(data_dir, **TRAINING_SETTINGS, **settings)).start()
    return daemon, training_pb2_grpc.TrainingStub(daemon.channel())


def test_a_store_from_before_the_policy_has_it_applied_once_at_start(data_dir: Path) -> None:
    keep_all = {"training.checkpoints_keep_latest": 100, "training.checkpoints_keep_best": 0}
    daemon, training = _daemon(data_dir, **keep_all)
    try:
        upload_standard_datasets(daemon.channel())
        policy = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=3)
        job = submit(training, job_spec("mlp", epochs=3, seed=104, checkpoints=policy))
        follow(training, job.job_id)
    finally:
        daemon.stop()
    kept_all = _read_job(data_dir, job.job_id, forget_marker=True).checkpoints
    assert len(kept_all) == 3

    daemon, training = _daemon(data_dir)
    daemon.stop()
    record = _read_job(data_dir, job.job_id)
    assert [c.epoch for c in record.checkpoints] == [3]
    assert record.checkpoints_released == 2
    assert not any(_blob(data_dir, c.sha256).exists() for c in kept_all[:2])
    assert _blob(data_dir, record.checkpoints[0].sha256).is_file()

    # Once: a later start with a policy that keeps none goes over no ended job again.
    daemon, training = _daemon(data_dir, **{"training.checkpoints_keep_latest": 0})
    daemon.stop()
    assert _read_job(data_dir, job.job_id).checkpoints == record.checkpoints


def test_an_interrupted_job_keeps_its_checkpoints_and_resumes_from_them(data_dir: Path) -> None:
    daemon, training = _daemon(data_dir)
    try:
        upload_standard_datasets(daemon.channel())
        policy = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=3)
        job = submit(training, job_spec("mlp", epochs=200, batch_size=1, seed=105, checkpoints=policy))
        seen = 0
        for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
            seen += event.WhichOneof("event") == "checkpoint"
            if seen == 2:
                break
    finally:
        daemon.stop()
    interrupted = _read_job(data_dir, job.job_id, forget_marker=True)
    assert interrupted.state == "interrupted"
    assert len(interrupted.checkpoints) >= 2 and interrupted.checkpoints_released == 0
    assert all(_blob(data_dir, c.sha256).is_file() for c in interrupted.checkpoints)

    daemon, training = _daemon(data_dir)
    try:
        resumed_from = max(c.epoch for c in interrupted.checkpoints)
        reason = ""
        for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
            if event.WhichOneof("event") == "state" and (event.attempt, event.state.state) == (
                2,
                S.JOB_STATE_RUNNING,
            ):
                reason = event.state.reason
                break
        assert f"resumed from the epoch {resumed_from} checkpoint" in reason
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
        follow(training, job.job_id)
        record = daemon.daemon.training.get(job.job_id)
        assert record.state == "cancelled" and len(record.checkpoints) == 1
    finally:
        daemon.stop()


def test_a_negative_retention_is_refused(training) -> None:
    policy = job_spec_pb2.CheckpointPolicy(retain_latest=-1)
    with pytest.raises(grpc.RpcError) as refused:
        submit(training, job_spec("mlp", checkpoints=policy))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.checkpoints.retain_latest" in (refused.value.details() or "")


def test_get_job_and_list_jobs_show_the_kept_checkpoints_and_how_many_were_released(training) -> None:
    # Best by the highest train_loss: an early epoch, kept beside the final one.
    policy = job_spec_pb2.CheckpointPolicy(
        every_n_epochs=1,
        keep_last=5,
        keep_best_metric="train_loss",
        keep_best_mode=job_spec_pb2.OPTIMIZE_MODE_MAX,
        retain_latest=1,
        retain_best=1,
    )
    submitted = submit(training, job_spec("mlp", epochs=5, seed=103, checkpoints=policy))
    events = follow(training, submitted.job_id)
    saved = {(c.epoch, c.reason): c for c in of_kind(events, "checkpoint")}
    losses = {e.epoch: e.metrics["train_loss"] for e in of_kind(events, "epoch")}
    best_epoch = max(losses, key=losses.__getitem__)
    assert best_epoch != 5

    job = training.GetJob(S.GetJobRequest(job_id=submitted.job_id))
    assert [c.epoch for c in job.checkpoints] == [best_epoch, 5]
    assert (job.checkpoints_kept, job.checkpoints_released) == (2, 3)
    best, final = job.checkpoints
    assert (best.best, best.metrics["train_loss"]) == (True, pytest.approx(losses[best_epoch]))
    assert (final.reason, final.metrics["train_loss"]) == ("final", pytest.approx(losses[5]))
    for listed in job.checkpoints:
        event = saved[(listed.epoch, listed.reason)]
        assert (listed.step, listed.size_bytes) == (event.step, event.size_bytes)
        assert len(listed.sha256) == 64 and listed.created_at.seconds > 0
    assert best.created_at.ToNanoseconds() < final.created_at.ToNanoseconds() <= job.ended_at.ToNanoseconds()

    listed = [j for j in training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs if j.job_id == job.job_id]
    assert listed == [job]


def test_a_job_keeping_more_checkpoints_than_an_answer_lists_says_how_many_it_keeps(training) -> None:
    epochs = MAX_LISTED_CHECKPOINTS + 4
    policy = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=epochs, retain_latest=epochs)
    submitted = submit(training, job_spec("mlp", epochs=epochs, seed=104, checkpoints=policy))
    follow(training, submitted.job_id)
    job = training.GetJob(S.GetJobRequest(job_id=submitted.job_id))
    assert (job.checkpoints_kept, job.checkpoints_released) == (epochs, 0)
    assert [c.epoch for c in job.checkpoints] == list(range(5, epochs + 1))
    assert job.checkpoints[-1].reason == "final"

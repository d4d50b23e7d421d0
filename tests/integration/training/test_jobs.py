"""Training jobs through a real daemon: life cycle per architecture, events, cancel, crashes, DDP."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing.spawn
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.v1 import job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.api.convert_training import job_spec_from_proto
from tesserad.config import Settings
from tesserad.errors import ResourceExhausted
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store
from tesserad.training import jobs as jobs_module
from tesserad.training.jobs import STOPPED_EARLY_STORED
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    forget_stopped_early,
    job_spec,
    of_kind,
    states,
    stopped_early_spec,
    submit,
    upload_dataset,
    upload_standard_datasets,
)

S = training_pb2
FAMILIES = ["mlp", "cnn2d", "cnn4d", "lstm", "transformer"]


@pytest.fixture(scope="module")
def finished(training: training_grpc.TrainingStub) -> dict[str, tuple[S.Job, list[S.JobEvent]]]:
    """One job per family (plus an identical second mlp job), run two at a time, followed to the end."""
    jobs = {
        family: submit(
            training,
            job_spec(family, register_as=job_spec_pb2.RegisterAs(model=f"fam-{family}", alias="staging")),
        )
        for family in FAMILIES
    }
    jobs["mlp-again"] = submit(training, job_spec("mlp"))
    out = {}
    for name, job in jobs.items():
        events = follow(training, job.job_id)
        out[name] = (training.GetJob(S.GetJobRequest(job_id=job.job_id)), events)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_registers_a_version(
    family: str, finished: dict, training_daemon, training: training_grpc.TrainingStub
) -> None:
    job, events = finished[family]
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = of_kind(events, "step")
    assert [s.step for s in steps] == list(range(1, job.total_steps + 1))
    assert all(s.lr > 0 and s.samples_per_s > 0 for s in steps)
    epochs = of_kind(events, "epoch")
    assert [e.epoch for e in epochs] == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "train_accuracy"} <= set(epochs[-1].metrics)
    assert of_kind(events, "progress")[-1].fraction == 1.0
    assert [c.reason for c in of_kind(events, "checkpoint")] == ["periodic", "final"]
    assert of_kind(events, "log")[0].message.startswith("training on cpu")
    registered = of_kind(events, "registered")
    assert registered == [S.VersionRegistered(model=f"fam-{family}", version=1, alias="staging")]
    assert job.registered.model == f"fam-{family}" and job.registered.version == 1
    assert job.progress == 1.0 and job.epoch == 2 and job.attempt == 1 and not job.devices
    registry = registry_pb2_grpc.RegistryStub(training_daemon.channel())
    version = registry.GetVersion(
        registry_pb2.GetVersionRequest(ref={"model": f"fam-{family}", "alias": "staging"})
    )
    assert version.version == 1
    assert version.lineage.job_id == job.job_id and version.lineage.run_id == job.run_id
    assert version.lineage.datasets[0].name == job.spec.data.dataset.name
    assert version.lineage.job_spec.architecture.WhichOneof("family") == family
    assert version.metrics["val_loss"] == pytest.approx(job.metrics["val_loss"])
    run = training.GetRun(S.GetRunRequest(run_id=job.run_id))
    assert run.status == S.RUN_STATUS_SUCCEEDED and run.attempts == 1 and run.job_id == job.job_id
    assert run.params["optimizer.lr"] == "0.01"
    assert {m.key for m in run.metrics} >= {"loss", "lr", "train_loss", "val_loss"}


def test_same_spec_and_seed_give_the_same_loss_curve(
    finished: dict, training: training_grpc.TrainingStub
) -> None:
    curves = []
    for name in ("mlp", "mlp-again"):
        job, _ = finished[name]
        history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=job.run_id, key="loss"))
        curves.append([(p.step, p.value) for p in history.points])
    assert curves[0] == curves[1]
    assert len(curves[0]) == finished["mlp"][0].total_steps


@pytest.mark.parametrize("seed", [2**62, -(2**63)])
def test_a_seed_anywhere_in_the_int64_range_trains(seed: int, training: training_grpc.TrainingStub) -> None:
    # The spec's seed is an int64: a large one is as good as a small one (epoch orders derive
    # from it), not a job that fails at its first epoch.
    job = submit(training, job_spec("mlp", epochs=1, seed=seed))
    events = follow(training, job.job_id)
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED, of_kind(events, "error")


def test_watch_from_the_middle_of_a_finished_job(
    finished: dict, training: training_grpc.TrainingStub
) -> None:
    job, events = finished["mlp"]
    replay = follow(training, job.job_id, from_seq=5)
    assert replay == events[4:]
    # The number after the last is the normal "what comes next", which for an ended job is nothing.
    assert follow(training, job.job_id, from_seq=job.last_seq + 1) == []


def test_a_watch_from_past_a_finished_jobs_next_event_is_out_of_range(
    finished: dict, training: training_grpc.TrainingStub
) -> None:
    job, _ = finished["mlp"]
    with pytest.raises(grpc.RpcError) as caught:
        follow(training, job.job_id, from_seq=job.last_seq + 10)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"last event is {job.last_seq}" in caught.value.details()
    assert "from_seq 0" in caught.value.details()


def test_a_watch_of_a_job_stored_but_not_yet_returned_by_its_submit_sees_it_queued(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ListJobs shows a job once its record is stored, before SubmitJob has answered; a WatchJob
    # of it then answered INTERNAL (a KeyError: its events' channel was opened after the commit).
    jobs = training_daemon.daemon.training
    store, events = jobs._store, jobs._events
    write, subscribe = store.write, events.subscribe
    submitter = threading.get_ident()
    subscribed = threading.Event()
    first: list[S.JobEvent | grpc.RpcError] = []

    def watch() -> None:
        (job,) = training.ListJobs(S.ListJobsRequest(experiment="watched-at-submit")).jobs
        call = training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120)
        try:
            first.append(next(call))
        except grpc.RpcError as exc:
            first.append(exc)
        call.cancel()

    def subscribe_and_say(*args: Any, **kwargs: Any) -> Any:
        try:
            return subscribe(*args, **kwargs)
        finally:
            subscribed.set()

    @contextlib.contextmanager
    def write_then_watch(**kwargs: Any) -> Iterator[Any]:
        with write(**kwargs) as txn:
            yield txn
        if threading.get_ident() == submitter and not watcher.is_alive():
            # The job's record is committed and submit has not gone on: watch it now.
            watcher.start()
            assert subscribed.wait(60)

    watcher = threading.Thread(target=watch)
    monkeypatch.setattr(events, "subscribe", subscribe_and_say)
    monkeypatch.setattr(store, "write", write_then_watch)
    raw, document = job_spec_from_proto(job_spec("mlp", experiment="watched-at-submit"))
    job = jobs.submit(raw, document, "test")
    monkeypatch.undo()
    watcher.join(120)
    training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    (event,) = first
    assert isinstance(event, S.JobEvent), event
    assert (event.seq, event.state.state) == (1, S.JOB_STATE_QUEUED)


def test_submit_job_answers_the_job_as_submitted_though_the_scheduler_starts_it_first(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SubmitJob read its answer back after waking the scheduler: on a loaded machine the job had
    # started by then and the answer said RUNNING (`jobs submit` printed it so).
    jobs = training_daemon.daemon.training
    real_submit, real_get = jobs.submit, jobs.get
    submitting = threading.local()

    def submit_marked(*args: Any, **kwargs: Any) -> Any:
        submitting.now = True
        try:
            return real_submit(*args, **kwargs)
        finally:
            submitting.now = False

    def get_once_started(job_id: str) -> Any:
        # In the submit's thread, the scheduler wins the race: the job starts before this reads it.
        while getattr(submitting, "now", False) and real_get(job_id).state == "queued":
            time.sleep(0.02)
        return real_get(job_id)

    monkeypatch.setattr(jobs, "submit", submit_marked)
    monkeypatch.setattr(jobs, "get", get_once_started)
    job = submit(training, job_spec("mlp", experiment="started-before-answered"))
    monkeypatch.undo()
    events = follow(training, job.job_id)
    assert job.state == S.JOB_STATE_QUEUED and job.last_seq == 1
    assert states(events)[:2] == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING]


def test_get_job_says_why_early_stopping_ended_a_job(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It ended SUCCEEDED at epoch 2 of 50 with nothing in the job to say why: only a watcher
    # that saw the worker's line knew.
    spec = stopped_early_spec()
    job = submit(training, spec)
    events = follow(training, job.job_id)
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert ended.state == S.JOB_STATE_SUCCEEDED and ended.epoch == 2
    # Done, though it trained 2 of its 50 epochs' steps: it read as a job 4% (or 0%) through.
    assert ended.progress == 1.0
    # No val_loss improves by 100: the first epoch's is the best, and the second stops the job.
    first_val_loss = of_kind(events, "epoch")[0].metrics["val_loss"]
    assert ended.stopped_early == S.EarlyStop(
        metric="val_loss",
        mode=job_spec_pb2.OPTIMIZE_MODE_MIN,
        best=first_val_loss,
        best_epoch=1,
        epoch=2,
        patience=1,
        min_delta=100.0,
    )
    lines = [line.message for line in of_kind(events, "log")]
    assert (
        f"early stopping after epoch 2: val_loss did not improve on its best, {first_val_loss:.6g} after "
        "epoch 1, by more than 100.0 for 1 epoch"
    ) in lines, lines

    # Once the job's end is stored, so are its events: a GetJob waited for a group commit all
    # the same, behind every job's metrics.
    jobs = training_daemon.daemon.training
    deadline = time.monotonic() + 60
    while job.job_id in jobs.unended_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    flush, flushes = jobs._store.flush, []

    def counted_flush() -> None:
        flushes.append(1)
        flush()

    monkeypatch.setattr(jobs._store, "flush", counted_flush)
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early == ended.stopped_early
    assert flushes == []
    monkeypatch.undo()

    whole = submit(training, job_spec("mlp", epochs=1))
    follow(training, whole.job_id)
    assert not training.GetJob(S.GetJobRequest(job_id=whole.job_id)).HasField("stopped_early")


def test_list_jobs_and_the_watch_end_say_why_early_stopping_ended_a_job(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = stopped_early_spec(experiment="early-everywhere")
    job = submit(training, spec)
    events = follow(training, job.job_id)
    stopped = training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early
    assert (stopped.metric, stopped.epoch, stopped.patience) == ("val_loss", 2, 1)
    end = [e.state for e in events if e.WhichOneof("event") == "state"][-1]
    assert end.state == S.JOB_STATE_SUCCEEDED and end.stopped_early == stopped
    whole = submit(training, job_spec("mlp", epochs=1, experiment="early-everywhere"))
    whole_events = follow(training, whole.job_id)
    assert not [e.state for e in whole_events if e.WhichOneof("event") == "state"][-1].HasField(
        "stopped_early"
    )

    # The jobs' records hold it: a list reads no job's events, however many jobs it lists.
    events_log = training_daemon.daemon.training._events
    newest, reads = events_log.newest, []

    def counted_newest(job_id: str, limit: int) -> list[Any]:
        reads.append(job_id)
        return newest(job_id, limit)

    monkeypatch.setattr(events_log, "newest", counted_newest)
    listed = training.ListJobs(S.ListJobsRequest(experiment="early-everywhere")).jobs
    assert [(j.job_id, j.stopped_early) for j in listed if j.HasField("stopped_early")] == [
        (job.job_id, stopped)
    ]
    assert [j.job_id for j in listed] == [whole.job_id, job.job_id]
    assert reads == []


def _stored_as_by_an_older_daemon(
    settings: Settings, specs: list[job_spec_pb2.JobSpec], *, before_the_pass: bool = True
) -> list[S.Job]:
    """Run each of `specs` to its end, then leave its record and its end as an older daemon
    (of store schema 3) stored them: without why early stopping ended it, which only the
    worker's line holds. `before_the_pass`: that daemon is older than the start-up pass that
    stores it; else it ran after this one had made the pass (a downgrade and back). Returns the
    jobs as GetJob answered them before."""
    daemon = InProcessDaemon(settings).start()
    try:
        upload_standard_datasets(daemon.channel())
        training = training_grpc.TrainingStub(daemon.channel())
        submitted = [submit(training, spec) for spec in specs]
        for job in submitted:
            follow(training, job.job_id)
        ended = [training.GetJob(S.GetJobRequest(job_id=job.job_id)) for job in submitted]
    finally:
        daemon.stop()
    store = Store.open(settings.data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            for job in ended:
                forget_stopped_early(txn, job.job_id)
            if before_the_pass:
                txn.delete("meta", STOPPED_EARLY_STORED)
    finally:
        store.close()
    return ended


def test_a_job_record_from_an_older_daemon_says_why_early_stopping_ended_it(tmp_path: Path) -> None:
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    spec = stopped_early_spec()
    (job,) = _stored_as_by_an_older_daemon(settings, [spec], before_the_pass=False)
    stopped = job.stopped_early
    assert stopped.epoch == 2
    restarted = InProcessDaemon(settings).start()
    try:
        training = training_grpc.TrainingStub(restarted.channel())
        assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early == stopped
        (listed,) = training.ListJobs(S.ListJobsRequest()).jobs
        assert listed.stopped_early == stopped
        end = [e.state for e in follow(training, job.job_id) if e.WhichOneof("event") == "state"][-1]
        assert end.stopped_early == stopped
    finally:
        restarted.stop()


def test_a_store_with_no_room_for_the_start_up_pass_starts_and_answers_from_the_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The pass wrote into the store's reserve, kept for writes that end something or free
    # space, though it grows records: now it leaves them to a start that has room.
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    spec = stopped_early_spec()
    (job,) = _stored_as_by_an_older_daemon(settings, [spec])
    each_row_once = jobs_module.each_row_once

    def no_room_for_the_pass(store: Store, table: str, marker: tuple[str], *args: Any, **kwargs: Any) -> int:
        if marker == STOPPED_EARLY_STORED:
            assert not kwargs.get("reserved")
            raise ResourceExhausted("the store is full (store.map_size = 64 MiB); raise it")
        return each_row_once(store, table, marker, *args, **kwargs)

    monkeypatch.setattr(jobs_module, "each_row_once", no_room_for_the_pass)
    restarted = InProcessDaemon(settings).start()
    try:
        training = training_grpc.TrainingStub(restarted.channel())
        assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early == job.stopped_early
    finally:
        restarted.stop()
    assert "the store has no room to store why early stopping ended the jobs" in caplog.text


def test_the_next_start_stores_why_early_stopping_ended_a_job_an_older_daemon_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Answering it from the job's events on every GetJob and ListJobs (the dashboard lists jobs
    # every 2 s) read them forever: the start stores it once, or that it did not stop early.
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    stopped_job, whole_job = _stored_as_by_an_older_daemon(
        settings, [stopped_early_spec(), stopped_early_spec(epochs=1)]
    )
    assert stopped_job.stopped_early.epoch == 2 and not whole_job.HasField("stopped_early")
    restarted = InProcessDaemon(settings).start()
    try:
        jobs = restarted.daemon.training
        with jobs._store.read() as txn:
            records = {
                job.job_id: json.loads(txn.get("jobs", (job.job_id,)) or b"{}")["data"]
                for job in (stopped_job, whole_job)
            }
        assert records[stopped_job.job_id]["stopped_early"]["epoch"] == 2
        assert records[whole_job.job_id]["stopped_early"] is None

        newest, reads = jobs._events.newest, []

        def counted_newest(job_id: str, limit: int) -> list[Any]:
            reads.append(job_id)
            return newest(job_id, limit)

        monkeypatch.setattr(jobs._events, "newest", counted_newest)
        training = training_grpc.TrainingStub(restarted.channel())
        listed = training.ListJobs(S.ListJobsRequest()).jobs
        assert {j.job_id: j.stopped_early for j in listed if j.HasField("stopped_early")} == {
            stopped_job.job_id: stopped_job.stopped_early
        }
        got = training.GetJob(S.GetJobRequest(job_id=stopped_job.job_id))
        assert got.stopped_early == stopped_job.stopped_early
        assert reads == []
    finally:
        restarted.stop()


def test_watch_and_get_unknown_job_is_not_found(training: training_grpc.TrainingStub) -> None:
    for call in (
        lambda: follow(training, "job-nope"),
        lambda: training.GetJob(S.GetJobRequest(job_id="job-nope")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "job-nope" in info.value.details()


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.GetJob(S.GetJobRequest()),
        lambda t: t.CancelJob(S.CancelJobRequest()),
        lambda t: next(iter(t.WatchJob(S.WatchJobRequest()))),
    ],
    ids=["GetJob", "CancelJob", "WatchJob"],
)
def test_a_job_call_without_a_job_id_says_it_is_required(call, training: training_grpc.TrainingStub) -> None:
    # It was NOT_FOUND "job '' does not exist", as if an id had been given.
    with pytest.raises(grpc.RpcError) as info:
        call(training)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id is required" in info.value.details()


def test_list_jobs_filters_and_pages(finished: dict, training: training_grpc.TrainingStub) -> None:
    done = training.ListJobs(S.ListJobsRequest(states=[S.JOB_STATE_SUCCEEDED], experiment="tests"))
    ids = [j.job_id for j in done.jobs]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert {j for j, _ in [(job.job_id, 0) for job, _ in finished.values()]} <= set(ids)
    first = training.ListJobs(S.ListJobsRequest(states=[S.JOB_STATE_SUCCEEDED], page_size=2))
    second = training.ListJobs(
        S.ListJobsRequest(states=[S.JOB_STATE_SUCCEEDED], page_size=2, page_token=first.next_page_token)
    )
    assert len(first.jobs) == 2 and first.next_page_token
    assert not {j.job_id for j in first.jobs} & {j.job_id for j in second.jobs}
    with pytest.raises(grpc.RpcError) as info:
        training.ListJobs(S.ListJobsRequest(page_size=2, page_token=first.next_page_token))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # No experiment has such a name: refused as ListRuns refuses it, not an empty list.
    with pytest.raises(grpc.RpcError) as info:
        training.ListJobs(S.ListJobsRequest(experiment="Tests"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "experiment 'Tests' is not a valid name" in info.value.details()


@pytest.mark.parametrize("state", [S.JOB_STATE_UNSPECIFIED, 99])
def test_list_jobs_by_an_unknown_state_says_which_states_there_are(
    state: int, training: training_grpc.TrainingStub
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        training.ListJobs(S.ListJobsRequest(states=[S.JOB_STATE_QUEUED, state]))
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"states[1]: unknown job state {state}; use QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED or "
        "INTERRUPTED",
    )


def test_a_page_of_jobs_ends_before_its_records_outgrow_a_message(
    training: training_grpc.TrainingStub,
) -> None:
    # About 1 MB of tags each (130 values of 8000 characters, the longest a tag takes): five
    # jobs are more than gRPC's default 4 MiB receive limit, which a page must stay within
    # whatever page_size asks for, as every other listing does.
    spec = job_spec("mlp", experiment="big-tags")
    spec.tags.update({f"note-{i}": "x" * 8000 for i in range(130)})
    submitted = []
    for _ in range(5):
        job = submit(training, spec)
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
        submitted.append(job.job_id)
    listed, token = [], ""
    while True:
        page = training.ListJobs(S.ListJobsRequest(experiment="big-tags", page_size=1000, page_token=token))
        assert page.jobs
        listed += [job.job_id for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert listed == submitted[::-1]


def _wait_for(training: training_grpc.TrainingStub, job_id: str, state: int, timeout: float = 60) -> S.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = training.GetJob(S.GetJobRequest(job_id=job_id))
        if job.state == state and (state != S.JOB_STATE_RUNNING or job.step > 0):
            return job
        time.sleep(0.05)
    raise AssertionError(
        f"job {job_id} never reached {S.JobState.Name(state)}; it is {S.JobState.Name(job.state)}"
    )


def long_spec(**fields) -> job_spec_pb2.JobSpec:
    return job_spec("mlp", epochs=0, max_steps=1_000_000, **fields)


def test_two_jobs_run_at_once_and_cancel_stops_them(training: training_grpc.TrainingStub) -> None:
    first, second = submit(training, long_spec()), submit(training, long_spec())
    queued = submit(training, long_spec(priority=-1))
    a = _wait_for(training, first.job_id, S.JOB_STATE_RUNNING)
    b = _wait_for(training, second.job_id, S.JOB_STATE_RUNNING)
    assert sorted([*a.devices, *b.devices]) == ["cpu:0", "cpu:1"]
    assert training.GetJob(S.GetJobRequest(job_id=queued.job_id)).state == S.JOB_STATE_QUEUED

    cancelled = training.CancelJob(S.CancelJobRequest(job_id=queued.job_id))
    assert cancelled.state == S.JOB_STATE_CANCELLED
    for job in (first, second):
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    for job in (first, second):
        events = follow(training, job.job_id)
        assert states(events)[-1] == S.JOB_STATE_CANCELLED
        assert of_kind(events, "state")[-1].reason == "cancelled at a step boundary"
        run = training.GetRun(
            S.GetRunRequest(run_id=training.GetJob(S.GetJobRequest(job_id=job.job_id)).run_id)
        )
        assert run.status == S.RUN_STATUS_CANCELLED
    with pytest.raises(grpc.RpcError) as info:
        training.CancelJob(S.CancelJobRequest(job_id=first.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended (cancelled)" in info.value.details()


def _scrape(training_daemon) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The daemon's /metrics: family name -> {sorted labels: value}."""
    url = f"http://127.0.0.1:{training_daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_metrics_show_jobs_by_state_the_queue_and_each_running_jobs_speed(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    ended_before = _scrape(training_daemon)["tessera_training_jobs"][(("state", "cancelled"),)]
    first, second = submit(training, long_spec()), submit(training, long_spec())
    queued = submit(training, long_spec(priority=-1))
    running = {first.job_id, second.job_id}
    for job_id in running:
        _wait_for(training, job_id, S.JOB_STATE_RUNNING)
    deadline = time.monotonic() + 60
    while True:
        scraped = _scrape(training_daemon)
        timed = {dict(labels)["job_id"] for labels in scraped["tessera_training_job_steps_per_second"]}
        if timed >= running or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert timed == running
    assert scraped["tessera_training_jobs"][(("state", "running"),)] == 2
    assert scraped["tessera_training_jobs"][(("state", "queued"),)] == 1
    assert scraped["tessera_training_queue_length"][()] == 1
    for job_id in running:
        assert scraped["tessera_training_job_steps_per_second"][(("job_id", job_id),)] > 0
        assert scraped["tessera_training_job_samples_per_second"][(("job_id", job_id),)] > 0

    for job in (queued, first, second):
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    for job_id in running:
        follow(training, job_id)
    scraped = _scrape(training_daemon)
    assert scraped["tessera_training_job_steps_per_second"] == {}
    assert scraped["tessera_training_job_samples_per_second"] == {}
    assert scraped["tessera_training_jobs"][(("state", "running"),)] == 0
    assert scraped["tessera_training_jobs"][(("state", "cancelled"),)] == ended_before + 3
    assert scraped["tessera_training_queue_length"][()] == 0


def _worker_pids() -> set[int]:
    """The daemon's job workers: the children of its fork server (training.worker_start)."""
    return {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if "forkserver" in " ".join(child.parent().cmdline())
    }


@pytest.mark.parametrize(
    ("sig", "kind", "words"),
    [
        (signal.SIGSEGV, "crash", "died from SIGSEGV"),
        (signal.SIGKILL, "out_of_memory", "out-of-memory killer"),
    ],
)
def test_a_worker_crash_fails_only_its_job(
    sig: int, kind: str, words: str, training: training_grpc.TrainingStub
) -> None:
    before = _worker_pids()
    victim = submit(training, long_spec())
    _wait_for(training, victim.job_id, S.JOB_STATE_RUNNING)
    (pid,) = _worker_pids() - before
    psutil.Process(pid).send_signal(sig)
    events = follow(training, victim.job_id)
    assert states(events)[-1] == S.JOB_STATE_FAILED
    (error,) = of_kind(events, "error")
    assert error.kind == kind and words in error.message
    job = training.GetJob(S.GetJobRequest(job_id=victim.job_id))
    assert words in job.error and not job.devices
    if sig == signal.SIGSEGV:
        # The daemon and the next job are unharmed.
        after = submit(training, job_spec("mlp", epochs=1))
        assert states(follow(training, after.job_id))[-1] == S.JOB_STATE_SUCCEEDED


def test_a_model_too_big_for_memory_fails_as_out_of_memory(training: training_grpc.TrainingStub) -> None:
    # The second layer's weights (65536 x 65536 x 3**4 floats, 1.4 TB) are more than the host
    # could ever give: the allocator refuses them at once, without touching memory.
    spec = job_spec("cnn4d", epochs=1)
    spec.architecture.cnn4d.channels[:] = [65536, 65536]
    events = follow(training, submit(training, spec).job_id)
    (error,) = of_kind(events, "error")
    assert error.kind == "out_of_memory"
    assert error.message == (
        "the worker ran out of memory: it asked for 1.27 TiB at once; use a smaller batch_size or model"
    )
    assert states(events)[-1] == S.JOB_STATE_FAILED


def test_a_watch_from_past_a_running_jobs_next_event_is_refused_not_left_waiting(
    training: training_grpc.TrainingStub,
) -> None:
    job = submit(training, long_spec())
    try:
        running = _wait_for(training, job.job_id, S.JOB_STATE_RUNNING)
        stale = S.WatchJobRequest(job_id=job.job_id, from_seq=running.last_seq + 10**9)
        with pytest.raises(grpc.RpcError) as caught:
            list(training.WatchJob(stale, timeout=60))
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "from_seq 0 replays them all" in caught.value.details()
        upcoming = training.WatchJob(S.WatchJobRequest(job_id=job.job_id, from_seq=running.last_seq + 1))
        assert next(upcoming).seq >= running.last_seq + 1
        upcoming.cancel()
    finally:
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_CANCELLED


def test_a_dead_fork_server_leaves_running_jobs_alone(training: training_grpc.TrainingStub) -> None:
    before = _worker_pids()
    job = submit(training, long_spec())
    _wait_for(training, job.job_id, S.JOB_STATE_RUNNING)
    (pid,) = _worker_pids() - before
    fork_server = psutil.Process(pid).parent()
    fork_server.kill()
    # Not psutil's wait(): reaping the daemon's child here would take its exit status from
    # multiprocessing, which checks it before starting a new fork server.
    deadline = time.monotonic() + 10
    while fork_server.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    # The worker answers to the daemon, not to the process that forked it: it trains on.
    step = training.GetJob(S.GetJobRequest(job_id=job.job_id)).step
    deadline = time.monotonic() + 60
    while training.GetJob(S.GetJobRequest(job_id=job.job_id)).step < step + 20:
        assert time.monotonic() < deadline, "the job stopped stepping after its fork server died"
        time.sleep(0.05)
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    events = follow(training, job.job_id)
    assert states(events)[-1] == S.JOB_STATE_CANCELLED
    assert of_kind(events, "state")[-1].reason == "cancelled at a step boundary"
    # The next job gets a new fork server.
    after = submit(training, job_spec("mlp", epochs=1))
    assert states(follow(training, after.job_id))[-1] == S.JOB_STATE_SUCCEEDED


def test_nonfinite_loss_fails_the_job_clearly(training_daemon, training: training_grpc.TrainingStub) -> None:
    huge = np.full((16, 6), 3e38, np.float32)
    upload_dataset(training_daemon.channel(), "huge", {"x": huge, "t": huge[:, :1]})
    spec = job_spec("mlp", task=job_spec_pb2.TASK_REGRESSION)
    spec.architecture.output_size = 1
    spec.data.dataset.name, spec.data.target_array = "huge", "t"
    events = follow(training, submit(training, spec).job_id)
    (error,) = of_kind(events, "error")
    assert error.kind == "nonfinite_loss"
    assert "loss became inf at epoch 1, step 1" in error.message and "optimizer.lr" in error.message
    assert states(events)[-1] == S.JOB_STATE_FAILED


def test_ddp_with_gloo_on_two_processes(training: training_grpc.TrainingStub) -> None:
    spec = job_spec("mlp", epochs=1, devices=job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=2))
    job = submit(training, spec)
    events = follow(training, job.job_id)
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED, of_kind(events, "error")
    assert of_kind(events, "state")[1].devices == ["cpu:0", "cpu:1"]
    assert "rank 0 of 2" in of_kind(events, "log")[0].message
    # 72 training samples, 24 per process per step: 2 steps per epoch.
    assert [s.step for s in of_kind(events, "step")] == [1, 2]


class _SecondRankCannotStart:
    """The daemon's worker context, but the start of each job's rank 1 fails (as a fork does when
    the host is out of processes or memory)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def Pipe(self) -> Any:
        return self._context.Pipe()

    def Process(self, **fields: Any) -> Any:
        process = self._context.Process(**fields)
        if fields["name"].endswith("-1"):

            def refuse() -> None:
                raise OSError("[Errno 11] Resource temporarily unavailable")

            process.start = refuse
        return process


def test_a_job_whose_second_rank_cannot_start_leaves_no_worker_behind(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 was started and left waiting for its peer, outliving its failed job and holding
    # a process (and its memory) the scheduler had given back.
    jobs = training_daemon.daemon.training
    monkeypatch.setattr(jobs, "_mp", _SecondRankCannotStart(jobs._mp))
    before = _worker_pids()
    spec = job_spec("mlp", epochs=1, devices=job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=2))
    job = submit(training, spec)
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_FAILED
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert ended.error == "the job could not start: [Errno 11] Resource temporarily unavailable"
    assert not ended.devices
    assert _worker_pids() - before == set()


class _NoRankCanStart:
    """The daemon's worker context, but each worker's start fails with `error`."""

    def __init__(self, context: Any, error: OSError) -> None:
        self._context = context
        self._error = error

    def Pipe(self) -> Any:
        return self._context.Pipe()

    def Process(self, **fields: Any) -> Any:
        process = self._context.Process(**fields)

        def refuse() -> None:
            raise self._error

        process.start = refuse
        return process


def test_a_job_the_host_cannot_start_says_why_and_blames_no_interpreter(
    training_daemon, training: training_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Out of file descriptors, the interpreter's probe would fail too and read as the
    # interpreter's fault; an interpreter that cannot be run stands in for that failing probe.
    jobs = training_daemon.daemon.training
    monkeypatch.setattr(
        jobs, "_mp", _NoRankCanStart(jobs._mp, OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
    )
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", str(tmp_path / "no-python"))
    job = submit(training, job_spec("mlp", epochs=1))
    assert states(follow(training, job.job_id))[-1] == S.JOB_STATE_FAILED
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert ended.error == f"the job could not start: [Errno {errno.EMFILE}] {os.strerror(errno.EMFILE)}"


@pytest.mark.cuda
def test_cuda_job_trains_on_a_gpu(training: training_grpc.TrainingStub) -> None:
    pytest.importorskip("torch")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    spec = job_spec("cnn4d", devices=job_spec_pb2.DeviceRequest(gpu_count=1))
    events = follow(training, submit(training, spec).job_id)
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED
    assert of_kind(events, "state")[1].devices == ["cuda:0"]


def test_cancel_unknown_job_is_not_found(training: training_grpc.TrainingStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        training.CancelJob(S.CancelJobRequest(job_id="no-such-job"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-job" in info.value.details()


def test_spawned_workers_train_the_same_curve_as_forked_ones(
    tmp_path: Path, training: training_grpc.TrainingStub
) -> None:
    """training.worker_start = spawn: a fresh interpreter per worker, the same training."""
    spawning = InProcessDaemon(
        daemon_settings(tmp_path / "data", **TRAINING_SETTINGS, **{"training.worker_start": "spawn"})
    ).start()
    try:
        upload_standard_datasets(spawning.channel())
        curves = []
        for stub in (training, training_grpc.TrainingStub(spawning.channel())):
            events = follow(stub, submit(stub, job_spec("mlp")).job_id)
            assert states(events)[-1] == S.JOB_STATE_SUCCEEDED, of_kind(events, "error")
            curves.append([(s.step, s.loss) for s in of_kind(events, "step")])
        assert curves[0] == curves[1] and len(curves[0]) == 6
    finally:
        spawning.stop()


def test_a_job_that_starts_another_attempt_no_longer_says_an_earlier_attempt_stopped_early(
    tmp_path: Path,
) -> None:
    # An attempt said early stopping ended its training, and its final checkpoint was never
    # stored; the next attempt, from an earlier checkpoint, fails before its first epoch. Its
    # training did not end by early stopping: the FAILED job must not say it did.
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    spec = stopped_early_spec(
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=2, retain_latest=2)
    )
    daemon = InProcessDaemon(settings).start()
    try:
        upload_standard_datasets(daemon.channel())
        training = training_grpc.TrainingStub(daemon.channel())
        job = submit(training, spec)
        follow(training, job.job_id)
        assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early.epoch == 2
    finally:
        daemon.stop()
    store = Store.open(settings.data_dir / "store", map_size=1 << 26, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            raw = txn.get("jobs", (job.job_id,))
            assert raw is not None
            record = json.loads(raw)
            data = record["data"]
            (earlier,) = [c for c in data["checkpoints"] if c["reason"] != "final"]
            data["checkpoints"] = [earlier]
            data["state"], data["ended_at"] = "interrupted", None
            txn.put("jobs", (job.job_id,), json.dumps(record).encode())
    finally:
        store.close()
    # The next attempt cannot read the checkpoint it resumes from.
    BlobStore(settings.data_dir / "blobs").path(earlier["sha256"]).unlink()

    restarted = InProcessDaemon(settings).start()
    try:
        training = training_grpc.TrainingStub(restarted.channel())
        follow(training, job.job_id, from_seq=data["last_seq"] + 1)
        failed = training.GetJob(S.GetJobRequest(job_id=job.job_id))
        assert (failed.state, failed.attempt) == (S.JOB_STATE_FAILED, 2)
        assert failed.error.startswith("the job could not start: ")
        assert not failed.HasField("stopped_early")
    finally:
        restarted.stop()

"""A job early stopping ended whose registration then failed: its record and every answer about it
say both, that early stopping ended its training and that registering its weights failed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tessera.v1 import job_spec_pb2, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.conftest import http_get
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    forget_stopped_early,
    stopped_early_spec,
    submit,
    upload_standard_datasets,
)

S = training_pb2


@pytest.fixture(scope="module")
def training_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    # The trained MLP's weights (about 1 KiB) are over the limit: the registry refuses them.
    settings = daemon_settings(
        tmp_path_factory.mktemp("unregistered") / "data",
        **TRAINING_SETTINGS,
        **{"limits.max_artifact_size": "256B"},
    )
    running = InProcessDaemon(settings).start()
    upload_standard_datasets(running.channel())
    yield running
    running.stop()


def test_a_job_stopped_early_whose_registration_failed_says_both(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub
) -> None:
    spec = stopped_early_spec(
        experiment="stopped-unregistered",
        register_as=job_spec_pb2.RegisterAs(model="too-big", alias="staging"),
    )
    job = submit(training, spec)
    events = follow(training, job.job_id)

    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.epoch) == (S.JOB_STATE_FAILED, 2)
    assert ended.error.startswith("training succeeded but registering the weights failed: the artifact is ")
    assert "over limits.max_artifact_size (256 B)" in ended.error
    assert not ended.HasField("registered")
    stopped = ended.stopped_early
    assert (stopped.metric, stopped.epoch, stopped.best_epoch, stopped.patience) == ("val_loss", 2, 1, 1)

    (listed,) = training.ListJobs(S.ListJobsRequest(experiment="stopped-unregistered")).jobs
    assert listed.stopped_early == stopped
    errors = [e.error for e in events if e.WhichOneof("event") == "error"]
    assert [(e.kind, e.message) for e in errors] == [("registration", ended.error)]
    end = [e.state for e in events if e.WhichOneof("event") == "state"][-1]
    assert (end.state, end.stopped_early) == (S.JOB_STATE_FAILED, stopped)
    replayed = [e.state for e in follow(training, job.job_id) if e.WhichOneof("event") == "state"][-1]
    assert replayed.stopped_early == stopped

    dashboard = http_get(training_daemon.daemon.http_port, f"/api/v1/jobs/{job.job_id}").json()
    assert dashboard["state"] == "failed" and dashboard["error"]["kind"] == "registration"
    assert dashboard["stopped_early"]["epoch"] == 2

    # The record holds it: a later start, or a reader of the store, finds it there.
    with training_daemon.daemon.training._store.read() as txn:
        raw = txn.get("jobs", (job.job_id,))
    assert raw is not None
    record = json.loads(raw)["data"]
    assert (record["state"], record["error"]["kind"]) == ("failed", "registration")
    assert record["stopped_early"]["epoch"] == 2


def test_a_failed_job_stored_by_an_older_daemon_says_it_stopped_early_from_its_events(
    training_daemon: InProcessDaemon, training: training_grpc.TrainingStub
) -> None:
    spec = stopped_early_spec(
        experiment="stopped-unregistered-older", register_as=job_spec_pb2.RegisterAs(model="too-big")
    )
    job = submit(training, spec)
    follow(training, job.job_id)
    stopped = training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early
    assert stopped.epoch == 2
    # Its record and its end as the oldest daemons stored them: neither says it, the worker's
    # line alone does.
    with training_daemon.daemon.training._store.write() as txn:
        assert forget_stopped_early(txn, job.job_id)["state"] == "failed"

    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).stopped_early == stopped
    (listed,) = training.ListJobs(S.ListJobsRequest(experiment="stopped-unregistered-older")).jobs
    assert listed.stopped_early == stopped
    replayed = [e.state for e in follow(training, job.job_id) if e.WhichOneof("event") == "state"][-1]
    assert (replayed.state, replayed.stopped_early) == (S.JOB_STATE_FAILED, stopped)

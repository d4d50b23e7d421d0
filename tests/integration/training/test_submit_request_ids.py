"""SubmitJob's request_id (AIP-155): a submit sent again with its id answers the job the first
created, across a restart and after the job ended; another spec under that id is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    job_spec,
    upload_standard_datasets,
)


def _job_ids(training: training_pb2_grpc.TrainingStub) -> list[str]:
    return [job.job_id for job in training.ListJobs(training_pb2.ListJobsRequest(page_size=1000)).jobs]


def _submit(training: training_pb2_grpc.TrainingStub, request_id: str, **fields: object) -> training_pb2.Job:
    return training.SubmitJob(training_pb2.SubmitJobRequest(spec=job_spec(**fields), request_id=request_id))


def test_a_repeated_submit_answers_the_job_it_first_created_even_once_ended(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    request_id = str(uuid.uuid4())
    before = _job_ids(training)
    first = _submit(training, request_id)
    again = _submit(training, request_id)
    assert again.job_id == first.job_id
    assert again.spec == first.spec
    follow(training, first.job_id)
    ended = _submit(training, request_id)
    assert ended.job_id == first.job_id
    assert ended.state == training_pb2.JOB_STATE_SUCCEEDED
    assert _job_ids(training) == [first.job_id, *before]


def test_the_same_request_id_with_another_spec_is_refused_and_stores_nothing(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    request_id = str(uuid.uuid4())
    first = _submit(training, request_id)
    before = _job_ids(training)
    with pytest.raises(grpc.RpcError) as info:
        _submit(training, request_id, epochs=3)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        f"request_id {request_id!r} was already used to submit job {first.job_id!r} with another "
        "spec; use a new request_id for a new job"
    )
    assert _job_ids(training) == before


@pytest.mark.parametrize("request_id", ["x" * 65, "has space", "slash/ed", "ünï"])
def test_a_malformed_request_id_is_invalid_argument_naming_it(
    training: training_pb2_grpc.TrainingStub, request_id: str
) -> None:
    before = _job_ids(training)
    with pytest.raises(grpc.RpcError) as info:
        _submit(training, request_id)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request_id: ")
    assert "1 to 64 characters from A-Z a-z 0-9 - _" in info.value.details()
    assert _job_ids(training) == before


def test_submits_without_a_request_id_each_create_a_job(training: training_pb2_grpc.TrainingStub) -> None:
    first = _submit(training, "")
    second = _submit(training, "")
    assert first.job_id != second.job_id


def test_a_request_id_outlives_a_daemon_restart(tmp_path: Path) -> None:
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    request_id = str(uuid.uuid4())
    daemon = InProcessDaemon(settings).start()
    try:
        upload_standard_datasets(daemon.channel())
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        first = _submit(training, request_id)
        follow(training, first.job_id)
    finally:
        daemon.stop()
    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        assert _submit(training, request_id).job_id == first.job_id
        assert _job_ids(training) == [first.job_id]
    finally:
        restarted.stop()

"""SubmitSweep's request_id (AIP-155), as SubmitJob's: a submit sent again with its id answers the
sweep the first created, across a restart and after the sweep ended; another spec under that id
is refused, naming the sweep, and stores nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from tessera.v1 import training_pb2, training_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    job_spec,
    sweep_values,
    upload_standard_datasets,
    wait_sweep,
)

S = training_pb2


def _sweep_ids(training: training_pb2_grpc.TrainingStub) -> list[str]:
    return [s.sweep_id for s in training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps]


def _job_ids(training: training_pb2_grpc.TrainingStub) -> list[str]:
    return [job.job_id for job in training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs]


def _submit(training: training_pb2_grpc.TrainingStub, request_id: str, *lrs: str) -> S.Sweep:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", *(lrs or ("0.01",)))],
        metric="val_loss",
    )
    return training.SubmitSweep(S.SubmitSweepRequest(spec=spec, request_id=request_id))


def test_a_repeated_sweep_submit_answers_the_sweep_it_first_created_even_once_ended(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    request_id = str(uuid.uuid4())
    before = _sweep_ids(training)
    first = _submit(training, request_id)
    again = _submit(training, request_id)
    assert again.sweep_id == first.sweep_id
    assert again.spec == first.spec
    wait_sweep(training, first.sweep_id)
    jobs = _job_ids(training)
    ended = _submit(training, request_id)
    assert (ended.sweep_id, ended.state) == (first.sweep_id, S.SWEEP_STATE_SUCCEEDED)
    assert _sweep_ids(training) == [first.sweep_id, *before]
    assert _job_ids(training) == jobs


def test_the_same_request_id_with_another_sweep_spec_is_refused_and_stores_nothing(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    request_id = str(uuid.uuid4())
    first = _submit(training, request_id)
    sweeps, jobs = _sweep_ids(training), _job_ids(training)
    with pytest.raises(grpc.RpcError) as info:
        _submit(training, request_id, "0.01", "0.02")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        f"request_id {request_id!r} was already used to submit sweep {first.sweep_id!r} with another "
        "spec; use a new request_id for a new sweep"
    )
    assert (_sweep_ids(training), _job_ids(training)) == (sweeps, jobs)


def test_job_and_sweep_request_ids_are_apart(training: training_pb2_grpc.TrainingStub) -> None:
    request_id = str(uuid.uuid4())
    job = training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", epochs=1), request_id=request_id))
    sweep = _submit(training, request_id)
    assert job.sweep_id == "" and sweep.sweep_id


@pytest.mark.parametrize("request_id", ["x" * 65, "has space", "slash/ed", "ünï"])
def test_a_malformed_sweep_request_id_is_invalid_argument_naming_it(
    training: training_pb2_grpc.TrainingStub, request_id: str
) -> None:
    before = _sweep_ids(training)
    with pytest.raises(grpc.RpcError) as info:
        _submit(training, request_id)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request_id: ")
    assert "1 to 64 characters from A-Z a-z 0-9 - _" in info.value.details()
    assert _sweep_ids(training) == before


def test_sweep_submits_without_a_request_id_each_create_a_sweep(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    assert _submit(training, "").sweep_id != _submit(training, "").sweep_id


def test_a_sweep_request_id_outlives_a_daemon_restart(tmp_path: Path) -> None:
    settings = daemon_settings(tmp_path / "data", **TRAINING_SETTINGS)
    request_id = str(uuid.uuid4())
    daemon = InProcessDaemon(settings).start()
    try:
        upload_standard_datasets(daemon.channel())
        training = training_pb2_grpc.TrainingStub(daemon.channel())
        first = _submit(training, request_id)
        wait_sweep(training, first.sweep_id)
    finally:
        daemon.stop()
    restarted = InProcessDaemon(settings).start()
    try:
        training = training_pb2_grpc.TrainingStub(restarted.channel())
        assert _submit(training, request_id).sweep_id == first.sweep_id
        assert _sweep_ids(training) == [first.sweep_id]
    finally:
        restarted.stop()

"""A job's register_as.alias that would be new to a model at its 1,000-alias cap is refused at
SubmitJob, as SetAlias refuses it: the job used to train for its whole run and then fail to
register. When the model reaches the cap while the job runs, even as its version is being
committed, the job registers its version without the alias and says so in a warning, rather than
lose the trained model."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tests.integration.registry.conftest import rpc_error
from tests.integration.registry.test_alias_cap_race import fill_while_checking
from tests.integration.training.conftest import (
    follow,
    job_spec,
    model_with_aliases,
    submit,
)

S = training_pb2
R = registry_pb2
CAP = 1000


def _cap_message(model: str, alias: str) -> str:
    return (
        f"model {model!r} has 1,000 aliases; a model holds at most 1,000, so that one answer can carry "
        f"them all. Delete aliases it no longer uses (DeleteAlias), or move one of them instead of "
        f"adding {alias!r}"
    )


@pytest.fixture(scope="module")
def registry(training_daemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(training_daemon.channel())


def test_a_new_alias_on_a_model_at_the_cap_is_refused_at_submit(
    registry, training: training_grpc.TrainingStub, training_daemon
):
    model_with_aliases(registry, training_daemon, "capped", CAP)
    before = len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs)
    spec = job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="capped", alias="fresh"))
    error = rpc_error(submit, training, spec)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == f"spec.register_as.alias: {_cap_message('capped', 'fresh')}"
    assert len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs) == before

    # An alias the model has moves, as SetAlias moves it: that job is taken, and registers.
    spec = job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="capped", alias="held-0007"))
    job = submit(training, spec)
    follow(training, job.job_id)
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert ended.state == S.JOB_STATE_SUCCEEDED
    moved = registry.GetAlias(R.GetAliasRequest(model="capped", alias="held-0007"))
    assert moved.version == ended.registered.version == 2
    assert ended.registered_alias == "held-0007"


def test_a_model_that_reaches_the_cap_while_the_job_runs_gets_the_version_without_the_alias(
    registry, training: training_grpc.TrainingStub, training_daemon
) -> None:
    model_with_aliases(registry, training_daemon, "filling", CAP - 1)
    spec = job_spec("mlp", epochs=40, register_as=job_spec_pb2.RegisterAs(model="filling", alias="trained"))
    job = submit(training, spec)
    events = training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120)
    next(e for e in events if e.WhichOneof("event") == "epoch")
    registry.SetAlias(R.SetAliasRequest(model="filling", alias="the-last-one", version=1))
    # The cap was reached while the job ran (not after its end, which would prove nothing).
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    rest = list(events)

    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.error) == (S.JOB_STATE_SUCCEEDED, "")
    assert (ended.registered.model, ended.registered.version, ended.registered_alias) == ("filling", 2, "")
    said = [e.log.message for e in rest if e.WhichOneof("event") == "log" and e.log.level == "warning"]
    assert said == [
        f"registered filling v2 without alias 'trained': {_cap_message('filling', 'trained')}; then set "
        "it with SetAlias"
    ]
    registered = [e.registered for e in rest if e.WhichOneof("event") == "registered"]
    assert [(r.model, r.version, r.alias) for r in registered] == [("filling", 2, "")]
    version = registry.GetVersion(R.GetVersionRequest(ref={"model": "filling", "version": 2}))
    assert list(version.aliases) == ["latest"]
    missing = rpc_error(registry.GetAlias, R.GetAliasRequest(model="filling", alias="trained"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_that_reaches_the_cap_as_the_version_is_committed_gets_it_without_the_alias(
    registry, training: training_grpc.TrainingStub, training_daemon, monkeypatch
) -> None:
    # Past every check before the commit: the weights' check is the last step before it.
    model_with_aliases(registry, training_daemon, "racing", CAP - 1)
    second = registry_pb2_grpc.RegistryStub(training_daemon.channel())
    request = R.SetAliasRequest(model="racing", alias="the-last-one", version=1)
    fill_while_checking(monkeypatch, "check_weights_fit", lambda: second.SetAlias(request, timeout=30))
    spec = job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="racing", alias="trained"))
    job = submit(training, spec)
    events = follow(training, job.job_id)

    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.error) == (S.JOB_STATE_SUCCEEDED, "")
    assert (ended.registered.model, ended.registered.version, ended.registered_alias) == ("racing", 2, "")
    said = [e.log.message for e in events if e.WhichOneof("event") == "log" and e.log.level == "warning"]
    assert said == [
        f"registered racing v2 without alias 'trained': {_cap_message('racing', 'trained')}; then set "
        "it with SetAlias"
    ]
    assert registry.GetAlias(R.GetAliasRequest(model="racing", alias="the-last-one")).version == 1
    version = registry.GetVersion(R.GetVersionRequest(ref={"model": "racing", "version": 2}))
    assert list(version.aliases) == ["latest"]

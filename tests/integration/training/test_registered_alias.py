"""A job's answer says the alias its registration set: `registered` is a VersionRef, which names
the version by number or by alias and never both, so the alias has a field of its own."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import tessera
from tessera.cli import main
from tessera.v1 import job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tests.integration.training.conftest import follow, job_spec, submit

S = training_pb2
R = registry_pb2


@pytest.fixture(scope="module")
def registry(training_daemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(training_daemon.channel())


def test_a_job_that_moves_an_alias_says_so_in_every_answer(
    training_daemon, registry, training: training_grpc.TrainingStub
) -> None:
    spec = job_spec(
        "mlp",
        experiment="moves-alias",
        register_as=job_spec_pb2.RegisterAs(model="alias-mover", alias="staging"),
    )
    first = submit(training, spec)
    follow(training, first.job_id)
    job = submit(training, spec)
    events = follow(training, job.job_id)
    assert registry.GetAlias(R.GetAliasRequest(model="alias-mover", alias="staging")).version == 2

    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.registered.model, ended.registered.version) == ("alias-mover", 2)
    assert ended.registered_alias == "staging"
    registered = [e.registered for e in events if e.WhichOneof("event") == "registered"]
    assert registered == [S.VersionRegistered(model="alias-mover", version=2, alias="staging")]
    listed = training.ListJobs(S.ListJobsRequest(experiment="moves-alias")).jobs
    assert [(j.job_id, j.registered.version, j.registered_alias) for j in listed] == [
        (job.job_id, 2, "staging"),
        (first.job_id, 1, "staging"),
    ]

    with tessera.Client(training_daemon.target) as client:
        assert client.training.job(job.job_id).registered_alias == "staging"
    screen = io.StringIO()
    console = Console(file=screen, width=200, force_terminal=False, color_system=None)
    assert main(["--target", training_daemon.target, "jobs", "show", job.job_id], console=console) == 0
    assert "alias-mover v2 (alias staging)" in screen.getvalue()

    plain = submit(training, job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="alias-mover")))
    follow(training, plain.job_id)
    unaliased = training.GetJob(S.GetJobRequest(job_id=plain.job_id))
    assert (unaliased.registered.version, unaliased.registered_alias) == (3, "")

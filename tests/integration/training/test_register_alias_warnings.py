"""A job whose register_as.alias is a route of the model's deployment moves it, as SetAlias and
an upload with an alias do, and says in a warning where that leaves the deployment: routes that
resolve to one version now split nothing."""

from __future__ import annotations

import pytest

from tessera.v1 import job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tests.integration.training.conftest import follow, job_spec, submit

S = training_pb2
R = registry_pb2


@pytest.fixture(scope="module")
def registry(training_daemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(training_daemon.channel())


def test_a_job_that_moves_a_routed_alias_warns_of_the_deployment(
    registry, training: training_grpc.TrainingStub
) -> None:
    for _ in range(2):
        job = submit(training, job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="promoted")))
        follow(training, job.job_id)
    registry.SetAlias(R.SetAliasRequest(model="promoted", alias="canary", version=1))
    registry.Deploy(
        R.DeployRequest(
            model="promoted", routes=[R.Route(alias="latest", weight=90), R.Route(alias="canary", weight=10)]
        )
    )

    spec = job_spec("mlp", register_as=job_spec_pb2.RegisterAs(model="promoted", alias="canary"))
    job = submit(training, spec)
    events = follow(training, job.job_id)

    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.registered.version) == (S.JOB_STATE_SUCCEEDED, 3)
    assert registry.GetAlias(R.GetAliasRequest(model="promoted", alias="canary")).version == 3
    said = [e.log.message for e in events if e.WhichOneof("event") == "log" and e.log.level == "warning"]
    assert said == [
        "registered promoted v3 with alias 'canary', which the deployment names: routes[0] (alias "
        "'latest') and routes[1] (alias 'canary') both resolve to version 3 now, so it answers their 100% "
        "and they split nothing; deploy one route to it (Deploy), or move one of the aliases (SetAlias)"
    ]

"""name_prefix on every List RPC that takes one: a prefix no name can start with is refused."""

from __future__ import annotations

import grpc

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, registry_pb2, training_pb2, training_pb2_grpc
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error

NAME_RULE = (
    "can start no name, so it would match nothing: names use 1 to 128 characters from a-z, 0-9, "
    "'.', '_' and '-', starting with a letter or digit"
)


REFUSED = [
    ("Team-", "'Team-'"),
    ("my model", "'my model'"),
    ("-a", "'-a'"),
    ("a" * 129, f"{'a' * 64!r}… (129 characters)"),
]


def test_a_prefix_no_name_can_start_with_is_refused_by_each_list(channel, stub) -> None:
    stub.CreateModel(registry_pb2.CreateModelRequest(name="team-a"))
    datasets = datasets_pb2_grpc.DatasetsStub(channel)
    upload_dataset(datasets, "team-d", npz_bytes())
    training = training_pb2_grpc.TrainingStub(channel)
    training.CreateExperiment(training_pb2.CreateExperimentRequest(name="team-e"))
    lists = [
        (stub.ListModels, registry_pb2.ListModelsRequest),
        (datasets.ListDatasets, datasets_pb2.ListDatasetsRequest),
        (training.ListExperiments, training_pb2.ListExperimentsRequest),
    ]
    for call, request in lists:
        for prefix, shown in REFUSED:
            error = rpc_error(call, request(name_prefix=prefix))
            assert (error.code(), error.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"name_prefix {shown} {NAME_RULE}",
            ), (call, prefix)
    assert [m.name for m in stub.ListModels(registry_pb2.ListModelsRequest(name_prefix="team-")).models] == [
        "team-a"
    ]
    listed = datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(name_prefix="t"))
    assert [d.name for d in listed.datasets] == ["team-d"]
    experiments = training.ListExperiments(training_pb2.ListExperimentsRequest(name_prefix="team-e"))
    assert [e.name for e in experiments.experiments] == ["team-e"]

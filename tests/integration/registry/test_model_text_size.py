"""A model's description and tags are kept to 16 KiB together: every registration of a version
rewrites the model's record, and ListModels sends up to a thousand of them in one message. With
no bound, three models with 30 MiB descriptions made a default ListModels page exceed
max_message_size for every client, and registering a version of one of them cost 14 times as
much."""

from __future__ import annotations

import grpc

from tessera.v1 import registry_pb2
from tests.integration.registry.conftest import rpc_error

R = registry_pb2
LIMIT = 16 * 2**10


def test_a_description_over_16_kib_is_refused_and_nothing_created(stub):
    error = rpc_error(stub.CreateModel, R.CreateModelRequest(name="m", description="x" * (LIMIT + 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "a model's description and tags take at most 16 KiB together, these take 16 KiB (16385 bytes); "
        "keep longer documentation elsewhere and link to it"
    )
    assert list(stub.ListModels(R.ListModelsRequest()).models) == []
    assert stub.CreateModel(R.CreateModelRequest(name="m", description="x" * LIMIT)).name == "m"


def test_tags_that_take_a_model_over_16_kib_are_refused_and_nothing_changed(stub):
    stub.CreateModel(R.CreateModelRequest(name="m", description="d" * (LIMIT - 100), tags={"team": "a"}))
    error = rpc_error(
        stub.UpdateModel,
        R.UpdateModelRequest(
            name="m",
            description="short",
            set_tags={"notes": "n" * 8000, "more": "n" * 8000, "rest": "n" * 400},
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a model's description and tags take at most 16 KiB together" in error.details()
    model = stub.GetModel(R.GetModelRequest(name="m"))
    assert (len(model.description), dict(model.tags)) == (LIMIT - 100, {"team": "a"})
    # Bytes are counted, as they are stored: 'é' is two.
    error = rpc_error(stub.UpdateModel, R.UpdateModelRequest(name="m", set_tags={"x": "é" * 60}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.UpdateModel(R.UpdateModelRequest(name="m", set_tags={"x": "e" * 60}))

"""ListRunArtifacts' directory: one trailing "/" is allowed ("plots/"); any other path that no
artifact directory can have is refused naming the path as sent."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import training_pb2 as pb
from tessera.v1 import training_pb2_grpc


@pytest.fixture
def stub(channel: grpc.Channel) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(channel)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        # Refused as "path 'plots/' has an empty segment", though 'plots/' lists the directory.
        ("plots//", "has an empty segment (a doubled or trailing /)"),
        # Listed every artifact of the run, as an empty path does, though '/' is absolute.
        ("/", "is absolute; artifact paths are relative to the run"),
        ("a//b/", "has an empty segment (a doubled or trailing /)"),
    ],
)
def test_a_directory_no_artifact_can_be_under_is_refused_as_sent(
    stub: training_pb2_grpc.TrainingStub, path: str, problem: str
) -> None:
    run_id = stub.CreateRun(pb.CreateRunRequest(experiment="listing")).run_id
    with pytest.raises(grpc.RpcError) as error:
        stub.ListRunArtifacts(pb.ListRunArtifactsRequest(run_id=run_id, path=path))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == (
        f'path {path!r} {problem}; give a directory such as "plots" or "plots/", or leave path empty '
        "to list every artifact of the run"
    )

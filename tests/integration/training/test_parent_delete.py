"""A version that an unfinished fine-tuning job starts from cannot be deleted: the job's
registration would fail its lineage check at the end."""

from __future__ import annotations

import hashlib

import grpc
import pytest
import torch
from safetensors.torch import save

from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.nn import build_model, spec_from_dict
from tests.integration.training.conftest import architecture, follow, job_spec, submit

PARENT = "delete-parent"


def _push_parent(registry: registry_pb2_grpc.RegistryStub) -> registry_pb2.ModelVersion:
    """The MLP that architecture("mlp") builds, as a torch version (signature from its architecture)."""
    torch.manual_seed(0)
    model = build_model(
        spec_from_dict({"family": "mlp", "input_shape": [6], "output_size": 2, "hidden_sizes": [16]})
    )
    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    header = registry_pb2.UploadVersionHeader(
        model=PARENT,
        create_model=True,
        format=registry_pb2.ARTIFACT_FORMAT_SAFETENSORS,
        architecture=architecture("mlp"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    requests = [
        registry_pb2.UploadVersionRequest(header=header),
        registry_pb2.UploadVersionRequest(chunk=data),
    ]
    return registry.UploadVersion(iter(requests), timeout=60)


def test_deleting_the_init_from_of_an_unfinished_job_is_refused_naming_the_job(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    registry = registry_pb2_grpc.RegistryStub(training_daemon.channel())
    parent = _push_parent(registry)
    # Far more epochs than the test waits for: the job is queued or running until cancelled.
    job = submit(
        training, job_spec("mlp", epochs=100_000, init_from=common_pb2.VersionRef(model=PARENT, version=1))
    )
    delete = registry_pb2.DeleteVersionRequest(model=PARENT, version=parent.version)
    with pytest.raises(grpc.RpcError) as refused:
        registry.DeleteVersion(delete)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        f"version 1 of model '{PARENT}' is the init_from of unfinished training job {job.job_id}; "
        "wait for it to end or cancel it first"
    ) in refused.value.details()
    kept = registry.GetVersion(
        registry_pb2.GetVersionRequest(ref=common_pb2.VersionRef(model=PARENT, version=1))
    )
    assert kept.sha256 == parent.sha256
    training.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
    follow(training, job.job_id)
    registry.DeleteVersion(delete)
    gone = registry.ListVersions(registry_pb2.ListVersionsRequest(model=PARENT))
    assert list(gone.versions) == []


def test_deleting_the_model_of_an_unfinished_jobs_init_from_is_refused_even_with_force(
    training_daemon, training: training_grpc.TrainingStub
) -> None:
    registry = registry_pb2_grpc.RegistryStub(training_daemon.channel())
    parent = _push_parent(registry)
    job = submit(
        training,
        job_spec(
            "mlp", epochs=100_000, init_from=common_pb2.VersionRef(model=PARENT, version=parent.version)
        ),
    )
    for force in (False, True):
        with pytest.raises(grpc.RpcError) as refused:
            registry.DeleteModel(registry_pb2.DeleteModelRequest(name=PARENT, force=force))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"is the init_from of unfinished training job {job.job_id}" in refused.value.details()
    kept = registry.GetVersion(
        registry_pb2.GetVersionRequest(ref=common_pb2.VersionRef(model=PARENT, version=parent.version))
    )
    assert kept.sha256 == parent.sha256
    training.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
    follow(training, job.job_id)
    registry.DeleteModel(registry_pb2.DeleteModelRequest(name=PARENT, force=True))
    with pytest.raises(grpc.RpcError) as gone:
        registry.GetModel(registry_pb2.GetModelRequest(name=PARENT))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

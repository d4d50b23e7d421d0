"""Fine-tuning through a real daemon: train on task A, start task B from the registered version
with the backbone frozen and a new head; the frozen weights stay bit-identical, the head learns,
lineage names the parent; and every spec that cannot work is refused at SubmitJob."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
)
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.nn import build_model, spec_from_dict
from tests.integration.training.conftest import Restarts, follow, submit, upload_dataset

S = training_pb2
N, TRAIN = 240, 192
# The MLP is Flatten (0), Linear (1), ReLU (2), Linear (3): "1.*" is the backbone, "3.*" the head.
BACKBONE = ("1.weight", "1.bias")
PARENT = "task-a-mlp"
# Task B has three balanced classes, so chance is 1/3; its head must reach this on held-out data.
MIN_ACCURACY_B = 1 / 3 + 0.25


def _task_b_labels(x: np.ndarray) -> np.ndarray:
    """Which third of the distribution x0 + x1 falls in: task A's boundary (x0 + x1 = 0) is the
    middle of class 1, so the backbone's features of x0 + x1 serve, and a linear head over
    them separates the three classes."""
    s = x[:, 0] + x[:, 1]
    return np.digitize(s, [-0.6, 0.6]).astype(np.int64)


@pytest.fixture(scope="module")
def data(training_daemon) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 8)).astype(np.float32)
    split = {"train": list(range(TRAIN)), "val": list(range(TRAIN, N))}
    channel = training_daemon.channel()
    upload_dataset(channel, "task-a", {"x": x, "y": (x[:, 0] + x[:, 1] > 0).astype(np.int64)}, split)
    upload_dataset(channel, "task-b", {"x": x, "y": _task_b_labels(x)}, split)
    return x


@pytest.fixture(scope="module")
def registry(training_daemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(training_daemon.channel())


def _spec(dataset: str, **fields) -> job_spec_pb2.JobSpec:
    spec = job_spec_pb2.JobSpec(
        experiment="fine-tuning",
        data=job_spec_pb2.DataSpec(dataset={"name": dataset}),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=0.03),
        epochs=12,
        batch_size=32,
        seed=3,
    )
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(spec, key)[:] = value
        elif hasattr(value, "DESCRIPTOR"):
            getattr(spec, key).CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def _mlp(output_size: int = 2, hidden: int = 32) -> dict:
    return {"family": "mlp", "input_shape": [8], "output_size": output_size, "hidden_sizes": [hidden]}


def _architecture_message(output_size: int = 2, hidden: int = 32) -> architecture_pb2.Architecture:
    return architecture_pb2.Architecture(
        input_shape=[8], output_size=output_size, mlp=architecture_pb2.MlpSpec(hidden_sizes=[hidden])
    )


def _run(training: training_grpc.TrainingStub, spec: job_spec_pb2.JobSpec) -> S.Job:
    job = submit(training, spec)
    follow(training, job.job_id)
    done = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    return done


def _weights(registry: registry_pb2_grpc.RegistryStub, model: str, version: int) -> dict[str, torch.Tensor]:
    ref = common_pb2.VersionRef(model=model, version=version)
    parts = registry.DownloadVersion(registry_pb2.DownloadVersionRequest(ref=ref))
    return load_tensors(b"".join(p.chunk for p in parts if p.WhichOneof("part") == "chunk"))


@pytest.fixture(scope="module")
def parent(training: training_grpc.TrainingStub, data: np.ndarray) -> S.Job:
    """Task A trained from scratch and registered as task-a-mlp v1."""
    spec = _spec(
        "task-a",
        architecture=_architecture_message(),
        register_as=job_spec_pb2.RegisterAs(model=PARENT, alias="base"),
    )
    job = _run(training, spec)
    assert (job.registered.model, job.registered.version) == (PARENT, 1)
    return job


def test_frozen_backbone_and_a_new_head_learn_task_b(
    parent: S.Job, training: training_grpc.TrainingStub, registry, data: np.ndarray
) -> None:
    # No architecture: the parent's, with replace_head's output size.
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        freeze=["1.*"],
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        register_as=job_spec_pb2.RegisterAs(model="task-b-mlp"),
    )
    job = _run(training, spec)
    child = job.registered
    before, after = _weights(registry, PARENT, 1), _weights(registry, child.model, child.version)

    for name in BACKBONE:
        assert after[name].numpy().tobytes() == before[name].numpy().tobytes(), name
    assert tuple(before["3.weight"].shape) == (2, 32) and tuple(after["3.weight"].shape) == (3, 32)

    model = build_model(spec_from_dict(_mlp(output_size=3)))
    model.load_state_dict(after)
    with torch.no_grad():
        predicted = model(torch.from_numpy(data[TRAIN:])).argmax(1).numpy()
    accuracy = float((predicted == _task_b_labels(data[TRAIN:])).mean())
    assert accuracy >= MIN_ACCURACY_B, accuracy

    lineage = registry.GetLineage(
        registry_pb2.GetLineageRequest(ref=common_pb2.VersionRef(model=child.model, version=child.version))
    )
    assert (lineage.version.lineage.parent_model, lineage.version.lineage.parent_version) == (PARENT, 1)
    assert lineage.version.params["fine_tune.freeze"] == "1.*"
    derived = registry.GetLineage(
        registry_pb2.GetLineageRequest(ref=common_pb2.VersionRef(model=PARENT, version=1))
    ).derived
    assert (child.model, child.version) in {(d.model, d.version) for d in derived}


def test_backbone_lr_scale_slows_the_backbone_only(
    parent: S.Job, training: training_grpc.TrainingStub, registry
) -> None:
    """Adam moves each parameter by about its lr per step: at scale 1e-4 the backbone barely moves,
    while the head (same parent, same task) moves at the full rate."""
    spec = _spec(
        "task-a",
        init_from=common_pb2.VersionRef(model=PARENT, alias="base"),
        backbone_lr_scale=1e-4,
        epochs=2,
        register_as=job_spec_pb2.RegisterAs(model=PARENT),
    )
    job = _run(training, spec)
    before, after = _weights(registry, PARENT, 1), _weights(registry, PARENT, job.registered.version)
    backbone = max(float((after[n] - before[n]).abs().max()) for n in BACKBONE)
    head = float((after["3.weight"] - before["3.weight"]).abs().max())
    assert 0 < backbone < 1e-3 and head > 1e-2, (backbone, head)
    lineage = registry.GetVersion(
        registry_pb2.GetVersionRequest(
            ref=common_pb2.VersionRef(model=PARENT, version=job.registered.version)
        )
    ).lineage
    assert (lineage.parent_model, lineage.parent_version) == ("", 1)  # the same model


def _refused(training: training_grpc.TrainingStub, spec: job_spec_pb2.JobSpec) -> grpc.RpcError:
    """The error SubmitJob answers; no job is created."""
    before = len(training.ListJobs(S.ListJobsRequest(experiment="fine-tuning")).jobs)
    with pytest.raises(grpc.RpcError) as caught:
        submit(training, spec)
    assert len(training.ListJobs(S.ListJobsRequest(experiment="fine-tuning")).jobs) == before
    return caught.value


def test_a_tensor_of_another_shape_is_named_with_both_shapes(parent: S.Job, training) -> None:
    spec = _spec(
        "task-a",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        architecture=_architecture_message(hidden=16),
    )
    error = _refused(training, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    assert (
        "spec.init_from: tensor '1.weight' has shape [32, 8] in task-a-mlp v1 but [16, 8] in this job's "
        "architecture" in details
    ), details
    assert "tensor '3.weight' has shape [2, 32] in task-a-mlp v1 but [2, 16]" in details, details


def test_a_new_output_size_without_replace_head_is_refused(parent: S.Job, training) -> None:
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        architecture=_architecture_message(3),
    )
    error = _refused(training, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "tensor '3.weight' has shape [2, 32] in task-a-mlp v1 but [3, 32] in this job's architecture; "
        "set replace_head for a new final layer" in error.details()
    ), error.details()


def test_a_freeze_glob_that_matches_nothing_is_named(parent: S.Job, training) -> None:
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        freeze=["1.*", "encoder.*", "3.*"],
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        backbone_lr_scale=-1,
    )
    error = _refused(training, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details()
    # Every problem at once: the new head always trains, so "3.*" matches nothing either.
    assert "the spec has 3 problems" in details, details
    assert (
        "spec.freeze[1]: 'encoder.*' matches no parameter that would train; the parameters are 1.weight, 1.bias"
        in details
    )
    assert "spec.freeze[2]: '3.*' matches no parameter" in details
    assert "spec.backbone_lr_scale: must be > 0" in details


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"backbone_lr_scale": 400.0},
            "spec.optimizer.lr and spec.backbone_lr_scale: the backbone would learn at optimizer.lr 0.03 x "
            "backbone_lr_scale 400 = 12, above 10, which diverges; set backbone_lr_scale to at most 333",
        ),
        (
            {
                "backbone_lr_scale": 3.0,
                "lr_schedule": job_spec_pb2.LrSchedule(one_cycle=job_spec_pb2.OneCycleLr(max_lr=6.0)),
            },
            "spec.lr_schedule.one_cycle.max_lr and spec.backbone_lr_scale: the backbone would learn at "
            "lr_schedule.one_cycle.max_lr 6 x backbone_lr_scale 3 = 18, above 10, which diverges; set "
            "backbone_lr_scale to at most 1.66",
        ),
    ],
    ids=["lr", "one-cycle max_lr"],
)
def test_a_backbone_rate_above_the_limit_is_refused(
    fields: dict[str, Any], words: str, parent: S.Job, training
) -> None:
    # Either rate alone is within spec.MAX_LR; their product trained the backbone at 12 (or 18).
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        **fields,
    )
    error = _refused(training, spec)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, words)


def test_a_sweep_that_can_draw_a_backbone_rate_above_the_limit_is_refused(parent: S.Job, training) -> None:
    # Each at its highest alone is within the limit, as the boundary points have them; TPE
    # drawing both near there had its trial refused mid-sweep.
    spec = S.SweepSpec(
        base=_spec(
            "task-b",
            init_from=common_pb2.VersionRef(model=PARENT, version=1),
            replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        ),
        strategy=S.SWEEP_STRATEGY_TPE,
        parameters=[
            S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=0.001, max=1.0)),
            S.SweepParameter(path="backbone_lr_scale", range=S.SweepRange(min=0.1, max=20.0)),
        ],
        max_trials=4,
        metric="val_loss",
    )
    with pytest.raises(grpc.RpcError) as caught:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the trial with optimizer.lr=1.0, backbone_lr_scale=20.0: spec.optimizer.lr and spec.backbone_lr_scale: "
        "the backbone would learn at optimizer.lr 1 x backbone_lr_scale 20 = 20, above 10, which diverges; set "
        "backbone_lr_scale to at most 10",
    )


def test_fine_tuning_keys_need_init_from(data: np.ndarray, training) -> None:
    error = _refused(training, _spec("task-a", architecture=_architecture_message(), freeze=["1.*"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.freeze: applies when fine-tuning: set init_from" in error.details()


def test_an_onnx_parent_is_refused_naming_its_torch_source(parent: S.Job, training, registry) -> None:
    exported = registry.ExportOnnx(
        registry_pb2.ExportOnnxRequest(source=common_pb2.VersionRef(model=PARENT, version=1))
    ).version
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=exported.version),
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
    )
    error = _refused(training, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"spec.init_from: {PARENT} v{exported.version} is an ONNX model; fine-tuning starts from a torch "
        "(safetensors) version; v1 is the torch version it was exported from"
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            common_pb2.VersionRef(model=PARENT, version=99),
            f"spec.init_from: model '{PARENT}' has no version 99",
        ),
        (
            common_pb2.VersionRef(model=PARENT, alias="nope"),
            f"spec.init_from: model '{PARENT}' has no alias 'nope'",
        ),
        (
            common_pb2.VersionRef(model="no-such-model"),
            # Not "create it with CreateModel": an empty model cannot be a parent.
            "spec.init_from: model 'no-such-model' does not exist; fine-tuning starts from one of its torch "
            "(safetensors) versions: upload one with UploadVersion, or train one with SubmitJob (register_as "
            "names the model)",
        ),
    ],
)
def test_an_unknown_parent_is_not_found(parent: S.Job, training, ref, message: str) -> None:
    error = _refused(
        training, _spec("task-b", init_from=ref, replace_head=job_spec_pb2.ReplaceHead(output_size=3))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith(message), error.details()


def test_a_resumed_fine_tuning_job_keeps_its_backbone_frozen_and_its_curve(
    spawn_daemon: Any, restart_daemon: Restarts, tmp_path: Path
) -> None:
    """SIGKILL the daemon mid fine-tune: the next one resumes from the checkpoint (the parent's
    weights held meanwhile), freezes the same parameters, restores both optimiser groups, and
    gives the loss curve of an uninterrupted run."""
    args = ("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path))
    env = {"TESSERA_TRAINING_CPU_SLOTS": "1", "TESSERA_TRAINING_THREADS_PER_SLOT": "1"}
    daemon = spawn_daemon(*args, env=env)
    channel = grpc.insecure_channel(daemon.wait_serving())
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 8)).astype(np.float32)
    split = {"train": list(range(TRAIN)), "val": list(range(TRAIN, N))}
    upload_dataset(channel, "task-a", {"x": x, "y": (x[:, 0] + x[:, 1] > 0).astype(np.int64)}, split)
    upload_dataset(channel, "task-b", {"x": x, "y": _task_b_labels(x)}, split)
    training = training_grpc.TrainingStub(channel)
    _run(
        training,
        _spec(
            "task-a",
            architecture=_architecture_message(),
            epochs=2,
            register_as=job_spec_pb2.RegisterAs(model=PARENT),
        ),
    )
    spec = _spec(
        "task-b",
        init_from=common_pb2.VersionRef(model=PARENT, version=1),
        freeze=["1.weight"],
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        backbone_lr_scale=0.5,
        epochs=40,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1),
        register_as=job_spec_pb2.RegisterAs(model="task-b-mlp"),
    )
    job = submit(training, spec)
    for event in training.WatchJob(S.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.WhichOneof("event") == "checkpoint" and event.checkpoint.epoch == 4:
            break
    daemon.kill()
    channel.close()

    channel = restart_daemon(tmp_path).channel()
    training = training_grpc.TrainingStub(channel)
    registry = registry_pb2_grpc.RegistryStub(channel)
    follow(training, job.job_id)
    resumed = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert resumed.state == S.JOB_STATE_SUCCEEDED and resumed.attempt == 2, resumed.error
    before = _weights(registry, PARENT, 1)
    after = _weights(registry, resumed.registered.model, resumed.registered.version)
    assert after["1.weight"].numpy().tobytes() == before["1.weight"].numpy().tobytes()
    assert not torch.equal(after["1.bias"], before["1.bias"])  # not frozen: trains at half the rate

    again = _run(training, spec)
    curves = [
        [
            p.value
            for p in training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=j.run_id, key="loss")).points
        ]
        for j in (resumed, again)
    ]
    assert curves[0] == curves[1]


def test_a_fine_tuning_job_whose_start_fails_holds_nothing_after(
    data: np.ndarray, training, training_daemon, registry
) -> None:
    """Its dataset version is force-deleted while it waits: it fails before it starts, and lets
    go of all it held (the dataset version, the parent's weights); nothing is registered."""
    channel = training_daemon.channel()
    parent_spec = _spec(
        "task-a",
        architecture=_architecture_message(),
        epochs=1,
        register_as=job_spec_pb2.RegisterAs(model="start-fails-parent"),
    )
    parent = _run(training, parent_spec).registered
    upload_dataset(channel, "start-fails", {"x": data, "y": _task_b_labels(data)}, {"train": list(range(N))})
    # One job per CPU slot: the fine-tuning job waits in the queue behind them.
    blockers = [
        submit(training, _spec("task-a", architecture=_architecture_message(), epochs=0, max_steps=1_000_000))
        for _ in range(2)
    ]
    for blocker in blockers:
        watched = training.WatchJob(S.WatchJobRequest(job_id=blocker.job_id), timeout=120)
        next(e for e in watched if e.WhichOneof("event") == "state" and e.state.state == S.JOB_STATE_RUNNING)
        watched.cancel()
    spec = _spec(
        "start-fails",
        init_from=common_pb2.VersionRef(model=parent.model, version=parent.version),
        replace_head=job_spec_pb2.ReplaceHead(output_size=3),
        register_as=job_spec_pb2.RegisterAs(model="start-fails-child", alias="candidate"),
    )
    job = submit(training, spec)
    delete_parent = registry_pb2.DeleteVersionRequest(model=parent.model, version=parent.version)
    try:
        with pytest.raises(grpc.RpcError) as held:
            registry.DeleteVersion(delete_parent)
        assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert job.job_id in held.value.details()
        deleted = datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(
            datasets_pb2.DeleteDatasetRequest(name="start-fails", force=True)
        )
        assert deleted.deleted_versions == 1
    finally:
        for blocker in blockers:
            training.CancelJob(S.CancelJobRequest(job_id=blocker.job_id))
    follow(training, job.job_id)
    ended = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (ended.state, ended.attempt, list(ended.devices)) == (S.JOB_STATE_FAILED, 0, [])
    assert ended.error.startswith("dataset 'start-fails' v1 was deleted before the job could start")
    assert not ended.HasField("registered")
    failed = training.ListJobs(S.ListJobsRequest(states=[S.JOB_STATE_FAILED], experiment="fine-tuning"))
    assert job.job_id in [j.job_id for j in failed.jobs]
    assert training.GetRun(S.GetRunRequest(run_id=ended.run_id)).status == S.RUN_STATUS_FAILED
    with pytest.raises(grpc.RpcError) as unregistered:
        registry.GetModel(registry_pb2.GetModelRequest(name="start-fails-child"))
    assert unregistered.value.code() == grpc.StatusCode.NOT_FOUND
    # The parent's weights are no longer held for it.
    registry.DeleteVersion(delete_parent)

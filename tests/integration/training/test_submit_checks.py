"""Every spec problem that can be seen before running is refused at SubmitJob, naming the field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tests.integration.training.conftest import job_spec, submit, upload_dataset

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _no_family(spec: job_spec_pb2.JobSpec) -> None:
    spec.architecture.ClearField("mlp")


def _set(path: str, value: object) -> Callable[[job_spec_pb2.JobSpec], None]:
    def change(spec: job_spec_pb2.JobSpec) -> None:
        *parents, leaf = path.split(".")
        target = spec
        for part in parents:
            target = getattr(target, part)
        if isinstance(value, list):
            getattr(target, leaf)[:] = value
        elif hasattr(value, "DESCRIPTOR"):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)

    return change


def _both(
    first: Callable[[job_spec_pb2.JobSpec], None], second: Callable[[job_spec_pb2.JobSpec], None]
) -> Callable[[job_spec_pb2.JobSpec], None]:
    def change(spec: job_spec_pb2.JobSpec) -> None:
        first(spec)
        second(spec)

    return change


def _tags(tags: dict[str, str], description: str = "") -> Callable[[job_spec_pb2.JobSpec], None]:
    def change(spec: job_spec_pb2.JobSpec) -> None:
        spec.tags.update(tags)
        if description:
            spec.register_as.model = "tagged"
            spec.register_as.description = description

    return change


CASES = [
    ("no family", _no_family, INVALID, "spec.architecture: set one architecture family"),
    (
        "bad hyperparameter",
        _set("architecture.mlp.activation", "swish"),
        INVALID,
        "spec.architecture.mlp.activation",
    ),
    # NOT_FOUND, as for a missing init_from or a deployment's missing version.
    ("missing dataset", _set("data.dataset.name", "nope"), NOT_FOUND, "spec.data.dataset: dataset 'nope'"),
    ("missing version", _set("data.dataset.version", 9), NOT_FOUND, "spec.data.dataset:"),
    (
        "missing input array",
        _set("data.input_array", "xs"),
        PRECONDITION,
        "spec.data.input_array: dataset 'flat' v1 has no array 'xs'; it has t, x, y",
    ),
    ("missing target array", _set("data.target_array", "labels"), PRECONDITION, "spec.data.target_array"),
    (
        "missing split",
        _set("data.val_split", "test"),
        PRECONDITION,
        "spec.data.val_split: dataset 'flat' v1 has no split 'test'; it has train, val",
    ),
    (
        "input shape",
        _set("architecture.input_shape", [7]),
        PRECONDITION,
        "spec.architecture.input_shape: the model takes samples shaped [7] but array 'x'",
    ),
    ("float targets for classification", _set("data.target_array", "t"), PRECONDITION, "use task REGRESSION"),
    ("regression loss", _set("loss", "hinge"), INVALID, "spec.loss"),
    (
        "missing gpu",
        _set("devices", job_spec_pb2.DeviceRequest(cuda=job_spec_pb2.CudaDevices(indices=[7]))),
        PRECONDITION,
        "spec.devices.cuda.indices: cuda:7 does not exist",
    ),
    (
        "too many gpus",
        _set("devices", job_spec_pb2.DeviceRequest(gpu_count=9)),
        PRECONDITION,
        "spec.devices.gpu_count",
    ),
    (
        "too many cpu processes",
        _set("devices", job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=3)),
        PRECONDITION,
        "has 2 CPU slots (training.cpu_slots)",
    ),
    (
        "optimizer",
        _set("optimizer.name", "lion"),
        INVALID,
        "spec.optimizer.name: must be one of sgd, adam, adamw",
    ),
    # Every choice field names the value meant: the same word in another case first, else the nearest.
    (
        "optimizer in capitals",
        _set("optimizer.name", "Adam"),
        INVALID,
        "spec.optimizer.name: must be one of sgd, adam, adamw, got 'Adam'; did you mean 'adam'?",
    ),
    ("optimizer misspelt", _set("optimizer.name", "adma"), INVALID, "got 'adma'; did you mean 'adam'?"),
    ("precision in capitals", _set("precision", "FP16"), INVALID, "got 'FP16'; did you mean 'fp16'?"),
    (
        "activation misspelt",
        _set("architecture.mlp.activation", "rleu"),
        INVALID,
        "spec.architecture.mlp.activation: must be one of relu, gelu, tanh, silu, got 'rleu'; did you mean 'relu'?",
    ),
    ("negative lr", _set("optimizer.lr", -1.0), INVALID, "spec.optimizer.lr: must be > 0"),
    # It trained to a loss of 3.7e17 and ended SUCCEEDED.
    ("huge lr", _set("optimizer.lr", 1e9), INVALID, "spec.optimizer.lr: must be at most 10, got 1e+09"),
    (
        "huge one-cycle max_lr",
        _set("lr_schedule", job_spec_pb2.LrSchedule(one_cycle=job_spec_pb2.OneCycleLr(max_lr=100.0))),
        INVALID,
        "spec.lr_schedule.one_cycle.max_lr: must be at most 10, got 100",
    ),
    (
        "validating on the training split",
        _set("data.val_split", "train"),
        INVALID,
        "spec.data.train_split and spec.data.val_split: both name split 'train'",
    ),
    (
        # 72 training samples in batches of 24 for 2 epochs: 6 steps, all at a fraction of the lr.
        "warm-up longer than the job",
        _set("lr_schedule", job_spec_pb2.LrSchedule(warmup_steps=7)),
        INVALID,
        "spec.lr_schedule.warmup_steps: is 7, but the job trains 6 steps (3 per epoch)",
    ),
    (
        "warm-up longer than max_steps",
        _both(_set("max_steps", 2), _set("lr_schedule", job_spec_pb2.LrSchedule(warmup_steps=3))),
        INVALID,
        "spec.lr_schedule.warmup_steps: is 3, but the job trains 2 steps",
    ),
    ("momentum on adam", _set("optimizer.momentum", 0.9), INVALID, "apply to sgd only"),
    (
        "cosine min_lr",
        _set("lr_schedule", job_spec_pb2.LrSchedule(cosine=job_spec_pb2.CosineLr(min_lr=1.0))),
        INVALID,
        "spec.lr_schedule.cosine.min_lr",
    ),
    (
        "step size",
        _set("lr_schedule", job_spec_pb2.LrSchedule(step=job_spec_pb2.StepLr())),
        INVALID,
        "spec.lr_schedule.step.step_size",
    ),
    ("negative epochs", _set("epochs", -1), INVALID, "spec.epochs: must be >= 0"),
    # An explicit 0 was taken as unset and the field's default trained instead (batch_size 32):
    # written out, 0 is what its writer meant, and out of the field's range.
    ("batch size 0", _set("batch_size", 0), INVALID, "spec.batch_size: must be >= 1, got 0"),
    ("negative batch size", _set("batch_size", -4), INVALID, "spec.batch_size: must be >= 1, got -4"),
    (
        "log every 0 steps",
        _set("log_every_n_steps", 0),
        INVALID,
        "spec.log_every_n_steps: must be >= 1, got 0",
    ),
    ("lr 0", _set("optimizer.lr", 0.0), INVALID, "spec.optimizer.lr: must be > 0, got 0.0"),
    ("eps 0", _set("optimizer.eps", 0.0), INVALID, "spec.optimizer.eps: must be > 0, got 0.0"),
    (
        "epochs 0 without max_steps",
        _both(_set("epochs", 0), lambda spec: spec.ClearField("max_steps")),
        INVALID,
        "spec.epochs: must be >= 1, got 0 (0 only with max_steps set, to train by steps alone)",
    ),
    (
        "max_steps 0 without epochs",
        _both(lambda spec: spec.ClearField("epochs"), _set("max_steps", 0)),
        INVALID,
        "spec.max_steps: must be >= 1, got 0 (0 only with epochs set, for no step limit)",
    ),
    (
        "step gamma 0",
        _set("lr_schedule", job_spec_pb2.LrSchedule(step=job_spec_pb2.StepLr(step_size=1, gamma=0.0))),
        INVALID,
        "spec.lr_schedule.step.gamma: must be in (0, 1], got 0.0",
    ),
    (
        "one-cycle max_lr 0",
        _set("lr_schedule", job_spec_pb2.LrSchedule(one_cycle=job_spec_pb2.OneCycleLr(max_lr=0.0))),
        INVALID,
        "spec.lr_schedule.one_cycle.max_lr: must be > 0, got 0.0",
    ),
    (
        "one-cycle pct_start 0",
        _set("lr_schedule", job_spec_pb2.LrSchedule(one_cycle=job_spec_pb2.OneCycleLr(pct_start=0.0))),
        INVALID,
        "spec.lr_schedule.one_cycle.pct_start: must be in (0, 1), got 0.0",
    ),
    (
        "checkpoint every 0 epochs",
        _set("checkpoints", job_spec_pb2.CheckpointPolicy(every_n_epochs=0)),
        INVALID,
        "spec.checkpoints.every_n_epochs: must be >= 1, got 0",
    ),
    (
        "keep 0 checkpoints",
        _set("checkpoints", job_spec_pb2.CheckpointPolicy(keep_last=0)),
        INVALID,
        "spec.checkpoints.keep_last: must be >= 1, got 0",
    ),
    (
        "0 cpu processes",
        _set("devices", job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=0)),
        INVALID,
        "spec.devices.cpu_processes: must be >= 1, got 0",
    ),
    (
        "backbone_lr_scale 0 without init_from",
        _set("backbone_lr_scale", 0.0),
        INVALID,
        "spec.backbone_lr_scale: applies when fine-tuning",
    ),
    (
        "early stopping metric",
        _set("early_stopping", job_spec_pb2.EarlyStopping(metric="val_f1", patience=2)),
        PRECONDITION,
        "spec.early_stopping.metric: this job reports train_loss",
    ),
    (
        # It was stored and trained every epoch: patience 0 turned early stopping off.
        "early stopping patience 0",
        _set("early_stopping", job_spec_pb2.EarlyStopping(metric="train_loss", patience=0)),
        INVALID,
        "spec.early_stopping.patience: must be >= 1, got 0; 1 stops at the first epoch without an "
        "improvement (what patience 0 does in Keras and Lightning), or leave early_stopping out to "
        "train every epoch",
    ),
    (
        "early stopping section of zeros",
        _set("early_stopping", job_spec_pb2.EarlyStopping()),
        INVALID,
        "spec.early_stopping.patience: must be >= 1, got 0",
    ),
    (
        "best metric",
        _set("checkpoints", job_spec_pb2.CheckpointPolicy(keep_best_metric="val_mae")),
        PRECONDITION,
        "spec.checkpoints.keep_best_metric",
    ),
    (
        # It was stored and kept no best checkpoint: there is no metric to rank them by.
        "retain best without a metric",
        _set("checkpoints", job_spec_pb2.CheckpointPolicy(retain_best=2)),
        INVALID,
        "spec.checkpoints.retain_best: keeps the best checkpoints by keep_best_metric; set "
        "keep_best_metric to one of train_loss, train_accuracy, val_loss, val_accuracy, or retain_best 0",
    ),
    (
        "best mode without a metric",
        _set("checkpoints", job_spec_pb2.CheckpointPolicy(keep_best_mode=job_spec_pb2.OPTIMIZE_MODE_MAX)),
        INVALID,
        "spec.checkpoints.keep_best_mode: applies with keep_best_metric; set keep_best_metric to one of "
        "train_loss, train_accuracy, val_loss, val_accuracy, or leave keep_best_mode unset",
    ),
    (
        "register name",
        _set("register_as", job_spec_pb2.RegisterAs(model="Bad Name")),
        INVALID,
        "spec.register_as.model",
    ),
    (
        "register latest",
        _set("register_as", job_spec_pb2.RegisterAs(model="m", alias="latest")),
        INVALID,
        "spec.register_as.alias: 'latest' is reserved",
    ),
    (
        "register version-like alias",
        _set("register_as", job_spec_pb2.RegisterAs(model="m", alias="v2")),
        INVALID,
        "spec.register_as.alias: 'v2' reads as a version number",
    ),
    ("experiment name", _set("experiment", "UPPER"), INVALID, "spec.experiment"),
    # Tags become the run's and the registered version's: refused here, not after the training.
    (
        "empty tag key",
        _tags({"": "x"}),
        INVALID,
        "spec.tags: key '' must be 1 to 250 characters without NUL or newlines",
    ),
    ("long tag value", _tags({"note": "n" * 8001}), INVALID, "spec.tags['note']: value is longer than 8000"),
    (
        # Stored without a parent_run_id, then no UpdateRun could remove it.
        "parent run tag",
        _tags({"mlflow.parentRunId": "run-x"}),
        INVALID,
        "spec.tags['mlflow.parentRunId']: names a run's parent, which a job's run does not have; "
        "leave it out",
    ),
    (
        "registered text over 16 KiB",
        _tags({"a": "bcdef"}, description="d" * (16 * 2**10 - 5)),
        INVALID,
        "spec.register_as.description and spec.tags: a model version's description and tags take at most "
        "16 KiB together, these take 16 KiB (16385 bytes)",
    ),
    (
        # Without a version to register they are still the run's, and in the job's record,
        # which GetJob and ListJobs answers hold.
        "job tags over 2 MiB",
        _tags({f"k{i}": "v" * 8000 for i in range(300)}),
        INVALID,
        "spec.tags: a run's params and tags take at most 2 MiB together, these would take 2.29 MiB",
    ),
    (
        "precision",
        _set("precision", "fp8"),
        INVALID,
        "spec.precision: must be one of fp32, bf16, fp16, got 'fp8'",
    ),
    (
        # Its step count would not fit the int64 the API shows it in: every call that shows
        # the job (GetJob, ListJobs, WatchJob) would fail.
        "too many epochs",
        _set("epochs", 2**62),
        INVALID,
        "spec.epochs: must be at most 1000000, got 4611686018427387904",
    ),
    (
        # Training by steps alone: a step limit this high is a job that runs until cancelled.
        "too many steps",
        _both(_set("epochs", 0), _set("max_steps", 2**62)),
        INVALID,
        "spec.max_steps: must be at most 1000000000, got 4611686018427387904",
    ),
    (
        "fp16 on cpu",
        _set("precision", "fp16"),
        INVALID,
        "spec.precision: fp16 trains on CUDA devices only; use bf16 on CPU",
    ),
]


@pytest.mark.parametrize(("change", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_is_refused_at_submit(
    change: Callable[[job_spec_pb2.JobSpec], None],
    code: grpc.StatusCode,
    words: str,
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = job_spec("mlp")
    change(spec)
    before = len(training.ListJobs(training_pb2.ListJobsRequest()).jobs)
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == code, info.value.details()
    assert words in info.value.details()
    assert len(training.ListJobs(training_pb2.ListJobsRequest()).jobs) == before


def test_missing_spec_and_run_name_clash(training: training_pb2_grpc.TrainingStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitJob(training_pb2.SubmitJobRequest())
    assert info.value.code() == INVALID and "spec is required" in info.value.details()
    spec = job_spec("mlp", run_name="fixed-name", experiment="clash")
    spec.devices.cpu = True
    first = submit(training, spec)
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already has a run named 'fixed-name'" in info.value.details()
    training.CancelJob(training_pb2.CancelJobRequest(job_id=first.job_id))


def test_ray_resources_on_the_local_backend_are_refused_not_ignored(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # The job ran, placed on no node by them, as if they were not there.
    spec = job_spec("mlp")
    spec.devices.ray_resources["node_b"] = 1
    before = len(training.ListJobs(training_pb2.ListJobsRequest()).jobs)
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert (info.value.code(), info.value.details()) == (
        PRECONDITION,
        "spec.devices.ray_resources: the local backend places jobs on this host only; they apply "
        "with training.backend = ray",
    )
    assert len(training.ListJobs(training_pb2.ListJobsRequest()).jobs) == before


def test_every_problem_of_a_spec_is_reported_at_once(training: training_pb2_grpc.TrainingStub) -> None:
    spec = job_spec("mlp", epochs=-1)
    spec.optimizer.lr = -1
    spec.data.val_split = "test"
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    # The spec's own values are wrong: INVALID_ARGUMENT, though the split is a precondition.
    assert info.value.code() == INVALID
    assert info.value.details().splitlines() == [
        "the spec has 3 problems:",
        "  spec.data.val_split: dataset 'flat' v1 has no split 'test'; it has train, val",
        "  spec.optimizer.lr: must be > 0, got -1.0",
        "  spec.epochs: must be >= 0, got -1",
    ]


@pytest.mark.parametrize("field", ["epochs", "max_steps"])
def test_a_negative_length_is_the_one_problem_of_a_warm_up(
    field: str, training: training_pb2_grpc.TrainingStub
) -> None:
    # The warm-up check also counted the job's steps from it: "the job trains -3 steps".
    spec = job_spec("mlp", lr_schedule=job_spec_pb2.LrSchedule(warmup_steps=2), **{field: -1})
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert (info.value.code(), info.value.details()) == (INVALID, f"spec.{field}: must be >= 0, got -1")


def test_problems_that_are_all_preconditions_are_failed_precondition(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = job_spec("mlp")
    spec.data.input_array = "xs"
    spec.devices.gpu_count = 9
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == PRECONDITION
    details = info.value.details()
    assert details.startswith("the spec has 2 problems:")
    assert "spec.data.input_array: dataset 'flat' v1 has no array 'xs'" in details
    assert "spec.devices.gpu_count: the job asks for 9 GPUs" in details


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (
            np.arange(40) % 5,
            "spec.architecture.output_size: is 2, but 'y' holds class id 4; set output_size to at least 5, "
            "one output per class",
        ),
        (
            np.arange(40) % 2 - 1,
            "spec.data.target_array: class ids must be >= 0, but 'y' holds -1; number the classes from 0",
        ),
    ],
    ids=["beyond the outputs", "negative"],
)
def test_class_ids_the_model_has_no_output_for_are_refused_at_submit(
    labels: np.ndarray, words: str, training_daemon, training: training_pb2_grpc.TrainingStub
) -> None:
    # They failed the job at its first step: "IndexError: Target 4 is out of bounds."
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    name = f"labels-{int(labels.min()) + 1}-{int(labels.max())}"
    upload_dataset(
        training_daemon.channel(), name, {"x": x, "y": labels.astype(np.int64)}, {"train": list(range(40))}
    )
    spec = job_spec("mlp")
    spec.data.dataset.name = name
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == PRECONDITION
    assert info.value.details() == words


@pytest.mark.parametrize(
    ("batch_size", "words"),
    [
        (1, "spec.batch_size: architecture.mlp.norm 'batch' cannot train on batches of 1 sample"),
        # 72 training samples: batches of 71 leave one over.
        (71, "72 training samples in batches of 71 leave one over; pick a batch_size that leaves none or"),
    ],
)
def test_batch_norm_batches_of_one_sample_are_refused_at_submit(
    batch_size: int, words: str, training: training_pb2_grpc.TrainingStub
) -> None:
    # They failed the job in its first epoch: "ValueError: Expected more than 1 value per
    # channel when training, got input size torch.Size([1, 16])".
    spec = job_spec("mlp", batch_size=batch_size)
    spec.architecture.mlp.norm = "batch"
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == PRECONDITION
    assert words in info.value.details()
    spec.batch_size = 70  # two over
    assert submit(training, spec).state == training_pb2.JOB_STATE_QUEUED


def test_a_conv_net_whose_batch_norm_sees_one_value_per_sample_refuses_batches_of_one(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # 6x6 images pooled to 3x3 and then 1x1: the third block's batch norm has one value per
    # channel of a sample, and failed the job with "Expected more than 1 value per channel".
    spec = job_spec("cnn2d", batch_size=1)
    spec.architecture.cnn2d.channels[:] = [4, 4, 4]
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == PRECONDITION
    assert info.value.details() == (
        "spec.batch_size: architecture.cnn2d.norm 'batch' cannot train on batches of 1 sample; set "
        "batch_size >= 2, or norm 'none'"
    )
    spec.architecture.cnn2d.channels[:] = [4, 4]  # 3x3 values at the last norm: a sample is enough
    assert submit(training, spec).state == training_pb2.JOB_STATE_QUEUED


def test_a_warm_up_as_long_as_the_job_and_the_highest_lr_are_taken(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # 6 steps (72 samples, batches of 24, 2 epochs): the rate reaches optimizer.lr at the last.
    spec = job_spec("mlp", lr_schedule=job_spec_pb2.LrSchedule(warmup_steps=6))
    spec.optimizer.name, spec.optimizer.lr = "sgd", 10.0
    job = submit(training, spec)
    training.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))


def test_a_zero_written_where_zero_is_in_range_is_kept(training: training_pb2_grpc.TrainingStub) -> None:
    """adam's beta1 0 (no momentum) is a value of its own: it was taken as unset and trained as 0.9."""
    spec = job_spec("mlp", max_steps=1)
    spec.optimizer.beta1 = 0.0
    job = submit(training, spec)
    run = training.GetRun(training_pb2.GetRunRequest(run_id=job.run_id))
    assert (run.params["optimizer.beta1"], run.params["optimizer.beta2"]) == ("0.0", "0.999")


def test_samples_without_a_channel_axis_are_told_to_add_one_not_to_set_a_shape_the_family_refuses(
    training: training_pb2_grpc.TrainingStub, training_daemon
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4, 4, 4)).astype(np.float32)  # (N, T, D, H, W): no channel axis
    upload_dataset(
        training_daemon.channel(),
        "clips-unchanneled",
        {"x": x, "y": np.arange(8) % 2},
        {"train": list(range(8))},
    )
    spec = job_spec("cnn4d")
    spec.data.dataset.name = "clips-unchanneled"
    spec.architecture.input_shape[:] = [2, 3, 4, 4, 4]
    with pytest.raises(grpc.RpcError) as info:
        submit(training, spec)
    assert info.value.code() == PRECONDITION
    assert (
        "spec.architecture.input_shape: the model takes samples shaped [2, 3, 4, 4, 4] but array 'x' of "
        "dataset 'clips-unchanneled' v1 holds samples shaped [3, 4, 4, 4], without the channel axis a "
        "cnn4d takes (C, T, D, H, W): add one, x[:, None] (shape N, 1, T, D, H, W), push it again and "
        "set input_shape to [1, 3, 4, 4, 4]"
    ) in info.value.details()

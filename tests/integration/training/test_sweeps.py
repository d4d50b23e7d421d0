"""Sweeps: grid and ASHA trials run as jobs, at most max_concurrent at a time."""

from __future__ import annotations

import re
import signal
import statistics
import threading
import time
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc, job_spec_pb2, training_pb2, training_pb2_grpc
from tesserad.config import format_size
from tesserad.errors import InvalidArgument, ResourceExhausted
from tesserad.store import WriteTxn, decode_record
from tesserad.training import sweeps
from tesserad.training.job_records import ENDED
from tesserad.training.jobs import Jobs
from tests.conftest import InProcessDaemon
from tests.integration.training.conftest import (
    follow,
    job_spec,
    of_kind,
    states,
    sweep_values,
    upload_dataset,
    wait_sweep,
)

S = training_pb2


def test_grid_sweep_runs_every_combination(training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[
            sweep_values("optimizer.lr", "0.001", "0.05"),
            sweep_values("architecture.mlp.activation", "relu", "tanh"),
        ],
        max_concurrent=2,
        metric="val_loss",
    )
    submitted = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert submitted.state == S.SWEEP_STATE_RUNNING
    assert sum(1 for t in submitted.trials if t.job_id) == 2  # the others wait their turn
    sweep = wait_sweep(training, submitted.sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert sorted(
        (t.params["optimizer.lr"], t.params["architecture.mlp.activation"]) for t in sweep.trials
    ) == [("0.001", "relu"), ("0.001", "tanh"), ("0.05", "relu"), ("0.05", "tanh")]
    assert all(t.state == S.JOB_STATE_SUCCEEDED and t.has_metric for t in sweep.trials)
    best = min(sweep.trials, key=lambda t: t.metric)
    assert sweep.best_job_id == best.job_id
    job = training.GetJob(S.GetJobRequest(job_id=best.job_id))
    assert job.sweep_id == sweep.sweep_id
    assert job.spec.optimizer.lr == float(best.params["optimizer.lr"])
    jobs = training.ListJobs(S.ListJobsRequest(sweep_id=sweep.sweep_id)).jobs
    assert {j.job_id for j in jobs} == {t.job_id for t in sweep.trials}
    listed = training.ListSweeps(S.ListSweepsRequest())
    assert sweep.sweep_id in {s.sweep_id for s in listed.sweeps}


def test_points_logged_to_an_ended_trials_run_leave_the_sweeps_result_alone(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    """A trial's run takes a user's late points, as any ended run (a test-set score); the sweep
    ranks its trials by their jobs' epoch metrics, never by their runs' summaries."""
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1, experiment="late-trial-points"),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.001", "0.05")],
        max_concurrent=2,
        metric="val_loss",
    )
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    worst = max(sweep.trials, key=lambda t: t.metric)
    run_id = training.GetJob(S.GetJobRequest(job_id=worst.job_id)).run_id
    point = S.MetricPoint(key="val_loss", value=-1.0, step=10_000)
    training.LogMetrics(S.LogMetricsRequest(run_id=run_id, points=[point]))
    after = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    assert after.best_job_id == sweep.best_job_id != worst.job_id
    assert [(t.job_id, t.metric) for t in after.trials] == [(t.job_id, t.metric) for t in sweep.trials]
    assert training.GetJob(S.GetJobRequest(job_id=worst.job_id)).metrics["val_loss"] == worst.metric


def test_a_sweep_base_past_256_kib_is_refused_at_submit_whatever_it_registers(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    """Each trial keeps a copy of the base in its job's record: a base as large as a run's params
    and tags may be (2 MiB) took gigabytes over a thousand trials."""
    base = job_spec("mlp", experiment="big-sweep-base")
    base.tags.update({f"note{i}": "x" * 1000 for i in range(262)})
    size = base.ByteSize()
    assert 256 * 2**10 < size < 300 * 2**10
    spec = S.SweepSpec(
        base=base,
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.01")],
        metric="val_loss",
    )
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"spec.base takes {format_size(size)} ({size:,} bytes) serialized; a sweep's base spec takes at "
        "most 256 KiB, as each of its trials keeps a copy in its job's record; keep large values in a "
        "file and name it"
    )
    assert not training.ListJobs(S.ListJobsRequest(experiment="big-sweep-base")).jobs


def test_asha_prunes_trials_that_trail_at_a_rung(training: training_pb2_grpc.TrainingStub) -> None:
    # Seed 6 draws lr 0.05 first, then 1e-7 twice: the first trial learns, the later two barely
    # move from the same initial weights, so at the first rung (epoch 1) they trail it. A trial
    # runs on while its rung is judged, so it gets epochs enough that the cancel lands first.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=40),
        strategy=S.SWEEP_STRATEGY_ASHA,
        parameters=[sweep_values("optimizer.lr", "0.05", "0.0000001")],
        max_trials=3,
        max_concurrent=1,
        seed=6,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=2),
    )
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.params["optimizer.lr"] for t in sweep.trials] == ["0.05", "0.0000001", "0.0000001"]
    assert [(t.pruned, t.state) for t in sweep.trials] == [
        (False, S.JOB_STATE_SUCCEEDED),
        (True, S.JOB_STATE_CANCELLED),
        (True, S.JOB_STATE_CANCELLED),
    ]
    assert sweep.best_job_id == sweep.trials[0].job_id
    for trial in sweep.trials[1:]:
        # Ranked by the metric its rung judged it on, not one of the epochs it ran on meanwhile.
        epochs = of_kind(follow(training, trial.job_id), "epoch")
        at_rung = next(e for e in epochs if e.epoch == trial.pruned_at_epoch)
        assert trial.metric == at_rung.metrics["train_loss"]
        # Its run says it was pruned, not cancelled by a user.
        run_id = training.GetJob(S.GetJobRequest(job_id=trial.job_id)).run_id
        run = training.GetRun(S.GetRunRequest(run_id=run_id))
        assert run.tags["tessera.pruned_at_epoch"] == str(trial.pruned_at_epoch)


def test_a_sweep_without_a_seed_draws_one_and_keeps_it(training: training_pb2_grpc.TrainingStub) -> None:
    # As Optuna and Ray Tune draw afresh unless seeded: two sweeps over one space drew the same
    # trials, from seed 0. The seed drawn is answered, so the sweep can be repeated.
    def spec(**fields: Any) -> S.SweepSpec:
        return S.SweepSpec(
            base=job_spec("mlp", epochs=1),
            strategy=S.SWEEP_STRATEGY_RANDOM,
            parameters=[_range("optimizer.lr", 0.001, 0.1)],
            max_trials=4,
            metric="train_loss",
            **fields,
        )

    def submitted(sweep_spec: S.SweepSpec) -> S.Sweep:
        sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=sweep_spec))
        training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
        wait_sweep(training, sweep.sweep_id)
        return sweep

    first, second = submitted(spec()), submitted(spec())
    assert first.spec.HasField("seed") and second.spec.HasField("seed")
    assert first.spec.seed != second.spec.seed
    assert [t.params for t in first.trials] != [t.params for t in second.trials]
    again = submitted(spec(seed=first.spec.seed))
    assert [t.params for t in again.trials] == [t.params for t in first.trials]
    shown = training.GetSweep(S.GetSweepRequest(sweep_id=first.sweep_id))
    assert shown.spec.seed == first.spec.seed
    zero = submitted(spec(seed=0))
    assert zero.spec.HasField("seed") and zero.spec.seed == 0


def test_a_refusal_after_the_seed_was_drawn_names_the_seed(training: training_pb2_grpc.TrainingStub) -> None:
    # A random sweep's trials are checked as drawn: another draw may be accepted, so the refusal
    # names the seed that repeats it. Every draw here has a negative weight decay, refused.
    def spec(**fields: Any) -> S.SweepSpec:
        return S.SweepSpec(
            base=job_spec("mlp", epochs=1),
            strategy=S.SWEEP_STRATEGY_RANDOM,
            parameters=[sweep_values("optimizer.weight_decay", "-1")],
            max_trials=2,
            metric="train_loss",
            **fields,
        )

    with pytest.raises(grpc.RpcError) as drawn:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec()), timeout=60)
    assert drawn.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    seed = re.search(
        r" \(seed (\d+) was drawn: set seed = (\d+) to repeat this draw\)$", drawn.value.details()
    )
    assert seed is not None and seed[1] == seed[2]
    with pytest.raises(grpc.RpcError) as seeded:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec(seed=int(seed[1]))), timeout=60)
    assert seeded.value.details() == drawn.value.details().removesuffix(seed[0])


def test_a_refusal_at_its_length_limit_keeps_the_seed_that_repeats_it(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # The trial's values are echoed in the refusal: long ones (250 characters, the most a value
    # takes) bring it to the messages' limit, whose middle is left out; the seed that repeats the
    # draw, at its end, must stay.
    padded = {
        "optimizer.lr": "0.1",
        "optimizer.momentum": "0.9",
        "optimizer.grad_clip_norm": "1.0",
        "optimizer.eps": "0.00000001",
        "seed": "7",
        "priority": "1",
    }
    parameters = [sweep_values(path, value.rjust(250, "0")) for path, value in padded.items()]
    parameters.append(sweep_values("optimizer.weight_decay", "-" + "1.0".rjust(249, "0")))
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_RANDOM,
        parameters=parameters,
        max_trials=1,
        metric="train_loss",
    )
    with pytest.raises(grpc.RpcError) as drawn:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    details = drawn.value.details()
    assert "bytes left out" in details
    assert re.search(r" \(seed (\d+) was drawn: set seed = \1 to repeat this draw\)$", details)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (
            "lr",
            "spec.parameters: 'lr' does not name a single value field of JobSpec (at 'lr'); did you mean 'optimizer.lr'?",
        ),
        (
            "optimizer.nope.x",
            "spec.parameters: 'optimizer.nope.x' does not name a field of JobSpec (at 'nope')",
        ),
    ],
)
def test_a_path_that_names_no_field_is_refused_without_a_seed_to_repeat_it(
    path: str, words: str, training: training_pb2_grpc.TrainingStub
) -> None:
    # Every draw over such a path is refused: a seed named as if another draw might pass misleads.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_RANDOM,
        parameters=[_range(path, 0.001, 0.1)],
        max_trials=2,
        metric="train_loss",
    )
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == words


@pytest.mark.parametrize(
    ("base", "parameter", "words"),
    [
        (
            {},
            S.SweepParameter(
                path="architecture.cnn2d.kernel_size", range=S.SweepRange(min=3, max=5, integer=True)
            ),
            "spec.parameters: 'architecture.cnn2d.kernel_size': the base spec sets family to mlp, not "
            "cnn2d; set the base's architecture to cnn2d, or add a parameter for architecture.family",
        ),
        (
            {"lr_schedule": job_spec_pb2.LrSchedule(cosine=job_spec_pb2.CosineLr(min_lr=0.0001))},
            S.SweepParameter(
                path="lr_schedule.step.step_size", range=S.SweepRange(min=1, max=5, integer=True)
            ),
            "spec.parameters: 'lr_schedule.step.step_size': the base spec sets schedule to cosine, not "
            "step; set the base's lr_schedule to step",
        ),
    ],
)
def test_a_path_into_a_member_the_base_does_not_set_is_refused_without_a_seed_to_repeat_it(
    base: dict[str, Any], parameter: S.SweepParameter, words: str, training: training_pb2_grpc.TrainingStub
) -> None:
    # No parameter draws the member: every draw is refused, so no seed may be named as if another
    # draw might pass.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1, **base),
        strategy=S.SWEEP_STRATEGY_RANDOM,
        parameters=[parameter],
        max_trials=2,
        metric="train_loss",
    )
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == words


def test_a_metric_no_trial_reports_is_refused_naming_the_one_meant(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.01")],
        metric="val_acc",
    )
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    assert info.value.details().endswith("not 'val_acc'; did you mean 'val_accuracy'?")


def test_a_grid_sweep_draws_no_seed(
    training_daemon: InProcessDaemon, training: training_pb2_grpc.TrainingStub
) -> None:
    # A grid draws nothing (as Ray Tune's grid_search): a seed drawn for it was answered and kept,
    # claiming the sweep is repeated by it. One the client set is kept as given.
    def submitted(**fields: Any) -> S.Sweep:
        spec = S.SweepSpec(
            base=job_spec("mlp", epochs=1),
            strategy=S.SWEEP_STRATEGY_GRID,
            parameters=[sweep_values("optimizer.lr", "0.01")],
            metric="train_loss",
            **fields,
        )
        return training.SubmitSweep(S.SubmitSweepRequest(spec=spec))

    unseeded = submitted()
    assert not unseeded.spec.HasField("seed")
    ended = wait_sweep(training, unseeded.sweep_id)
    assert ended.state == S.SWEEP_STATE_SUCCEEDED and not ended.spec.HasField("seed")
    listed = training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps
    assert not next(s for s in listed if s.sweep_id == unseeded.sweep_id).spec.HasField("seed")
    # Its record holds no seed, as before seeds were stored: a null one, under the same schema,
    # failed an older daemon's every answer holding the sweep (its seed set to None).
    with training_daemon.daemon._store.read() as txn:
        stored = decode_record(txn.get("sweeps", (unseeded.sweep_id,)), sweeps.KIND, sweeps.SCHEMA)[1]
    assert "seed" not in stored
    seeded = submitted(seed=7)
    assert seeded.spec.HasField("seed") and seeded.spec.seed == 7
    assert wait_sweep(training, seeded.sweep_id).spec.seed == 7


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.ClearField("base"), "spec.base is required"),
        (lambda s: setattr(s, "strategy", S.SWEEP_STRATEGY_UNSPECIFIED), "spec.strategy"),
        (
            lambda s: s.parameters.add(path="optimizer.nope", values=S.SweepValues(values=["1"])),
            "'optimizer.nope' does not name",
        ),
        (
            lambda s: s.parameters.add(path="batch_size", values=S.SweepValues(values=["big"])),
            "spec.parameters: 'batch_size': 'big' is not a valid value for this field; expected a whole number",
        ),
        (
            lambda s: s.parameters.add(path="epochs", range=S.SweepRange(min=1, max=3)),
            "a grid sweep needs explicit values",
        ),
        (
            lambda s: s.parameters.add(path="optimizer.weight_decay", values=S.SweepValues(values=["nan"])),
            "spec.optimizer.weight_decay: must be a finite number >= 0, got nan",
        ),
        (
            lambda s: (
                setattr(s, "strategy", S.SWEEP_STRATEGY_RANDOM),
                s.parameters.add(path="optimizer.weight_decay", range=S.SweepRange(min=0, max=float("inf"))),
            ),
            "parameters[1].range: min and max must be finite numbers, got 0.0 and inf",
        ),
        (lambda s: setattr(s, "metric", "val_f1"), "spec.metric: trial 0 (optimizer.lr=0.01) reports"),
        (
            lambda s: s.parameters.add(
                path="architecture.lstm.hidden_size", values=S.SweepValues(values=["4"])
            ),
            "sets family to mlp, not lstm",
        ),
        # Each trial's tags become its run's and its version's: refused before any trial runs.
        (lambda s: s.base.tags.update({"": "x"}), "spec.tags: key '' must be 1 to 250 characters"),
    ],
)
def test_bad_sweeps_are_refused(change, words: str, training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp"),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.01")],
        metric="val_loss",
    )
    change(spec)
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert words in info.value.details()


def _range(path: str, low: float, high: float, **fields: Any) -> S.SweepParameter:
    return S.SweepParameter(path=path, range=S.SweepRange(min=low, max=high, **fields))


@pytest.mark.parametrize(
    ("strategy", "parameters", "fields", "message"),
    [
        (
            S.SWEEP_STRATEGY_GRID,
            [S.SweepParameter(path="optimizer.lr", values=S.SweepValues())],
            {},
            "spec.parameters[0].values: list at least one value",
        ),
        (
            S.SWEEP_STRATEGY_RANDOM,
            [_range("optimizer.lr", 0.1, 0.01)],
            {"max_trials": 2},
            "spec.parameters[0].range: need min <= max, got 0.1 and 0.01",
        ),
        (
            S.SWEEP_STRATEGY_RANDOM,
            [_range("optimizer.lr", 0, 0.01, log_scale=True)],
            {"max_trials": 2},
            "spec.parameters[0].range: a log-scale range needs min > 0",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("optimizer.momentum", "0.9", when=("optimizer.name", ["sgd"]))],
            {},
            "spec.parameters[0].when: 'optimizer.name' must be a categorical parameter listed before "
            "'optimizer.momentum'",
        ),
        (S.SWEEP_STRATEGY_GRID, [], {}, "spec.parameters: a sweep varies at least one field"),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1"), sweep_values("seed", "2")],
            {},
            "spec.parameters[1].path: 'seed' is listed twice (spec.parameters[0] sets it too); give each "
            "field one parameter, with every value it takes",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("", "1")],
            {},
            "spec.parameters[0].path: is required: the JobSpec field the parameter sets, e.g. optimizer.lr",
        ),
        (
            S.SWEEP_STRATEGY_RANDOM,
            [_range("batch_size", 8, 32)],
            {"max_trials": 2},
            "spec.parameters[0].range: 'batch_size' takes whole numbers; set range.integer = true",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [_range("epochs", 1, 3)],
            {},
            "spec.parameters[0]: a grid sweep needs explicit values for epochs, not a range",
        ),
        (
            S.SWEEP_STRATEGY_RANDOM,
            [_range("optimizer.lr", 0.001, 0.1)],
            {"max_trials": 1001},
            "spec.max_trials: a sweep runs at most 1000 trials, got 1001",
        ),
        (
            S.SWEEP_STRATEGY_RANDOM,
            [_range("optimizer.lr", 0.001, 0.1)],
            {"max_trials": 0},
            "spec.max_trials: a random sweep needs the number of trials (> 0)",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1")],
            {"max_trials": -1},
            "spec.max_trials must be >= 0, got -1",
        ),
        (
            S.SWEEP_STRATEGY_TPE,
            [_range("optimizer.lr", 0.001, 0.1)],
            {"max_trials": 1001},
            "spec.max_trials: a tpe sweep needs the number of trials (1 to 1000), got 1001",
        ),
        (
            S.SWEEP_STRATEGY_PBT,
            [_range("optimizer.lr", 0.001, 0.1)],
            {"max_trials": 5},
            "spec.max_trials: PBT runs generations of 4 trials; give at least two generations (8 trials), got 5",
        ),
        (
            S.SWEEP_STRATEGY_CMA_ES,
            [sweep_values("optimizer.name", "adam", "sgd")],
            {"max_trials": 2},
            "spec.parameters[0]: CMA-ES searches numeric ranges only and 'optimizer.name' is categorical; "
            "use strategy TPE for categorical or conditional parameters",
        ),
        (
            # A trial the grid plans says which it is, as one a searcher draws does.
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("optimizer.lr", "0.1", "-1")],
            {},
            "trial 1 (optimizer.lr=-1): spec.optimizer.lr: must be > 0, got -1.0",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1")],
            {"mode": 77},
            "spec.mode: unknown value 77; use MIN or MAX",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1")],
            {"max_concurrent": 10**6},
            "spec.max_concurrent must be 0 (for 1) to 1000, a sweep's most trials; got 1000000",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1")],
            {"max_concurrent": -1},
            "spec.max_concurrent must be 0 (for 1) to 1000, a sweep's most trials; got -1",
        ),
        (
            # It was dropped without a word: trials' runs are SWEEP_ID-TRIAL_NUMBER.
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1")],
            {"base": job_spec("mlp", epochs=1, run_name="baseline")},
            "spec.base.run_name: a sweep names its trials' runs itself (SWEEP_ID-TRIAL_NUMBER); leave it "
            "unset, and group the trials' runs by spec.base.experiment or tags",
        ),
        (
            # Each trial moved the alias to its own version in turn: it ended on the last to finish.
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("seed", "1", "2")],
            {
                "base": job_spec(
                    "mlp", epochs=1, register_as=job_spec_pb2.RegisterAs(model="tuned", alias="prod")
                )
            },
            "spec.base.register_as.alias: each trial registers a version of 'tuned' as it succeeds, so "
            "'prod' would move to each in turn and end on the trial that finished last, not the best; "
            "leave the alias unset, and once the sweep ended set it on the best trial's version (the "
            "sweep's best_job_id; its job's registered version) with SetAlias",
        ),
        (
            S.SWEEP_STRATEGY_HYPERBAND,
            [_range("optimizer.lr", 0.001, 0.1)],
            {},
            "spec.max_trials: a hyperband sweep needs the number of trials (> 0)",
        ),
        (
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("lr", "0.1")],
            {},
            "spec.parameters: 'lr' does not name a single value field of JobSpec (at 'lr'); "
            "did you mean 'optimizer.lr'?",
        ),
        (
            # Each trial stores the values it draws, as given, in the sweep's record, which every
            # trial's update writes again: 1,000 trials of a 120 KiB value took 120 MB.
            S.SWEEP_STRATEGY_RANDOM,
            [sweep_values("run_name", "short", "r" * 251)],
            {"max_trials": 2},
            "spec.parameters[0].values[1]: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'… "
            "is 251 characters; a sweep's value takes at most 250, as every trial keeps the values "
            "it draws: give shorter ones",
        ),
        (
            # A number parses from text padded to any length.
            S.SWEEP_STRATEGY_GRID,
            [sweep_values("optimizer.lr", "0.1", " " * 100_000 + "0.001")],
            {},
            f"spec.parameters[0].values[1]: {' ' * 80!r}… is 100,005 characters; a sweep's value "
            "takes at most 250, as every trial keeps the values it draws: give shorter ones",
        ),
    ],
)
def test_a_bad_sweep_is_refused_naming_its_field_and_stores_nothing(
    strategy: int,
    parameters: list[S.SweepParameter],
    fields: dict[str, Any],
    message: str,
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # The request's field is spec: every refusal names its field from there, as spec.metric does.
    spec = S.SweepSpec(
        **{"base": job_spec("mlp", epochs=1), **fields},
        strategy=strategy,
        parameters=parameters,
        metric="train_loss",
    )
    sweeps_before = training.ListSweeps(S.ListSweepsRequest()).sweeps
    jobs_before = training.ListJobs(S.ListJobsRequest()).jobs
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert training.ListSweeps(S.ListSweepsRequest()).sweeps == sweeps_before
    assert training.ListJobs(S.ListJobsRequest()).jobs == jobs_before


def test_a_search_space_past_256_kib_is_refused_and_stores_nothing(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # 3,000 run names of 125 characters: each sweep answer (GetSweep, ListSweeps) carries them all.
    parameter = sweep_values("run_name", *(f"r{i:04}-" + "a" * 119 for i in range(3000)))
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1), strategy=S.SWEEP_STRATEGY_RANDOM, max_trials=1, metric="train_loss"
    )
    spec.parameters.append(parameter)
    size = parameter.ByteSize()
    sweeps_before = training.ListSweeps(S.ListSweepsRequest()).sweeps
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"spec.parameters take {format_size(size)} ({size:,} bytes) serialized; a sweep's search space "
        "takes at most 256 KiB, as it travels whole in every answer with the sweep (GetSweep, ListSweeps): "
        "list fewer or shorter values"
    )
    assert training.ListSweeps(S.ListSweepsRequest()).sweeps == sweeps_before


def queued_grid(trials: int) -> S.SweepSpec:
    """A grid of `trials` seeds, all submitted at once; their steps outlast the test, so one
    trial runs and the others wait queued until cancelled."""
    return S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", *(str(i) for i in range(trials)))],
        max_concurrent=trials,
        metric="train_loss",
    )


def test_cancel_sweep_cancels_its_trials(training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2", "3")],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert cancelled.state == S.SWEEP_STATE_CANCELLED
    assert [t.state for t in cancelled.trials][1:] == [S.JOB_STATE_CANCELLED, S.JOB_STATE_CANCELLED]
    deadline = time.monotonic() + 60
    while (
        training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id)).trials[0].state != S.JOB_STATE_CANCELLED
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert training.GetJob(S.GetJobRequest(job_id=cancelled.trials[0].job_id)).state == S.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as info:
        training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended (cancelled)" in info.value.details()


def test_cancel_sweep_writes_the_sweep_record_a_few_times_however_many_trials_it_cancels(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each queued trial's cancelled end rewrote the whole sweep record (every trial in it): a
    # cancel's writes grew with the trials, its time with their square (a minute for 300).
    trials = 40
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=queued_grid(trials)))
    written: list[str] = []

    def counted(record: sweeps.Sweep) -> bytes:
        written.append(record.sweep_id)
        return encode_sweep(record)

    encode_sweep = sweeps.encode_sweep
    monkeypatch.setattr(sweeps, "encode_sweep", counted)
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    monkeypatch.undo()
    # The cancel's own write, the queued trials' ends in one, and one for each running trial (of
    # the daemon's 2 CPU slots) that stopped before the answer.
    assert written.count(sweep.sweep_id) <= 4
    assert cancelled.state == S.SWEEP_STATE_CANCELLED
    queued = [t.job_id for t in cancelled.trials if t.state == S.JOB_STATE_CANCELLED]
    assert len(queued) >= trials - 2
    assert states(follow(training, queued[-1]))[-1] == S.JOB_STATE_CANCELLED
    deadline = time.monotonic() + 60
    ended = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    while any(t.state != S.JOB_STATE_CANCELLED for t in ended.trials):  # the running trials stop
        assert time.monotonic() < deadline
        time.sleep(0.1)
        ended = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    assert ended.state == S.SWEEP_STATE_CANCELLED
    assert [t.state for t in ended.trials] == [S.JOB_STATE_CANCELLED] * trials
    listed = training.ListJobs(S.ListJobsRequest(sweep_id=sweep.sweep_id, page_size=100)).jobs
    assert sorted(j.job_id for j in listed) == sorted(t.job_id for t in ended.trials)
    assert all(j.state == S.JOB_STATE_CANCELLED for j in listed)


def test_cancel_sweep_stores_its_queued_trials_ends_in_one_commit(
    training: training_pb2_grpc.TrainingStub,
    training_daemon: InProcessDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each queued trial's end was its own commit, waited for before the next trial's cancel: a
    # sweep of K queued trials committed K times.
    trials = 30
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=queued_grid(trials)))
    queued = {t.job_id for t in sweep.trials[2:]}  # the first two run (2 CPU slots), the others wait
    store = training_daemon.daemon._store
    store.flush()  # the trials' queued events may still wait for a commit after SubmitSweep answers
    commits: set[object] = set()
    put = WriteTxn.put

    def counted(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
        if table == "jobs" and key[0] in queued:
            # The group commits so far number the one under way; a direct write is one of its own.
            on_committer = threading.current_thread().name == "store-group-commit"
            commits.add(store.group_commits if on_committer else object())
        return put(txn, table, key, value, **kwargs)

    monkeypatch.setattr(WriteTxn, "put", counted)
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    monkeypatch.undo()
    assert len(commits) == 1
    assert [t.state for t in cancelled.trials[2:]] == [S.JOB_STATE_CANCELLED] * (trials - 2)
    for job_id in queued:  # each stored as ended, and its watchers told
        assert states(follow(training, job_id))[-1] == S.JOB_STATE_CANCELLED
    deadline = time.monotonic() + 60
    while any(  # the running trials stop
        t.state != S.JOB_STATE_CANCELLED
        for t in training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id)).trials
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_cancelled_sweep_refuses_another_cancel_while_its_trials_stop(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # A cancelled sweep stayed among the running until its trial's job had stopped: a second
    # CancelSweep in between was answered as the first, one after it refused, and GetSweep could
    # show every trial cancelled before that.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2")],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    job_id = sweep.trials[0].job_id
    events = training.WatchJob(S.WatchJobRequest(job_id=job_id), timeout=120)
    next(e for e in events if e.WhichOneof("event") == "step")  # running, so it stops at a step boundary
    events.cancel()
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert cancelled.state == S.SWEEP_STATE_CANCELLED
    for _ in range(2):  # while its trial stops, then once it has
        with pytest.raises(grpc.RpcError) as info:
            training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == f"sweep {sweep.sweep_id} has already ended (cancelled)"
        assert states(follow(training, job_id))[-1] == S.JOB_STATE_CANCELLED
    ended = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    assert ended.state == S.SWEEP_STATE_CANCELLED
    assert [t.state for t in ended.trials] == [S.JOB_STATE_CANCELLED, S.JOB_STATE_CANCELLED]


def test_a_sweep_whose_last_trial_ends_during_its_cancel_ends_cancelled(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trial's end, taken between the cancel's state change and its trials' cancel, ended the
    # sweep under the cancel, whose own end of it then failed: CancelSweep answered INTERNAL.
    cancel_trials = sweeps.Sweeps._cancel_trials

    def ending_first(self: sweeps.Sweeps, sweep: sweeps.Sweep, job_ids: list[str]) -> Any:
        for job_id in job_ids:
            training.CancelJob(S.CancelJobRequest(job_id=job_id))
        deadline = time.monotonic() + 60
        while True:  # until the sweep has taken the trials' ends
            with self._lock:
                if all(t.state in ENDED for t in sweep.trials):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return cancel_trials(self, sweep, job_ids)

    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1")],
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    monkeypatch.setattr(sweeps.Sweeps, "_cancel_trials", ending_first)
    cancelled = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    monkeypatch.undo()
    assert cancelled.state == S.SWEEP_STATE_CANCELLED
    assert [t.state for t in cancelled.trials] == [S.JOB_STATE_CANCELLED]
    with pytest.raises(grpc.RpcError) as info:
        training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert info.value.details() == f"sweep {sweep.sweep_id} has already ended (cancelled)"


@pytest.mark.parametrize(
    ("strategy", "max_trials", "words"),
    [
        (S.SWEEP_STRATEGY_GRID, 0, "the grid has more than 1000 points"),
        (S.SWEEP_STRATEGY_RANDOM, 2**31 - 1, "a sweep runs at most 1000 trials, got 2147483647"),
    ],
)
def test_a_sweep_of_too_many_trials_is_refused_before_they_are_listed(
    strategy: int, max_trials: int, words: str, training: training_pb2_grpc.TrainingStub
) -> None:
    # A million grid points (or two billion random ones) were listed, and deduplicated pairwise,
    # before their number was checked: the call never came back.
    ten = [str(i + 1) for i in range(10)]
    paths = ("seed", "batch_size", "epochs", "optimizer.lr", "optimizer.weight_decay", "max_steps")
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=strategy,
        parameters=[sweep_values(path, *ten) for path in paths],
        max_trials=max_trials,
        metric="val_loss",
    )
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()


def test_a_grid_capped_by_max_trials_runs_its_first_points(training: training_pb2_grpc.TrainingStub) -> None:
    ten = [str(i + 1) for i in range(10)]
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values(path, *ten) for path in ("seed", "batch_size", "epochs", "max_steps")],
        max_trials=2,
        max_concurrent=2,
        metric="val_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec), timeout=60)
    assert [dict(t.params) for t in sweep.trials] == [
        {"seed": "1", "batch_size": "1", "epochs": "1", "max_steps": "1"},
        {"seed": "1", "batch_size": "1", "epochs": "1", "max_steps": "2"},
    ]
    assert wait_sweep(training, sweep.sweep_id).state == S.SWEEP_STATE_SUCCEEDED


def test_a_trial_that_ran_to_its_end_is_not_counted_nor_tagged_pruned(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # max_steps ends each trial after its first epoch (3 steps of 24 of 72 rows), at ASHA's first
    # rung, where the two later trials trail the first: they were marked pruned at epoch 1
    # though they had already succeeded, and a searcher would be told they were stopped early.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=3, max_steps=3),
        strategy=S.SWEEP_STRATEGY_GRID,
        pruner=S.SWEEP_PRUNER_ASHA,
        parameters=[sweep_values("optimizer.lr", "0.05", "0.0000001", "0.00000001")],
        max_concurrent=1,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=2),
    )
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [(t.state, t.pruned, t.pruned_at_epoch) for t in sweep.trials] == [
        (S.JOB_STATE_SUCCEEDED, False, 0)
    ] * 3
    # Nor does its run say it was pruned: the prune tagged it before its cancel was refused.
    for trial in sweep.trials:
        run_id = training.GetJob(S.GetJobRequest(job_id=trial.job_id)).run_id
        assert "tessera.pruned_at_epoch" not in training.GetRun(S.GetRunRequest(run_id=run_id)).tags


def _asha_grid(epochs: int) -> S.SweepSpec:
    """Two trials one at a time: the second (lr 1e-7) barely moves from the same initial weights,
    so it trails the first at ASHA's first rung (epoch 1) and is pruned there."""
    return S.SweepSpec(
        base=job_spec("mlp", epochs=epochs),
        strategy=S.SWEEP_STRATEGY_GRID,
        pruner=S.SWEEP_PRUNER_ASHA,
        parameters=[sweep_values("optimizer.lr", "0.05", "0.0000001")],
        max_concurrent=1,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=2),
    )


def _worker_pids() -> set[int]:
    """The daemon's job workers: the children of its fork server (training.worker_start)."""
    return {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if "forkserver" in " ".join(child.parent().cmdline())
    }


def test_a_pruned_trial_that_failed_before_its_cancel_is_failed_not_pruned(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its worker crashes between the prune and its cancel: the trial failed on its own, as Optuna
    # and Ray Tune count a trial that errored (FAILED, ERROR), whatever a pruner had decided. It
    # was shown pruned at epoch 1, its run tagged so, though its job and run say it failed.
    prune = sweeps.Sweeps._prune

    def crashing_first(self: sweeps.Sweeps, job_id: str, epoch: int) -> None:
        (pid,) = _worker_pids()
        psutil.Process(pid).send_signal(signal.SIGSEGV)
        deadline = time.monotonic() + 60
        while self._jobs.get(job_id).state != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        prune(self, job_id, epoch)

    monkeypatch.setattr(sweeps.Sweeps, "_prune", crashing_first)
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=_asha_grid(40))).sweep_id)
    assert [(t.state, t.pruned, t.pruned_at_epoch) for t in sweep.trials] == [
        (S.JOB_STATE_SUCCEEDED, False, 0),
        (S.JOB_STATE_FAILED, False, 0),
    ]
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED and sweep.best_job_id == sweep.trials[0].job_id
    run_id = training.GetJob(S.GetJobRequest(job_id=sweep.trials[1].job_id)).run_id
    run = training.GetRun(S.GetRunRequest(run_id=run_id))
    assert run.status == S.RUN_STATUS_FAILED and "tessera.pruned_at_epoch" not in run.tags


def test_a_pruned_trial_that_failed_while_stopping_for_its_prune_stays_pruned(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prune's cancel was accepted, and the job failed as it stopped (the store refused its
    # stop checkpoint): it ended for the prune, not on its own, yet was shown failed and not
    # pruned, its run's pruned tag taken away.
    def failing_as_it_stops(self: Jobs, job: Any, at_step_boundary: bool) -> None:
        self._fail(job, "storage", "the job stopped: storing its checkpoint failed: the store is full")

    monkeypatch.setattr(Jobs, "_cancelled", failing_as_it_stops)
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=_asha_grid(40))).sweep_id)
    assert [(t.state, t.pruned, t.pruned_at_epoch) for t in sweep.trials] == [
        (S.JOB_STATE_SUCCEEDED, False, 0),
        (S.JOB_STATE_FAILED, True, 1),
    ]
    run_id = training.GetJob(S.GetJobRequest(job_id=sweep.trials[1].job_id)).run_id
    assert training.GetRun(S.GetRunRequest(run_id=run_id)).tags["tessera.pruned_at_epoch"] == "1"


def test_a_sweep_whose_trials_were_pruned_or_failed_ends_failed_saying_none_succeeded(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first trial passes the rungs and then its worker crashes; the second is pruned at the
    # first rung, behind the first's result there. No trial succeeded, so none is best: it ended
    # SUCCEEDED with no best trial.
    changed = sweeps.Sweeps._changed
    crashed: list[int] = []

    def crashing_the_first_past_its_first_rung(self: sweeps.Sweeps, sweep: Any, trial: Any) -> None:
        changed(self, sweep, trial)
        if trial.number == 0 and "1" in trial.rungs and trial.state not in ENDED and not crashed:
            crashed.append(trial.number)
            for pid in _worker_pids():
                psutil.Process(pid).send_signal(signal.SIGSEGV)

    monkeypatch.setattr(sweeps.Sweeps, "_changed", crashing_the_first_past_its_first_rung)
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=_asha_grid(40))).sweep_id)
    assert [(t.state, t.pruned, t.pruned_at_epoch) for t in sweep.trials] == [
        (S.JOB_STATE_FAILED, False, 0),
        (S.JOB_STATE_CANCELLED, True, 1),
    ]
    assert (sweep.state, sweep.best_job_id) == (S.SWEEP_STATE_FAILED, "")
    assert sweep.error == "no trial succeeded: 1 failed, 1 pruned (a failed trial's job error says why)"


def test_a_prune_whose_save_the_store_refused_still_prunes_and_is_stored_at_its_end(
    training: training_pb2_grpc.TrainingStub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The store refuses the row that says the trial was pruned (full): the trial is pruned all
    # the same, its job cancelled and its run tagged, and the row written with its end.
    put = WriteTxn.put
    refused: list[int] = []

    def refusing_the_prune(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
        if table == "sweep_trials" and not refused:
            trial = decode_record(value, sweeps.TRIAL_KIND, sweeps.TRIAL_SCHEMA)[1]
            if trial["pruned"]:
                refused.append(trial["number"])
                raise ResourceExhausted("the store is full")
        return put(txn, table, key, value, **kwargs)

    monkeypatch.setattr(WriteTxn, "put", refusing_the_prune)
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=_asha_grid(40))).sweep_id
    sweep = wait_sweep(training, sweep_id)
    assert refused == [1]
    stored = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))  # ended: read from the store
    for shown in (sweep, stored):
        assert [(t.state, t.pruned, t.pruned_at_epoch) for t in shown.trials] == [
            (S.JOB_STATE_SUCCEEDED, False, 0),
            (S.JOB_STATE_CANCELLED, True, 1),
        ]
    assert stored.state == S.SWEEP_STATE_SUCCEEDED and stored.best_job_id == stored.trials[0].job_id
    job = training.GetJob(S.GetJobRequest(job_id=stored.trials[1].job_id))
    assert job.epoch < 40
    run = training.GetRun(S.GetRunRequest(run_id=job.run_id))
    assert run.tags["tessera.pruned_at_epoch"] == "1"
    # A full store is the operator's to fix, said once as such: not a listener's crash, traceback and all.
    said = [
        (r.levelname, r.getMessage(), getattr(r, "error", ""))
        for r in caplog.records
        if r.name == sweeps.__name__
    ]
    assert (
        "WARNING",
        "a sweep trial's epoch result could not be stored; its next write stores it",
        "the store is full",
    ) in said
    assert not [r for r in caplog.records if r.getMessage() == "a job listener failed"]


def test_a_running_trial_is_shown_running(training: training_pb2_grpc.TrainingStub) -> None:
    # The record took a trial's state from its job at submit (QUEUED) and again when it ended.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1")],
        metric="train_loss",
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    deadline = time.monotonic() + 60
    while (
        job := training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs[0]
    ).state != S.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id)).trials[0].state == S.JOB_STATE_RUNNING
    listed = training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps
    assert next(s for s in listed if s.sweep_id == sweep_id).trials[0].state == S.JOB_STATE_RUNNING
    training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
    while training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id)).trials[0].state != S.JOB_STATE_CANCELLED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).state == S.JOB_STATE_CANCELLED


def test_a_trial_that_could_not_start_says_why(
    training_daemon, training: training_pb2_grpc.TrainingStub
) -> None:
    channel = training_daemon.channel()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    upload_dataset(channel, "sweep-gone", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
    base = job_spec("mlp", epochs=0, max_steps=1_000_000)
    base.data.dataset.name = "sweep-gone"
    spec = S.SweepSpec(
        base=base,
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2")],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    first = sweep.trials[0].job_id
    # The first trial runs before the dataset goes: one still waiting to start would fail for it.
    next(e for e in training.WatchJob(S.WatchJobRequest(job_id=first), timeout=120) if e.HasField("step"))
    # Gone before the second trial's turn: its job cannot be submitted.
    datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(
        datasets_pb2.DeleteDatasetRequest(name="sweep-gone", force=True)
    )
    training.CancelJob(S.CancelJobRequest(job_id=first))
    ended = wait_sweep(training, sweep.sweep_id)
    assert ended.state == S.SWEEP_STATE_FAILED
    second = ended.trials[1]
    assert (second.job_id, second.state) == ("", S.JOB_STATE_FAILED)
    assert "dataset 'sweep-gone'" in second.error
    assert ended.trials[0].error == ""


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (InvalidArgument("spec.epochs: boom"), "could not draw trial 1: spec.epochs: boom"),
        (
            RuntimeError("boom"),
            "could not draw trial 1: an internal error; the daemon's log has it under sweep",
        ),
    ],
)
def test_a_trial_that_cannot_be_drawn_ends_the_sweep_failed_saying_why(
    raised: Exception, words: str, training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No spec is known to make a drawn trial fail to build once the sweep's checks passed: the
    # searcher is made to fail as the first trial's job ends, in the job-end callback.
    drawn: list[int] = []
    suggest = sweeps.suggest

    def failing_after_one(*args: Any, **kwargs: Any) -> Any:
        drawn.append(1)
        if len(drawn) > 1:
            raise raised
        return suggest(*args, **kwargs)

    monkeypatch.setattr("tesserad.training.sweeps.suggest", failing_after_one)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_TPE,
        parameters=[S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=0.001, max=0.1))],
        max_trials=3,
        max_concurrent=1,
        metric="val_loss",
    )
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=60)
    assert sweep.state == S.SWEEP_STATE_FAILED
    assert words in sweep.error
    assert [t.state for t in sweep.trials] == [S.JOB_STATE_SUCCEEDED]
    assert sweep.best_job_id == sweep.trials[0].job_id


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.GetSweep(S.GetSweepRequest()),
        lambda t: t.CancelSweep(S.CancelSweepRequest()),
    ],
    ids=["GetSweep", "CancelSweep"],
)
def test_a_sweep_call_without_a_sweep_id_says_it_is_required(
    call, training: training_pb2_grpc.TrainingStub
) -> None:
    # It was NOT_FOUND "sweep '' does not exist", as if an id had been given.
    with pytest.raises(grpc.RpcError) as info:
        call(training)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sweep_id is required" in info.value.details()


def _trial_job(training: training_pb2_grpc.TrainingStub, sweep_id: str, number: int) -> str:
    """The job id of trial `number` once it has one."""
    deadline = time.monotonic() + 60
    while True:
        trials = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id)).trials
        if len(trials) > number and trials[number].job_id:
            return trials[number].job_id
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_trials_that_keep_failing_to_start_end_the_sweep_failed_saying_why(
    training_daemon, training: training_pb2_grpc.TrainingStub
) -> None:
    # Every trial drawn after the dataset went failed to submit: the job-end callback drew all
    # the remaining ones at once, holding the sweeps' lock, and the sweep said nothing of why.
    channel = training_daemon.channel()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    upload_dataset(channel, "sweep-gone-tpe", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
    base = job_spec("mlp", epochs=0, max_steps=1_000_000)
    base.data.dataset.name = "sweep-gone-tpe"
    spec = S.SweepSpec(
        base=base,
        strategy=S.SWEEP_STRATEGY_TPE,
        parameters=[S.SweepParameter(path="optimizer.lr", range=S.SweepRange(min=0.001, max=0.1))],
        max_trials=30,
        max_concurrent=1,
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    # The first trial runs before the dataset goes: one still waiting to start would fail for it.
    first = sweep.trials[0].job_id
    next(e for e in training.WatchJob(S.WatchJobRequest(job_id=first), timeout=120) if e.HasField("step"))
    datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(
        datasets_pb2.DeleteDatasetRequest(name="sweep-gone-tpe", force=True)
    )
    training.CancelJob(S.CancelJobRequest(job_id=first))
    ended = wait_sweep(training, sweep.sweep_id)
    assert ended.state == S.SWEEP_STATE_FAILED
    assert [(t.job_id, t.state) for t in ended.trials[1:]] == [("", S.JOB_STATE_FAILED)] * 3
    assert ended.error.startswith("3 trials in a row could not be submitted; the last: ")
    assert "dataset 'sweep-gone-tpe'" in ended.error


@pytest.mark.parametrize("failing", [0, 1])
def test_an_internal_error_submitting_a_trial_ends_the_sweep_failed_saying_so(
    failing: int, training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Raised out of the sweep's tick, it left the sweep RUNNING with nothing to start (and
    # SubmitSweep answered INTERNAL for the first trial).
    submitted: list[int] = []
    submit = Jobs.submit

    def failing_submit(self: Jobs, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("sweep_id"):
            submitted.append(1)
            if len(submitted) > failing:
                raise RuntimeError("boom")
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(Jobs, "submit", failing_submit)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2", "3")],
        max_concurrent=1,
        metric="val_loss",
    )
    sweep = wait_sweep(training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=60)
    assert sweep.state == S.SWEEP_STATE_FAILED
    assert sweep.error.startswith(
        f"could not submit trial {failing}: an internal error; the daemon's log has it under sweep"
    )
    assert [t.state for t in sweep.trials] == [S.JOB_STATE_SUCCEEDED] * failing + [
        S.JOB_STATE_FAILED,
        *[S.JOB_STATE_CANCELLED] * (2 - failing),
    ]


def test_a_sweep_whose_trials_were_all_cancelled_ends_cancelled(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # It ended FAILED though nothing had failed: its trials were stopped, as a cancelled sweep's are.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", "1", "2")],
        max_concurrent=1,
        metric="train_loss",
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    for number in range(2):
        training.CancelJob(S.CancelJobRequest(job_id=_trial_job(training, sweep_id, number)))
    ended = wait_sweep(training, sweep_id)
    assert ended.state == S.SWEEP_STATE_CANCELLED
    assert [t.state for t in ended.trials] == [S.JOB_STATE_CANCELLED] * 2
    assert ended.error == ""


def test_a_page_of_sweeps_ends_before_its_records_outgrow_a_message(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # About 248 KB of tags in each sweep's base spec (a base takes at most 256 KiB): eighteen
    # sweeps are more than gRPC's default 4 MiB receive limit, which a page must stay within
    # whatever page_size asks for.
    base = job_spec("mlp", epochs=1)
    base.tags.update({f"note-{i}": "x" * 8000 for i in range(31)})
    assert 18 * base.ByteSize() > 4 * 2**20
    spec = S.SweepSpec(
        base=base, strategy=S.SWEEP_STRATEGY_GRID, parameters=[sweep_values("seed", "1")], metric="train_loss"
    )
    submitted = []
    for _ in range(18):
        sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
        try:
            training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id))
        except grpc.RpcError as error:
            # Its one trial of one epoch may have ended it first; listed either way.
            if (
                error.code() != grpc.StatusCode.FAILED_PRECONDITION
                or "has already ended" not in error.details()
            ):
                raise
        submitted.append(sweep_id)
    listed, token = [], ""
    while True:
        page = training.ListSweeps(S.ListSweepsRequest(page_size=1000, page_token=token))
        assert page.sweeps
        listed += [sweep.sweep_id for sweep in page.sweeps]
        token = page.next_page_token
        if not token:
            break
    assert [sweep_id for sweep_id in listed if sweep_id in submitted] == submitted[::-1]


def _bytes_written_per_trial_end(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch, trials: int
) -> float:
    """The bytes a queued trial's end (its job cancelled alone) writes to the sweeps' tables, the
    median over the ends of a grid sweep of `trials` trials all submitted at once. The sweep
    takes an end in on the job's listener, after CancelJob answers: each end is waited for
    before the next, so that its writes are its own."""
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=queued_grid(trials)))

    def wait_ended(job_ids: set[str]) -> None:
        deadline = time.monotonic() + 60
        while any(
            t.state != S.JOB_STATE_CANCELLED
            for t in training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id)).trials
            if t.job_id in job_ids
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)

    # The first two run (2 CPU slots), the others wait. A trial's end also writes the rows of
    # the trials whose state changed since the sweep's last write: the runners' start is taken
    # in by an end not counted.
    deadline = time.monotonic() + 60
    while any(
        training.GetJob(S.GetJobRequest(job_id=trial.job_id)).state != S.JOB_STATE_RUNNING
        for trial in sweep.trials[:2]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    training.CancelJob(S.CancelJobRequest(job_id=sweep.trials[-1].job_id))
    wait_ended({sweep.trials[-1].job_id})
    written: list[int] = []
    put = WriteTxn.put

    def counted(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
        # Not the runners' rows: they carry their latest metric, which the next write of the
        # sweep stores, whichever it is (as many rows as trials run at once, at any size).
        if table in sweeps.TABLES and not (table == "sweep_trials" and key[1] < 2):
            written.append(len(value))
        return put(txn, table, key, value, **kwargs)

    per_end = []
    monkeypatch.setattr(WriteTxn, "put", counted)
    try:
        for trial in reversed(sweep.trials[2:-1]):
            written.clear()
            cancelled = training.CancelJob(S.CancelJobRequest(job_id=trial.job_id))
            assert cancelled.state == S.JOB_STATE_CANCELLED
            wait_ended({trial.job_id})
            per_end.append(sum(written))
    finally:
        monkeypatch.undo()
    training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    return statistics.median(per_end)


def test_a_trial_end_writes_as_much_in_a_large_sweep_as_in_a_small_one(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each trial's end rewrote the whole sweep record, every trial in it: its bytes grew with the
    # sweep, a sweep's bookkeeping with the square of its trials.
    small = _bytes_written_per_trial_end(training, monkeypatch, 10)
    large = _bytes_written_per_trial_end(training, monkeypatch, 60)
    assert small > 0 and large < small * 1.5, (small, large)


def test_a_trial_at_a_rung_writes_as_much_as_the_first_to_reach_it(
    training: training_pb2_grpc.TrainingStub,
    training_daemon: InProcessDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each epoch at a rung rewrote the sweep record with every rung result in it: its bytes grew
    # with the trials that had reached a rung. No worker runs here: each queued trial's job
    # reports its first epoch (ASHA's first rung) to the sweep as its worker's event would.
    trials = 80
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_ASHA,
        parameters=[_range("optimizer.lr", 0.001, 0.1)],
        max_trials=trials,
        max_concurrent=trials,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=3),
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    jobs = training_daemon.daemon.training
    written: list[int] = []
    put = WriteTxn.put
    this_thread = threading.get_ident()

    def counted(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
        # This thread's writes only: the two running trials' own epochs write meanwhile.
        if table in sweeps.TABLES and threading.get_ident() == this_thread:
            written.append(len(value))
        return put(txn, table, key, value, **kwargs)

    per_rung = []
    monkeypatch.setattr(WriteTxn, "put", counted)
    try:
        for i, trial in enumerate(sweep.trials[2:]):  # the first two run (2 CPU slots), the others wait
            written.clear()
            # Each better than all before: none is pruned, so each rung is one epoch's write alone.
            jobs._notify(jobs.get(trial.job_id), "epoch", {"epoch": 1, "metrics": {"train_loss": 100.0 - i}})
            per_rung.append(sum(written))
    finally:
        monkeypatch.undo()
    training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert per_rung[0] > 0 and max(per_rung) < per_rung[0] * 1.1


def test_a_trial_whose_job_cannot_be_cancelled_does_not_stop_the_sweep_cancel(
    training: training_pb2_grpc.TrainingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel failing otherwise than FAILED_PRECONDITION (the store full) stopped the sweep's
    # cancel at that trial: the trials after it stayed queued, and the answer named none.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=0, max_steps=1_000_000),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("seed", *(str(i) for i in range(5)))],
        max_concurrent=5,
        metric="train_loss",
    )
    sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    stuck = sweep.trials[2].job_id
    accept = Jobs._accept_cancel

    def failing_accept(self: Jobs, job_id: str) -> Any:
        if job_id == stuck:
            raise ResourceExhausted("the store is full")
        return accept(self, job_id)

    monkeypatch.setattr(Jobs, "_accept_cancel", failing_accept)
    with pytest.raises(grpc.RpcError) as info:
        training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
    monkeypatch.undo()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        f"sweep {sweep.sweep_id} is cancelled and its other trials' jobs were cancelled, but 1 could "
        "not be and runs on until it ends; cancel it with CancelJob, or restart tesserad, which "
        f"cancels it at its start:\n  trial 2 (job {stuck}): the store is full"
    )
    shown = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
    assert shown.state == S.SWEEP_STATE_CANCELLED
    # The stuck trial goes on (it may start as the cancelled ones free their slots).
    assert shown.trials[2].state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)
    assert [t.state for t in shown.trials][3:] == [S.JOB_STATE_CANCELLED] * 2
    training.CancelJob(S.CancelJobRequest(job_id=stuck))
    deadline = time.monotonic() + 60
    while any(t.state != S.JOB_STATE_CANCELLED for t in shown.trials):  # the running trials stop
        assert time.monotonic() < deadline
        time.sleep(0.1)
        shown = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))

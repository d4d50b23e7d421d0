"""Model-based and population-based sweeps through the daemon: TPE over a conditional space, PBT's
generations with copied weights, Hyperband's brackets, and the combinations refused at submit."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from tessera.v1 import job_spec_pb2, training_pb2, training_pb2_grpc
from tests.integration.training.conftest import job_spec, sweep_values, wait_sweep

S = training_pb2


def _range(path: str, low: float, high: float, **flags: bool) -> S.SweepParameter:
    return S.SweepParameter(path=path, range=S.SweepRange(min=low, max=high, **flags))


def test_tpe_draws_each_trial_over_a_conditional_space(training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_TPE,
        parameters=[
            sweep_values("optimizer.name", "adam", "sgd"),
            _range("optimizer.momentum", 0.5, 0.9, **{"log_scale": False}),
            _range("optimizer.lr", 0.001, 0.1, log_scale=True),
        ],
        max_trials=4,
        max_concurrent=2,
        metric="val_loss",
        seed=3,
    )
    spec.parameters[1].when.CopyFrom(S.SweepCondition(path="optimizer.name", values=["sgd"]))
    submitted = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert len(submitted.trials) == 2  # drawn as slots free, not planned
    sweep = wait_sweep(training, submitted.sweep_id, timeout_s=240)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.number for t in sweep.trials] == [0, 1, 2, 3]
    for trial in sweep.trials:
        assert trial.state == S.JOB_STATE_SUCCEEDED and trial.has_metric
        assert ("optimizer.momentum" in trial.params) == (trial.params["optimizer.name"] == "sgd")
        job = training.GetJob(S.GetJobRequest(job_id=trial.job_id))
        assert job.spec.optimizer.name == trial.params["optimizer.name"]
        assert job.spec.optimizer.lr == pytest.approx(float(trial.params["optimizer.lr"]))
        assert job.spec.run_name == f"{sweep.sweep_id}-{trial.number}"
    assert sweep.best_job_id == min(sweep.trials, key=lambda t: t.metric).job_id


def test_cma_es_draws_numeric_ranges(training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_CMA_ES,
        parameters=[
            _range("optimizer.lr", 0.001, 0.1, log_scale=True),
            _range("batch_size", 8, 32, integer=True),
        ],
        max_trials=3,
        max_concurrent=2,
        metric="val_loss",
    )
    sweep = wait_sweep(
        training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=240
    )
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED and len(sweep.trials) == 3
    for trial in sweep.trials:
        assert 0.001 <= float(trial.params["optimizer.lr"]) <= 0.1
        assert training.GetJob(S.GetJobRequest(job_id=trial.job_id)).spec.batch_size == int(
            trial.params["batch_size"]
        )


def test_pbt_trails_copy_better_weights_and_record_their_lineage(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_PBT,
        parameters=[_range("optimizer.lr", 0.0001, 0.1, log_scale=True)],
        max_trials=4,
        metric="val_loss",
        seed=1,
        pbt=S.SweepPbtSettings(population=2),
    )
    sweep = wait_sweep(
        training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=240
    )
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.generation for t in sweep.trials] == [0, 0, 1, 1]
    first = sweep.trials[:2]
    best, worst = sorted(first, key=lambda t: t.metric)
    following = sweep.trials[2:]
    assert [t.parent_job_id for t in following] == [best.job_id, best.job_id]
    copied = next(t for t in following if t.exploited)
    kept = next(t for t in following if not t.exploited)
    assert first.index(worst) == following.index(copied)  # the trailing slot copied the leader
    assert kept.params == best.params
    assert copied.params != best.params  # explored
    for trial in following:
        events = list(training.WatchJob(S.WatchJobRequest(job_id=trial.job_id), timeout=60))
        logs = [e.log.message for e in events if e.WhichOneof("event") == "log"]
        assert "starting from another trial's weights" in logs


def test_hyperband_deals_trials_to_brackets(training: training_pb2_grpc.TrainingStub) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=3),
        strategy=S.SWEEP_STRATEGY_HYPERBAND,
        parameters=[_range("optimizer.lr", 0.001, 0.1, log_scale=True)],
        max_trials=4,
        max_concurrent=2,
        metric="train_loss",
        asha=S.AshaSettings(min_epochs=1, reduction_factor=3),
    )
    sweep = wait_sweep(
        training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=240
    )
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [t.bracket for t in sweep.trials] == [0, 1, 0, 1]  # Hyperband's 3:2 for rungs at 1 and 3
    for trial in sweep.trials:
        if trial.pruned:
            assert trial.pruned_at_epoch in (1, 3) and trial.state == S.JOB_STATE_CANCELLED


def _tpe(spec: S.SweepSpec) -> None:
    spec.strategy = S.SWEEP_STRATEGY_TPE


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        (
            lambda s: (
                setattr(s, "strategy", S.SWEEP_STRATEGY_PBT),
                setattr(s, "pruner", S.SWEEP_PRUNER_ASHA),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PBT cannot be combined with ASHA",
        ),
        (
            lambda s: setattr(s, "strategy", S.SWEEP_STRATEGY_CMA_ES),
            grpc.StatusCode.INVALID_ARGUMENT,
            "CMA-ES searches numeric ranges only and 'optimizer.name' is categorical",
        ),
        (
            lambda s: (
                _tpe(s),
                s.parameters.add(path="epochs", range=S.SweepRange(min=-1, max=2, integer=True)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the trial with optimizer.name=adam, epochs=-1: ",
        ),
        (
            lambda s: (
                _tpe(s),
                s.parameters.add().CopyFrom(sweep_values("seed", "1", when=("optimizer.lr", ["1"]))),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "'optimizer.lr' must be a categorical parameter listed before 'seed'",
        ),
        (
            # No boundary point has both at their high end: 72 samples in one batch of 72 is one
            # step, and TPE drawing both near there had its trials refused one by one, mid-sweep.
            lambda s: (
                _tpe(s),
                s.parameters.add(path="batch_size", range=S.SweepRange(min=8, max=72, integer=True)),
                s.parameters.add(
                    path="lr_schedule.warmup_steps", range=S.SweepRange(min=0, max=5, integer=True)
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the trial with optimizer.name=adam, batch_size=72, lr_schedule.warmup_steps=5: "
            "spec.lr_schedule.warmup_steps: is 5, but the job trains 1 steps (1 per epoch)",
        ),
        (
            # 'val' holds 24 samples, one batch: no boundary point trains on it with the longest
            # warm-up, and a trial TPE drew so was refused mid-sweep.
            lambda s: (
                _tpe(s),
                setattr(s, "metric", "train_loss"),
                s.parameters.add().CopyFrom(sweep_values("data.train_split", "train", "val")),
                s.parameters.add(
                    path="lr_schedule.warmup_steps", range=S.SweepRange(min=0, max=3, integer=True)
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the trial with optimizer.name=adam, data.train_split=val, lr_schedule.warmup_steps=3: "
            "spec.lr_schedule.warmup_steps: is 3, but the job trains 1 steps (1 per epoch)",
        ),
        (
            # Without max_steps, epochs 0 is a job of no length: refused, not trained as the
            # default 1 epoch.
            lambda s: (
                _tpe(s),
                s.parameters.add().CopyFrom(sweep_values("epochs", "2", "0")),
                s.parameters.add(
                    path="lr_schedule.warmup_steps", range=S.SweepRange(min=0, max=4, integer=True)
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "epochs=0, lr_schedule.warmup_steps=0: spec.epochs: must be >= 1, got 0 (0 only with "
            "max_steps set, to train by steps alone)",
        ),
        (
            lambda s: (_tpe(s), s.pbt.CopyFrom(S.SweepPbtSettings(population=3))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.pbt is set but the strategy is TPE",
        ),
        (
            # Refused before: with the value TPE drew first, which does not say what to fix.
            lambda s: (_tpe(s), s.parameters.add(path="batch_size", range=S.SweepRange(min=8, max=32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "parameters[1].range: 'batch_size' takes whole numbers; set range.integer = true",
        ),
        (
            lambda s: s.asha.CopyFrom(S.AshaSettings(min_epochs=2)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.asha is set but the strategy RANDOM has no pruner",
        ),
        (
            lambda s: (
                setattr(s, "strategy", S.SWEEP_STRATEGY_ASHA),
                s.asha.CopyFrom(S.AshaSettings(min_epochs=2)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.asha.min_epochs: no trial reaches ASHA's first rung (epoch 2); trials end by epoch 1",
        ),
        (
            lambda s: (_tpe(s), setattr(s, "max_trials", 0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "a tpe sweep needs the number of trials",
        ),
        (
            lambda s: (setattr(s, "strategy", S.SWEEP_STRATEGY_PBT), setattr(s, "max_trials", 5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "give at least two generations (8 trials)",
        ),
        (
            lambda s: (
                setattr(s, "strategy", S.SWEEP_STRATEGY_HYPERBAND),
                setattr(s.base, "epochs", 0),
                setattr(s.base, "max_steps", 6),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Hyperband needs trials of a fixed number of epochs",
        ),
        (
            # Its brackets were worked out from the first trial's epochs alone.
            lambda s: (
                _tpe(s),
                setattr(s, "pruner", S.SWEEP_PRUNER_HYPERBAND),
                s.parameters.add().CopyFrom(sweep_values("epochs", "1", "9")),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.parameters: Hyperband needs trials of a fixed number of epochs; these run 1 or 9",
        ),
    ],
)
def test_searcher_combinations_that_make_no_sense_are_refused(
    change: Callable[[S.SweepSpec], object],
    code: grpc.StatusCode,
    words: str,
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_RANDOM,
        parameters=[sweep_values("optimizer.name", "adam", "sgd")],
        max_trials=4,
        metric="val_loss",
    )
    change(spec)
    before = len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps)
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert info.value.code() == code
    assert words in info.value.details()
    assert len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps) == before


def test_parameters_present_only_for_one_architecture(training: training_pb2_grpc.TrainingStub) -> None:
    family = "architecture.family"
    spec = S.SweepSpec(
        base=job_spec("lstm", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[
            sweep_values(family, "lstm", "transformer"),
            sweep_values("architecture.lstm.hidden_size", "4", "6", when=(family, ["lstm"])),
            sweep_values("architecture.transformer.d_model", "8", when=(family, ["transformer"])),
            sweep_values("architecture.transformer.num_heads", "2", when=(family, ["transformer"])),
        ],
        max_concurrent=2,
        metric="val_loss",
    )
    sweep = wait_sweep(
        training, training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id, timeout_s=240
    )
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    assert [dict(t.params) for t in sweep.trials] == [
        {family: "lstm", "architecture.lstm.hidden_size": "4"},
        {family: "lstm", "architecture.lstm.hidden_size": "6"},
        {
            family: "transformer",
            "architecture.transformer.d_model": "8",
            "architecture.transformer.num_heads": "2",
        },
    ]
    architectures = [
        training.GetJob(S.GetJobRequest(job_id=t.job_id)).spec.architecture for t in sweep.trials
    ]
    assert [a.WhichOneof("family") for a in architectures] == ["lstm", "lstm", "transformer"]
    assert architectures[1].lstm.hidden_size == 6
    assert (architectures[2].transformer.d_model, architectures[2].transformer.num_heads) == (8, 2)


def test_pbt_takes_weights_only_from_trials_that_left_a_checkpoint(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # One trial of the first generation is cancelled after its first epoch: it has a metric but,
    # saving only at the end, no checkpoint. Ranked by the highest train_loss, it leads, so it
    # was picked as the donor (and continued): its slot's and the other's trials said they
    # started from its weights, and both started afresh.
    spec = S.SweepSpec(
        base=job_spec(
            "mlp",
            epochs=20,
            batch_size=1,
            log_every_n_steps=72,
            checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=100),
        ),
        strategy=S.SWEEP_STRATEGY_PBT,
        parameters=[_range("optimizer.lr", 0.005, 0.02, log_scale=True)],
        max_trials=4,
        metric="train_loss",
        mode=job_spec_pb2.OPTIMIZE_MODE_MAX,
        seed=1,
        pbt=S.SweepPbtSettings(population=2),
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    deadline = time.monotonic() + 120
    while not (
        started := [j for j in training.ListJobs(S.ListJobsRequest(sweep_id=sweep_id)).jobs if j.epoch >= 1]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cut_short = training.CancelJob(S.CancelJobRequest(job_id=started[0].job_id)).job_id
    sweep = wait_sweep(training, sweep_id, timeout_s=240)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED
    first, following = sweep.trials[:2], sweep.trials[2:]
    assert [t.generation for t in following] == [1, 1]
    finished = next(t for t in first if t.job_id != cut_short)
    assert [t.parent_job_id for t in following] == [finished.job_id, finished.job_id]
    for trial in following:
        events = list(training.WatchJob(S.WatchJobRequest(job_id=trial.job_id), timeout=60))
        logs = [e.log.message for e in events if e.WhichOneof("event") == "log"]
        assert "starting from another trial's weights" in logs


def test_a_value_too_large_for_its_field_is_refused_at_submit_and_starts_nothing(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    # priority is an int32. Both extremes passed the checks at submit (which never built the
    # trial's stored spec); with seed 2 TPE draws 66676225 and then 2418182489: the first trial
    # started, the second could not be stored, and the refused sweep ran on.
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_TPE,
        parameters=[_range("priority", 0, 3e9, integer=True)],
        max_trials=4,
        max_concurrent=2,
        metric="val_loss",
        seed=2,
    )
    sweeps = len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps)
    jobs = len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs)
    with pytest.raises(grpc.RpcError) as info:
        training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("the trial with priority=3000000000: ")
    assert "does not fit its field" in info.value.details()
    assert len(training.ListSweeps(S.ListSweepsRequest(page_size=1000)).sweeps) == sweeps
    assert len(training.ListJobs(S.ListJobsRequest(page_size=1000)).jobs) == jobs

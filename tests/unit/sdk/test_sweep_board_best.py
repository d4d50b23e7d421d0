"""`tessera sweeps show`: the best trial is one that succeeded, as the daemon's best_job_id, and the
leaderboard ranks those; a pruned or failed trial's early metric is listed below them, unranked."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.sweep_commands import best_so_far, leaderboard_rows, trials_table
from tessera.v1 import training_pb2 as S


def _sweep(state: S.SweepState.ValueType, best_job_id: str, *trials: S.SweepTrial) -> S.Sweep:
    return S.Sweep(
        sweep_id="sweep-1",
        state=state,
        best_job_id=best_job_id,
        spec=S.SweepSpec(metric="val_loss"),
        trials=trials,
    )


def _trial(number: int, state: S.JobState.ValueType, metric: float, pruned: bool = False) -> S.SweepTrial:
    return S.SweepTrial(
        number=number,
        job_id=f"job-{number}",
        state=state,
        metric=metric,
        has_metric=True,
        pruned=pruned,
        pruned_at_epoch=1 if pruned else 0,
    )


def caption(sweep: S.Sweep) -> str:
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(trials_table(sweep, 200).table)
    return " ".join(screen.getvalue().split())


def test_the_leaderboard_ranks_the_trials_that_succeeded_above_a_pruned_or_failed_ones_early_metric():
    sweep = _sweep(
        S.SWEEP_STATE_SUCCEEDED,
        "job-0",
        _trial(0, S.JOB_STATE_SUCCEEDED, 0.5),
        _trial(1, S.JOB_STATE_CANCELLED, 0.1, pruned=True),
        _trial(2, S.JOB_STATE_FAILED, 0.05),
    )
    assert [(rank, trial, state) for rank, _, trial, state, _, _ in leaderboard_rows(sweep)] == [
        ("1", "0", "succeeded"),
        ("-", "2", "failed"),
        ("-", "1", "pruned at epoch 1"),
    ]
    assert best_so_far(sweep, maximise=False) == [(1.0, 0.5), (2.0, 0.5), (3.0, 0.5)]
    assert "best val_loss: 0.5 (trial 0, job-0)" in caption(sweep)


def test_without_a_trial_that_succeeded_the_best_says_so():
    pruned = _trial(0, S.JOB_STATE_CANCELLED, 0.1, pruned=True)
    assert "best val_loss: none, no trial succeeded" in caption(_sweep(S.SWEEP_STATE_CANCELLED, "", pruned))
    running = _sweep(S.SWEEP_STATE_RUNNING, "", pruned, _trial(1, S.JOB_STATE_RUNNING, 0.2))
    assert "best val_loss: none yet, no trial has succeeded" in caption(running)
    assert best_so_far(running, maximise=False) == []

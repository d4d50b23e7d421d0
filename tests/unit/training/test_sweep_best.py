"""Which trial is a sweep's best: one that ran to its end, as Optuna's best_trial takes COMPLETE trials only."""

from __future__ import annotations

import math

from tesserad.training.sweeps import AshaSettings, Sweep, Trial, best_trial, ended_state


def _trial(number: int, state: str, metric: float, pruned: bool = False, has_metric: bool = True) -> Trial:
    return Trial(
        params={},
        raw={},
        document={},
        job_id=f"job-{number}",
        state=state,
        metric=metric,
        has_metric=has_metric,
        pruned=pruned,
        number=number,
    )


def test_a_pruned_failed_or_running_trial_is_never_the_best() -> None:
    # Their metric is an early rung's or epoch's, and none registered a version to set an alias on.
    succeeded = _trial(0, "succeeded", 0.5)
    others = [
        _trial(1, "cancelled", 0.1, pruned=True),
        _trial(2, "failed", 0.05),
        _trial(3, "running", 0.01),
        _trial(4, "succeeded", 0.02, pruned=True),  # ended before its prune's cancel reached it
    ]
    assert best_trial("min", [succeeded, *others]) is succeeded
    assert (
        best_trial("max", [_trial(0, "succeeded", 0.1), _trial(1, "cancelled", 0.9, pruned=True)]).number == 0
    )


def test_a_trial_whose_metric_is_nan_is_never_the_best() -> None:
    # A diverged trial: NaN compares with nothing, so min() or max() could keep it when first.
    diverged, finite = _trial(0, "succeeded", math.nan), _trial(1, "succeeded", 0.5)
    assert best_trial("min", [diverged, finite]) is finite
    assert best_trial("max", [diverged, finite]) is finite
    assert best_trial("min", [diverged]) is None


def test_without_a_succeeded_trial_there_is_no_best() -> None:
    assert (
        best_trial("min", [_trial(0, "cancelled", 0.1, pruned=True), _trial(1, "failed", 0.2), None]) is None
    )


def _ended(*trials: Trial) -> tuple[str, str]:
    sweep = Sweep(
        sweep_id="sweep-1",
        strategy="grid",
        metric="val_acc",
        mode="max",
        max_concurrent=1,
        asha=AshaSettings(min_epochs=1, reduction_factor=3),
        document={},
        state="running",
        created_at=0.0,
        created_by="",
        best_job_id="",
        rungs={},
        trials=list(trials),
    )
    return ended_state(sweep)


def test_a_sweep_ends_succeeded_only_with_a_best_trial_to_show() -> None:
    assert _ended(_trial(0, "succeeded", 0.5), _trial(1, "failed", 0.9)) == ("succeeded", "")
    # Trials that succeeded without the metric leave no best: the metric is likely misspelt.
    assert _ended(_trial(0, "succeeded", 0.0, has_metric=False), _trial(1, "failed", 0.9)) == (
        "failed",
        "no trial reported metric 'val_acc': 1 succeeded without it; sweep again on a metric the "
        "trials' runs log",
    )

"""Which trial is a sweep's best: one that ran to its end, as Optuna's best_trial takes COMPLETE trials only."""

from __future__ import annotations

from tesserad.training.sweeps import Trial, best_trial


def _trial(number: int, state: str, metric: float, pruned: bool = False) -> Trial:
    return Trial(
        params={},
        raw={},
        document={},
        job_id=f"job-{number}",
        state=state,
        metric=metric,
        has_metric=True,
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


def test_without_a_succeeded_trial_there_is_no_best() -> None:
    assert (
        best_trial("min", [_trial(0, "cancelled", 0.1, pruned=True), _trial(1, "failed", 0.2), None]) is None
    )

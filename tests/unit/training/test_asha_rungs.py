"""ASHA's rung bookkeeping (tesserad.training.pruning.asha_prunes): pure logic."""

from __future__ import annotations

import math
from typing import Any

from tesserad.training.pruning import asha_prunes


def report(rungs: dict[str, Any], job: str, loss: float, epoch: int, last_epoch: int = 100) -> bool:
    return asha_prunes(
        rungs, job, loss, epoch, min_epochs=1, reduction_factor=2, mode="min", last_epoch=last_epoch
    )


def test_only_rung_epochs_count_and_trailing_trials_are_pruned() -> None:
    rungs: dict[str, Any] = {}
    assert report(rungs, "a", 1.0, 1) is False  # first at rung 0: nothing to trail
    assert report(rungs, "b", 2.0, 1) is True  # worse than a, outside the best half
    assert report(rungs, "c", 0.5, 1) is False  # best so far
    assert report(rungs, "a", 9.0, 3) is False  # epoch 3 is no rung: nothing recorded
    assert rungs == {"0": {"a": 1.0, "b": 2.0, "c": 0.5}}


def test_a_resumed_trial_reporting_its_rung_again_counts_once() -> None:
    rungs: dict[str, Any] = {}
    report(rungs, "a", 1.0, 2)
    report(rungs, "b", 0.5, 2)
    # "a" crashed and resumed from an earlier checkpoint: its rung is reported again.
    assert report(rungs, "a", 1.0, 2) is True
    assert rungs["1"] == {"a": 1.0, "b": 0.5}


def test_rung_results_recorded_before_they_were_keyed_by_trial_still_count() -> None:
    rungs: dict[str, Any] = {"0": [0.1, 0.2]}
    assert report(rungs, "c", 0.3, 1) is True  # third of three, behind both earlier results
    assert rungs["0"] == {"#0": 0.1, "#1": 0.2, "c": 0.3}


def test_higher_is_better_when_the_mode_is_max() -> None:
    rungs: dict[str, Any] = {}
    asha_prunes(rungs, "a", 0.9, 1, min_epochs=1, reduction_factor=2, mode="max", last_epoch=9)
    assert asha_prunes(rungs, "b", 0.1, 1, min_epochs=1, reduction_factor=2, mode="max", last_epoch=9) is True
    assert (
        asha_prunes(rungs, "c", 0.95, 1, min_epochs=1, reduction_factor=2, mode="max", last_epoch=9) is False
    )


def test_a_trial_at_its_last_epoch_is_ranked_but_never_pruned() -> None:
    rungs: dict[str, Any] = {}
    report(rungs, "a", 0.5, 4, last_epoch=4)
    # Behind "a" at the rung that is also its last epoch: it has finished, so it is complete.
    assert report(rungs, "b", 0.9, 4, last_epoch=4) is False
    assert rungs["2"] == {"a": 0.5, "b": 0.9}
    # A longer trial trailing both at that rung still stops there.
    assert report(rungs, "c", 1.0, 4, last_epoch=8) is True


def test_a_trial_without_an_epoch_limit_is_pruned_at_any_rung() -> None:
    rungs: dict[str, Any] = {}
    report(rungs, "a", 0.5, 4, last_epoch=0)
    assert report(rungs, "b", 0.9, 4, last_epoch=0) is True  # epochs 0: it stops at max_steps


def test_a_nan_result_trails_every_number_and_never_makes_one_trail() -> None:
    # A trial that diverged reports NaN, which compares with nothing: it ranks last, in either mode.
    for mode in ("min", "max"):
        rungs: dict[str, Any] = {}
        kwargs: dict[str, Any] = {"min_epochs": 1, "reduction_factor": 2, "mode": mode, "last_epoch": 9}
        assert asha_prunes(rungs, "a", math.nan, 1, **kwargs) is False  # first at its rung
        assert asha_prunes(rungs, "b", 2.0, 1, **kwargs) is False  # ahead of a NaN
        assert asha_prunes(rungs, "c", math.nan, 1, **kwargs) is True
        assert asha_prunes(rungs, "d", 3.0, 1, **kwargs) is False  # the best half: both NaNs trail it

"""A sweep's rung tables split into its trials' rows and rebuilt from them (pure logic)."""

from __future__ import annotations

import copy
from typing import Any

from tesserad.training.sweeps import Trial, built_rungs, split_rungs


def trial(number: int, job_id: str, bracket: int = 0) -> Trial:
    return Trial({}, {}, {}, job_id=job_id, number=number, bracket=bracket)


def test_hyperband_tables_split_by_trial_rebuild_as_they_were() -> None:
    trials = [trial(0, "job-a", bracket=0), trial(1, "job-b", bracket=1), trial(2, "")]
    rungs: dict[str, Any] = {
        "bracket 0": {"0": {"job-a": 0.5, "#0": 0.7}, "1": {"job-a": 0.4}},
        "bracket 1": {"0": {"job-b": 0.9, "job-a": 0.1}},
    }
    unowned = split_rungs("hyperband", copy.deepcopy(rungs), trials)
    assert [t.rungs for t in trials] == [{"0": 0.5, "1": 0.4}, {"0": 0.9}, {}]
    # job-a is not of bracket 1: that result is no trial's to hold.
    assert unowned == {"bracket 0": {"0": {"#0": 0.7}}, "bracket 1": {"0": {"job-a": 0.1}}}
    assert built_rungs("hyperband", unowned, trials) == rungs


def test_asha_results_kept_in_lists_stay_unowned_keyed_as_asha_prunes_keys_them() -> None:
    trials = [trial(0, "job-a")]
    unowned = split_rungs("asha", {"0": [0.3, 0.6], "1": {"job-a": 0.2}}, trials)
    assert (trials[0].rungs, unowned) == ({"1": 0.2}, {"0": {"#0": 0.3, "#1": 0.6}})
    assert built_rungs("asha", unowned, trials) == {"0": {"#0": 0.3, "#1": 0.6}, "1": {"job-a": 0.2}}


def test_a_pruned_trial_keeps_the_metric_its_rung_judged() -> None:
    # Its job runs on until the prune's cancel reaches it; the leaderboard ranked it by an epoch
    # after its rung, or by the job's last metric at its end.
    pruned = trial(1, "job-b")
    pruned.take_metric(0.9)
    pruned.pruned, pruned.pruned_at = True, 1
    pruned.take_metric(0.7)
    assert (pruned.metric, pruned.has_metric) == (0.9, True)
    running = trial(2, "job-c")
    running.take_metric(0.9)
    running.take_metric(0.7)
    assert running.metric == 0.7

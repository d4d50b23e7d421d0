"""How `tessera train --follow` and `tessera demo` say a state change: the state once, in words
(the daemon's reasons as it sends them)."""

from __future__ import annotations

import pytest

from tessera.events import JobState, StateChanged
from tessera.follow import state_line


@pytest.mark.parametrize(
    ("state", "reason", "devices", "line"),
    [
        (JobState.QUEUED, "queued", [], "queued"),
        (JobState.QUEUED, "queued behind 2 jobs", [], "queued behind 2 jobs"),
        (
            JobState.QUEUED,
            "re-queued to resume from the epoch 3 checkpoint",
            [],
            "re-queued to resume from the epoch 3 checkpoint",
        ),
        (JobState.RUNNING, "started", ["cpu:0"], "started on cpu:0"),
        (
            JobState.RUNNING,
            "started (attempt 2)",
            ["cuda:0", "cuda:1"],
            "started (attempt 2) on cuda:0, cuda:1",
        ),
        (
            JobState.RUNNING,
            "resumed from the epoch 3 checkpoint (attempt 2)",
            [],
            "resumed from the epoch 3 checkpoint (attempt 2)",
        ),
        (JobState.SUCCEEDED, "finished", [], "finished"),
        (JobState.CANCELLED, "cancelled at a step boundary", [], "cancelled at a step boundary"),
        (
            JobState.FAILED,
            "RuntimeError: shapes do not match",
            [],
            "failed: RuntimeError: shapes do not match",
        ),
        (
            JobState.INTERRUPTED,
            "tesserad stopped while the job ran",
            [],
            "interrupted: tesserad stopped while the job ran",
        ),
        (JobState.RUNNING, "", [], "running"),
    ],
)
def test_a_state_change_says_its_state_once(state, reason, devices, line):
    event = StateChanged(seq=1, time=None, attempt=1, state=state, reason=reason, devices=devices)
    assert state_line(event) == line

"""A rank that has sent its outcome but does not exit (a process group's teardown that hangs)
is stopped after the grace period, once; one still within it is left alone."""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import cast

import pytest

from tesserad.training import jobs


def test_only_a_rank_past_its_grace_after_its_outcome_is_stopped() -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
    for process in processes:
        process.start()
    try:
        now = time.monotonic()
        # Rank 0 sent its outcome longer ago than the grace, rank 1 just now.
        done_at = {0: now - jobs._EXIT_GRACE_S - 1, 1: now}
        jobs._stop_lingering(processes, done_at, set(), "job-test")
        processes[0].join(10)
        assert processes[0].exitcode == -9
        assert processes[1].exitcode is None
    finally:
        for process in processes:
            process.kill()
            process.join(10)


class _NotYetReaped:
    """A worker started by the fork server: killed, its exit code stays unknown until the server
    reports it, a poll or more later."""

    exitcode = None

    def __init__(self) -> None:
        self.kills = 0

    def kill(self) -> None:
        self.kills += 1


def test_a_lingering_rank_is_stopped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ranks = [_NotYetReaped(), _NotYetReaped()]
    processes = cast(list[multiprocessing.process.BaseProcess], ranks)
    now = time.monotonic()
    done_at, stopped = {0: now - jobs._EXIT_GRACE_S - 1, 1: now}, set[int]()
    with caplog.at_level(logging.WARNING, logger=jobs.log.name):
        for _ in range(3):  # three polls before rank 0's exit code is known
            jobs._stop_lingering(processes, done_at, stopped, "job-test")
    assert [rank.kills for rank in ranks] == [1, 0] and stopped == {0}
    assert [r.getMessage() for r in caplog.records] == ["a worker did not exit after it finished; stopped it"]

"""A rank that has sent its outcome but does not exit (a process group's teardown that hangs)
is stopped after the grace period; one still within it is left alone."""

from __future__ import annotations

import multiprocessing
import time

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
        jobs._stop_lingering(processes, done_at, "job-test")
        processes[0].join(10)
        assert processes[0].exitcode == -9
        assert processes[1].exitcode is None
    finally:
        for process in processes:
            process.kill()
            process.join(10)

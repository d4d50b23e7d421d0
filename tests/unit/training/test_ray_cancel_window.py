"""A cancel that lands while a Ray job is between attempts (re-queued after its worker died, not yet
running again) stops the next attempt: it reached only the attempt that had ended."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tesserad.training.jobs import _Running
from tesserad.training.ray_jobs import RayJobs


def _between_attempts(monkeypatch: pytest.MonkeyPatch) -> tuple[RayJobs, _Running]:
    """A RayJobs whose job 'job-1' the scheduler has just taken off the queue again, while the
    ended attempt's supervisor still has its `_Running` registered."""
    jobs = RayJobs.__new__(RayJobs)
    jobs._lock = threading.Lock()
    jobs._wake = threading.Condition(jobs._lock)
    ended = _Running([], [])
    jobs._active = {"job-1": SimpleNamespace(job_id="job-1", cancel_requested_at=None)}
    jobs._running = {"job-1": ended}
    jobs._queue = {}
    jobs._closing = False
    jobs._cancel_pending = set()
    jobs._cancel_requested = {}
    jobs._settings = SimpleNamespace(cancel_grace_s=5.0)
    monkeypatch.setattr(jobs, "_store_cancel_request", lambda job_id, requested_at: None)
    return jobs, ended


def test_a_cancel_between_attempts_stops_the_next_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, ended = _between_attempts(monkeypatch)
    jobs.cancel("job-1")
    assert ended.cancel_deadline is not None  # it went to the attempt that had ended
    with jobs._lock:  # that attempt's supervisor finishes
        del jobs._running["job-1"]
    started: list[_Running] = []

    def run_on_ray(job: Any, running: _Running) -> None:
        started.append(running)

    monkeypatch.setattr(jobs, "_run_on_ray", run_on_ray)
    jobs._supervise("job-1", [])
    assert len(started) == 1
    assert started[0].cancel_deadline is not None
    assert started[0].cancel_deadline > time.monotonic()

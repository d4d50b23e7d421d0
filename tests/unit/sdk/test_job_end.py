"""Job.wait's end: a deadline that runs out after the job's last state came, before its stream closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import tessera
from tessera.calls import Call, Stream
from tessera.events import JobEvent, JobState, StateChanged
from tessera.training import JobEnd


class _EndedThenDeadline(Stream[JobEvent]):
    """A job's events that reach `state`, then a deadline before the server closes the stream."""

    def __init__(self, state: JobState) -> None:
        self.state = state

    def _events(self) -> list[JobEvent]:
        return [StateChanged(seq=7, time=None, attempt=0, state=self.state, reason="")]

    def iterate(self, conn: Any) -> Iterator[JobEvent]:
        yield from self._events()
        raise tessera.DeadlineExceeded("Deadline Exceeded")

    async def iterate_async(self, conn: Any) -> AsyncIterator[JobEvent]:
        for event in self._events():
            yield event
        raise tessera.DeadlineExceeded("Deadline Exceeded")


class _FinalJob(Call[str]):
    def run(self, conn: Any) -> str:
        return "the final GetJob"

    async def run_async(self, conn: Any) -> str:
        return "the final GetJob"


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_a_deadline_after_the_jobs_last_state_gets_the_job_rather_than_saying_it_runs(state):
    end = JobEnd("j1", _EndedThenDeadline(state), _FinalJob(), JobState.RUNNING, timeout=1)
    assert end.run(None) == "the final GetJob"
    assert asyncio.run(end.run_async(None)) == "the final GetJob"


@pytest.mark.parametrize("state", [JobState.RUNNING, JobState.INTERRUPTED])
def test_a_deadline_before_the_jobs_last_state_says_it_goes_on(state):
    end = JobEnd("j1", _EndedThenDeadline(state), _FinalJob(), JobState.QUEUED, timeout=1)
    with pytest.raises(tessera.StillRunning, match=rf"job j1 is still {state.value} after 1 s"):
        end.run(None)
    with pytest.raises(tessera.StillRunning, match=rf"job j1 is still {state.value} after 1 s"):
        asyncio.run(end.run_async(None))

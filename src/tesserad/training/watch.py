"""A job's events as one async stream: the stored ones from a sequence number, then live ones.

Shared by every transport that follows a job (gRPC WatchJob, the dashboard's event stream), so
the replay-then-subscribe hand-over is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from tesserad.errors import InvalidArgument, OutOfRange
from tesserad.training.events import EventLog, JobEvent, follow_batches
from tesserad.training.job_records import ENDED, stopped_early
from tesserad.training.jobs import Jobs


async def watch_job(
    jobs: Jobs, events: EventLog, job_id: str, from_seq: int
) -> AsyncIterator[list[JobEvent]]:
    """Events of `job_id` numbered `from_seq` and later, in the batches they arrive in, ending when
    the job ends. Checked before it is returned, so a transport answers a refusal before it starts
    its stream.

    NotFound for an unknown job; OutOfRange for a `from_seq` past the event after the job's last
    (a stale or mistaken number: waiting for it could take the job's whole life, or forever);
    later, ResourceExhausted when the watcher falls too far behind and Unavailable at shutdown,
    each naming the sequence number to resume from.
    """
    if from_seq < 0:
        raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
    await asyncio.to_thread(jobs.get, job_id)
    last_seq = events.last_seq(job_id)
    if from_seq > last_seq + 1:
        raise OutOfRange(
            f"from_seq {from_seq} is past job {job_id}'s events: its last event is {last_seq}; give "
            f"{last_seq + 1} to wait for the next, or from_seq 0 replays them all"
        )
    return _batches(jobs, events, job_id, from_seq)


async def _batches(jobs: Jobs, events: EventLog, job_id: str, from_seq: int) -> AsyncIterator[list[JobEvent]]:
    async for batch in follow_batches(events, job_id, from_seq):
        yield [await _with_early_stop(jobs, job_id, event) for event in batch]


async def _with_early_stop(jobs: Jobs, job_id: str, event: JobEvent) -> JobEvent:
    """`event`; an end an older daemon stored without why early stopping ended the job's training
    with it, as the job's record says (this daemon stores it on the end)."""
    if event.kind != "state" or event.data["state"] not in ENDED or "stopped_early" in event.data:
        return event
    job = await asyncio.to_thread(jobs.get, job_id)
    return replace(event, data={**event.data, "stopped_early": stopped_early(job)})

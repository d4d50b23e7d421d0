"""A job's events as one async stream: the stored ones from a sequence number, then live ones.

Shared by every transport that follows a job (gRPC WatchJob, the dashboard's event stream), so
the replay-then-subscribe hand-over is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tesserad.errors import InvalidArgument
from tesserad.training.events import EventLog, JobEvent, raise_if_shutdown
from tesserad.training.jobs import Jobs


async def watch_job(jobs: Jobs, events: EventLog, job_id: str, from_seq: int) -> AsyncIterator[JobEvent]:
    """Events of `job_id` numbered `from_seq` and later, ending when the job ends.

    NotFound for an unknown job; ResourceExhausted when the watcher falls too far behind and
    Unavailable at shutdown, each naming the sequence number to resume from.
    """
    if from_seq < 0:
        raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
    await asyncio.to_thread(jobs.get, job_id)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    subscription, newest = events.subscribe(job_id, lambda: loop.call_soon_threadsafe(wake.set))
    next_seq = max(from_seq, 1)
    try:
        # Replay what was numbered before we subscribed; the subscription has the rest.
        await asyncio.to_thread(events.flush)
        while next_seq <= newest:
            batch = await asyncio.to_thread(events.read, job_id, next_seq, newest)
            if not batch:
                break
            for event in batch:
                yield event
            next_seq = batch[-1].seq + 1
        if subscription is None:
            return
        while True:
            wake.clear()
            # Read before draining: whatever was pushed before the end is then in the buffer.
            ended = subscription.ended
            for event in subscription.drain():
                if event.seq >= next_seq:
                    yield event
                    next_seq = event.seq + 1
            subscription.raise_if_cut(next_seq)
            raise_if_shutdown(subscription, next_seq)
            if ended:
                return
            await wake.wait()
    finally:
        if subscription is not None:
            events.unsubscribe(job_id, subscription)

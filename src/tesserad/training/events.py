"""Job events: numbered, stored, and fanned out to any number of watchers.

Every event of a job gets the next sequence number (across attempts), is queued for the
store's group commit and, once committed, handed to each live watcher's bounded buffer. A watcher that falls
further behind than its buffer is cut off with the sequence number to resume from, so a slow
client never slows training or the other watchers. Replays read the store in short read
transactions; none is held open between polls.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tesserad.errors import ResourceExhausted, Unavailable
from tesserad.store import ReadTxn, Store, WriteTxn, decode_record, encode_record

TABLES = ["job_events"]
REPLAY_BATCH = 256

# Event kinds and their payloads (plain dicts, mirrored by JobEvent's oneof in the API).
KINDS = ("state", "step", "epoch", "progress", "resources", "checkpoint", "log", "error", "registered")


@dataclass(frozen=True)
class JobEvent:
    seq: int
    time: float  # wall clock
    attempt: int
    kind: str
    data: dict[str, Any]


def encode_event(event: JobEvent) -> bytes:
    return encode_record(
        "job_event",
        1,
        {
            "seq": event.seq,
            "time": event.time,
            "attempt": event.attempt,
            "kind": event.kind,
            "data": event.data,
        },
    )


def decode_event(raw: bytes) -> JobEvent:
    return JobEvent(**decode_record(raw, "job_event", 1)[1])


class Subscription:
    """One watcher's bounded buffer; `wake` is called (from any thread) when something arrives."""

    def __init__(self, after_seq: int, capacity: int, wake: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[JobEvent] = collections.deque()
        self._capacity = capacity
        self._wake = wake
        self.after_seq = after_seq  # the live stream starts after this sequence number
        self.overflowed = False
        self.ended = False  # the job ended: no more events will come
        self.closed_by_shutdown = False

    def push(self, event: JobEvent) -> None:
        with self._lock:
            if self.overflowed:
                return
            if len(self._items) >= self._capacity:
                self.overflowed = True
                self._items.clear()
            else:
                self._items.append(event)
        self._wake()

    def end(self, shutdown: bool = False) -> None:
        with self._lock:
            self.ended = True
            self.closed_by_shutdown = shutdown
        self._wake()

    def drain(self) -> list[JobEvent]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    def raise_if_cut(self, next_seq: int) -> None:
        """RESOURCE_EXHAUSTED if events were dropped; `next_seq` is the first one not yet delivered."""
        if self.overflowed:
            raise ResourceExhausted(
                f"this watcher fell more than {self._capacity} events behind; watch again "
                f"with from_seq={next_seq} to resume"
            )


@dataclass
class _JobChannel:
    last_seq: int
    ended: bool
    subscribers: set[Subscription] = field(default_factory=set)
    # The first write of an event the store refused, until `take_failure` hands it on.
    failure: BaseException | None = None


class EventLog:
    """Sequence numbers, storage and live fan-out of job events (or of any other numbered
    stream stored in its own table: the registry's change feed uses one too)."""

    def __init__(self, store: Store, watch_buffer: int, table: str = "job_events") -> None:
        self._store = store
        self._buffer = watch_buffer
        self._table = table
        self._lock = threading.Lock()
        self._channels: dict[str, _JobChannel] = {}
        self._shutdown = False

    def open_job(self, job_id: str, last_seq: int, ended: bool) -> None:
        """Make the log know a job (at submit, or for every job found in the store at start)."""
        with self._lock:
            self._channels[job_id] = _JobChannel(last_seq, ended)

    def forget_job(self, job_id: str) -> None:
        """Drop the channel of a job whose submit failed: it was never stored, so nothing watches it."""
        with self._lock:
            del self._channels[job_id]

    def append(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        data: dict[str, Any],
        also: Callable[[WriteTxn, JobEvent], None] | None = None,
        ends_job: bool = False,
        reserved: bool = False,
    ) -> JobEvent:
        """Number, store (with `also` in the same transaction) and fan out one event;
        `reserved`: an event that ends the job (or leads to its end) may use the store's reserve."""
        with self._lock:
            channel = self._channels[job_id]
            channel.last_seq += 1
            event = JobEvent(channel.last_seq, time.time(), attempt, kind, data)

            def work(txn: WriteTxn) -> None:
                txn.put(self._table, (job_id, event.seq), encode_event(event))
                if also is not None:
                    also(txn, event)

            # Submitted under the lock so the store sees events in sequence order. Watchers get an
            # event once it is committed: one a crash could still lose is never shown, so a
            # watcher resuming against the next daemon sees the same numbering.
            committed = self._store.submit(work, reserved=reserved or ends_job)
            subscribers = list(channel.subscribers)
            if ends_job:
                channel.ended = True
                channel.subscribers.clear()

        def fan_out(future: Future[None]) -> None:
            failure = future.exception()
            if failure is not None:
                with self._lock:
                    if channel.failure is None:
                        channel.failure = failure
            for subscriber in subscribers:
                # An end is shown even unstored: the job has ended, and the watcher waits for it.
                if failure is None or ends_job:
                    subscriber.push(event)
                if ends_job:
                    subscriber.end()

        committed.add_done_callback(fan_out)
        return event

    def take_failure(self, job_id: str) -> BaseException | None:
        """The error of the first of the job's events the store refused since the last call:
        appends do not wait for their commit, so the job's writer learns of it here."""
        with self._lock:
            channel = self._channels[job_id]
            failure, channel.failure = channel.failure, None
            return failure

    def subscribe(self, job_id: str, wake: Callable[[], object]) -> tuple[Subscription | None, int]:
        """A live subscription (None if the job has ended) and the newest seq at this moment."""
        with self._lock:
            if self._shutdown:
                raise Unavailable("tesserad is shutting down; watch again once it is back")
            channel = self._channels[job_id]
            if channel.ended:
                return None, channel.last_seq
            subscription = Subscription(channel.last_seq, self._buffer, wake)
            channel.subscribers.add(subscription)
            return subscription, channel.last_seq

    def last_seq(self, job_id: str) -> int:
        """The newest sequence number given out for `job_id`."""
        with self._lock:
            return self._channels[job_id].last_seq

    def unsubscribe(self, job_id: str, subscription: Subscription) -> None:
        with self._lock:
            channel = self._channels.get(job_id)
            if channel is not None:
                channel.subscribers.discard(subscription)

    def flush(self) -> None:
        """Wait until every event numbered so far is in the store (before a replay reads it)."""
        self._store.flush()

    def read(self, job_id: str, from_seq: int, to_seq: int) -> list[JobEvent]:
        """Stored events from_seq..to_seq, at most REPLAY_BATCH, in one short read transaction."""
        with self._store.read() as txn:
            batch = [
                decode_event(raw)
                for _, raw in txn.scan(self._table, (job_id,), start=(job_id, from_seq), limit=REPLAY_BATCH)
            ]
        return [e for e in batch if e.seq <= to_seq]

    def newest(self, job_id: str, limit: int) -> list[JobEvent]:
        """The job's newest `limit` stored events, newest first, in one short read transaction."""
        with self._store.read() as txn:
            return self.newest_in(txn, job_id, limit)

    def newest_in(self, txn: ReadTxn, job_id: str, limit: int) -> list[JobEvent]:
        """`newest`, read in `txn` (a start-up pass's write transaction)."""
        return [decode_event(raw) for _, raw in txn.scan(self._table, (job_id,), reverse=True, limit=limit)]

    def shutdown(self) -> None:
        """End every live watcher (they may resume against the next daemon)."""
        with self._lock:
            self._shutdown = True
            subscribers = [s for c in self._channels.values() for s in c.subscribers]
            for channel in self._channels.values():
                channel.subscribers.clear()
        for subscriber in subscribers:
            subscriber.end(shutdown=True)


def raise_if_shutdown(subscription: Subscription, next_seq: int) -> None:
    if subscription.closed_by_shutdown:
        raise Unavailable(f"tesserad is shutting down; watch again with from_seq={next_seq} to resume")


async def follow(events: EventLog, job_id: str, from_seq: int) -> AsyncIterator[JobEvent]:
    """The stored events from `from_seq`, then the live ones until the stream ends, one by one.

    Raises ResourceExhausted when the watcher falls behind its buffer and Unavailable at
    shutdown, both naming the from_seq to resume from.
    """
    async for batch in follow_batches(events, job_id, from_seq):
        for event in batch:
            yield event


async def follow_batches(events: EventLog, job_id: str, from_seq: int) -> AsyncIterator[list[JobEvent]]:
    """`follow`, in the batches the events arrive in: a replay read, or what one wake-up found.

    A transport that can send several events in one write (the dashboard's event streams) pays
    its per-write cost once per batch instead of once per event.
    """
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
            yield batch
            next_seq = batch[-1].seq + 1
        if subscription is None:
            return
        while True:
            wake.clear()
            # Read before draining: whatever was pushed before the end is then in the buffer.
            ended = subscription.ended
            fresh = []
            for event in subscription.drain():
                if event.seq >= next_seq:
                    fresh.append(event)
                    next_seq = event.seq + 1
            if fresh:
                yield fresh
            subscription.raise_if_cut(next_seq)
            raise_if_shutdown(subscription, next_seq)
            if ended:
                return
            await wake.wait()
    finally:
        if subscription is not None:
            events.unsubscribe(job_id, subscription)

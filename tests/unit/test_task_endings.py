"""Coroutines that start tasks of their own end them before they return: none still runs a few
loop turns later (the daemon's stop counts such a task as left pending)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from tesserad.api.follow import Follower
from tesserad.api.streams import answer_stream
from tesserad.config import ReplicaSettings
from tesserad.replica.link import PrimaryLink
from tesserad.tasks import cancel_and_wait


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _started_by(coro: Any) -> tuple[asyncio.Task[Any], set[asyncio.Task[Any]]]:
    """`coro` as a task, and the tasks it started in its first loop turns."""
    before = asyncio.all_tasks()
    outer = asyncio.create_task(coro)
    await _turns()
    return outer, asyncio.all_tasks() - before - {outer}


def test_a_stream_that_ends_has_ended_its_tasks() -> None:
    async def requests() -> AsyncIterator[int]:
        yield 1
        await asyncio.Event().wait()

    async def never(_: Any) -> Any:
        try:
            await asyncio.Event().wait()
        finally:  # an answer's own clean-up takes loop turns (a batcher's queue, a thread)
            await _turns()

    async def consume() -> None:
        async for _ in answer_stream(requests(), never, lambda _r, exc: exc, asyncio.Event(), None):
            pass

    async def main() -> None:
        consumer, started = await _started_by(consume())
        assert len(started) == 3  # the reader, the watch for the daemon's stop, the request's answer
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert all(task.done() for task in started)

    asyncio.run(main())


def test_a_follower_that_is_cancelled_has_ended_its_retries() -> None:
    async def ready(_: bool) -> None:
        pass

    async def main() -> None:
        settings = ReplicaSettings(primary="127.0.0.1:1")
        # Only the sequence of the last change applied is read before the primary answers.
        followed = SimpleNamespace(seq=0)
        follower = Follower(
            settings,
            followed,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            "127.0.0.1:2",
            ready,
            False,
            PrimaryLink(),
            lambda _: None,
        )
        runner, started = await _started_by(follower.run())
        # gRPC's channel tasks end with the follower's close, not with its run.
        retries = [t for t in started if getattr(t.get_coro(), "__name__", "") == "_retry_failed_loads"]
        assert retries
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert all(task.done() for task in retries)
        await follower.close()

    asyncio.run(main())


def test_the_callers_own_cancellation_is_raised() -> None:
    async def main() -> None:
        async def stubborn() -> None:
            # Ends only when told twice: the caller's wait is still on when its own cancel comes.
            with pytest.raises(asyncio.CancelledError):
                await asyncio.Event().wait()
            await asyncio.Event().wait()

        inner = asyncio.create_task(stubborn())
        await _turns()
        waiter = asyncio.create_task(cancel_and_wait([inner]))
        await _turns()
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await cancel_and_wait([inner])
        assert inner.cancelled()

    asyncio.run(main())

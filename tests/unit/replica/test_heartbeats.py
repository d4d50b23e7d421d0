"""A watch of the registry's changes with heartbeats: its events as they come, a heartbeat among
them when one is due, their end or error after them, and no task of the loop's per event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from tesserad.replica.changes import CaughtUp, Heartbeat, _with_heartbeats


async def caught_up(count: int, then: Exception | None = None) -> AsyncIterator[CaughtUp]:
    """`count` events with no pause between them (a stored replay), then `then` raised."""
    for seq in range(1, count + 1):
        yield CaughtUp(seq)
    if then is not None:
        raise then


async def watched(events: AsyncIterator[Any], interval_s: float) -> list[Any]:
    return [event async for event in _with_heartbeats(events, interval_s, lambda: 7)]


def test_a_replay_takes_no_task_per_event() -> None:
    # Each event was awaited in a task of its own with a timer: ~300 us of the primary's loop each.
    tasks = 0

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        nonlocal tasks
        tasks += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> list[Any]:
        asyncio.get_running_loop().set_task_factory(counting)
        return await watched(caught_up(2000), 60.0)

    got = asyncio.run(main())
    assert got == [Heartbeat(7), *(CaughtUp(seq) for seq in range(1, 2001))]
    assert tasks < 100, tasks


def test_an_error_is_raised_after_the_events_before_it() -> None:
    got: list[Any] = []

    async def main() -> None:
        async for event in _with_heartbeats(
            caught_up(3, RuntimeError("the store went away")), 60.0, lambda: 7
        ):
            got.append(event)

    with pytest.raises(RuntimeError, match="the store went away"):
        asyncio.run(main())
    assert got == [Heartbeat(7), CaughtUp(1), CaughtUp(2), CaughtUp(3)]


def test_a_heartbeat_comes_while_no_event_does() -> None:
    async def quiet() -> AsyncIterator[CaughtUp]:
        yield CaughtUp(1)
        await asyncio.Event().wait()
        yield CaughtUp(2)

    async def main() -> list[Any]:
        got: list[Any] = []
        async with contextlib.aclosing(_with_heartbeats(quiet(), 0.01, lambda: 7)) as events:
            async for event in events:
                got.append(event)
                # Where heartbeats fall among the events depends on how the loop was scheduled.
                if CaughtUp(1) in got and got[got.index(CaughtUp(1)) :].count(Heartbeat(7)) >= 2:
                    return got
        return got

    got = asyncio.run(main())
    assert [event for event in got if event != Heartbeat(7)] == [CaughtUp(1)]
    assert got[got.index(CaughtUp(1)) :].count(Heartbeat(7)) >= 2, got


def test_a_reader_cancelled_from_inside_the_events_ends_the_watch() -> None:
    # Heartbeats went on forever: the reader caught Exception alone, and put no end.
    async def cancelled_inside() -> AsyncIterator[CaughtUp]:
        yield CaughtUp(1)
        raise asyncio.CancelledError

    async def main() -> list[Any]:
        got: list[Any] = []
        async with contextlib.aclosing(_with_heartbeats(cancelled_inside(), 0.01, lambda: 7)) as events:
            async for event in events:
                got.append(event)
                if len(got) > 1000:
                    break
        return got

    with pytest.raises(RuntimeError, match="reader was cancelled"):
        asyncio.run(main())

"""Ending asyncio tasks a coroutine started for itself, and waiting out work it handed a thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and return once each has ended, so none of them still runs a few loop turns
    after its owner returned. Their own CancelledError is not raised (nor their errors, which
    asyncio reports as unretrieved); the caller's cancellation, also one arriving while it waits,
    is."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


async def end_background_task(task: asyncio.Task[Any], what: str) -> None:
    """Cancel `task`, one of the daemon's long-lived loops (`what` names it in the log), and
    return once it has ended. An error it had ended with is logged, not raised: the stop goes on
    to close training, inference and the store whatever ended a loop. The caller's cancellation
    is raised."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.error("%s had stopped with an error", what, exc_info=task.exception())


async def wait_out(job: asyncio.Future[T]) -> T:
    """`job`'s result (or its error) once it has ended. A caller cancelled meanwhile, however many
    times, waits on until it has ended, then raises the cancel: what the job uses (a file, a
    shared-memory region, a copy of the store) is let go of by the caller only after it."""
    cancel: asyncio.CancelledError | None = None
    while not job.done():
        try:
            # wait, not await: it neither cancels the job nor raises its error.
            await asyncio.wait([job])
        except asyncio.CancelledError as exc:
            cancel = exc
    if cancel is not None:
        if not job.cancelled():
            # Retrieved, so that asyncio logs no error never retrieved for an answer no one waits for.
            job.exception()
        raise cancel
    return job.result()


async def off_the_loop(work: Callable[[], T]) -> T:
    """`work()` run in a thread, so that the event loop answers other calls meanwhile, and waited
    out as `wait_out` does: the caller ends only once it has returned."""
    return await wait_out(asyncio.ensure_future(asyncio.to_thread(work)))

"""Ending asyncio tasks a coroutine started for itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)


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

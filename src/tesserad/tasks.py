"""Ending asyncio tasks a coroutine started for itself."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and return once each has ended, so none of them still runs a few loop turns
    after its owner returned. Their own CancelledError is not raised (nor their errors, which
    asyncio reports as unretrieved); the caller's cancellation, also one arriving while it waits,
    is."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)

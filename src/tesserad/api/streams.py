"""Bidirectional inference streams (tessera's PredictStream and the Open Inference Protocol's
ModelStreamInfer): every request is answered on its own, as soon as it is ready."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tesserad.errors import TesseraError
from tesserad.tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def answer_stream(
    requests: AsyncIterator[Any],
    answer: Callable[[Any], Awaitable[Any]],
    failed: Callable[[Any, TesseraError], Any],
) -> AsyncIterator[Any]:
    """Answer each request of a bidirectional stream as soon as it is ready, in any order.

    A failing request becomes `failed(request, error)` and the stream goes on; a message that
    cannot be read ends the stream with its error.
    """
    answers: asyncio.Queue[Any] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    done = object()

    async def one(request: Any) -> None:
        try:
            response = await answer(request)
        except TesseraError as exc:
            response = failed(request, exc)
        except Exception as exc:  # stays in this request; the log has the details under the id
            error_id = uuid.uuid4().hex[:12]
            log.error("unexpected error in a stream request", exc_info=exc, extra={"error_id": error_id})
            response = failed(request, _Internal(error_id))
        await answers.put(response)

    async def read() -> None:
        async for request in requests:
            task = asyncio.create_task(one(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))

    reader = asyncio.create_task(read())
    # Also when reading fails (a message over max_message_size, or one that does not parse):
    # `await reader` below then ends the stream with that error instead of waiting forever.
    reader.add_done_callback(lambda _: answers.put_nowait(done))
    try:
        while True:
            response = await answers.get()
            if response is done:
                break
            yield response
        await reader
    finally:
        await cancel_and_wait([reader, *tasks])


class _Internal(TesseraError):
    def __init__(self, error_id: str) -> None:
        super().__init__(f"internal error (id {error_id}); the daemon's log has the details under that id")

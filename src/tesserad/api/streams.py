"""Bidirectional inference streams (tessera's PredictStream and the Open Inference Protocol's
ModelStreamInfer): every request is answered on its own, as soon as it is ready."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tesserad.errors import TesseraError, Unavailable, logged_internal
from tesserad.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STOPPED_STREAM = (
    "tesserad is shutting down; the requests of this stream it did not answer were not run: "
    "send them on a new stream once it is back"
)
# Trailing metadata of a stream the stop ended: every request it did not answer was not run, so
# a client may send those again (the SDK does) instead of failing them.
UNANSWERED_NOT_RUN_HEADER = "tessera-unanswered-not-run"


async def answer_stream(
    requests: AsyncIterator[Any],
    answer: Callable[[Any], Awaitable[Any]],
    failed: Callable[[Any, TesseraError], Any],
    stopping: asyncio.Event,
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[Any]:
    """Answer each request of a bidirectional stream as soon as it is ready, in any order.

    A failing request becomes `failed(request, error)` and the stream goes on; a message that
    cannot be read ends the stream with its error. Once `stopping` is set (the daemon stops) it
    reads no more requests, answers those it has read, and ends with Unavailable, which says
    (UNANSWERED_NOT_RUN_HEADER) that every request it did not answer was not run: left open,
    gRPC would cancel it at the end of the grace period with words of its own, whatever it had
    run.
    """
    answers: asyncio.Queue[Any] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    reading_ended = object()
    unanswered = 0

    async def one(request: Any) -> None:
        try:
            response = await answer(request)
        except TesseraError as exc:
            response = failed(request, exc)
        except Exception as exc:  # stays in this request; the log has the details under the id
            response = failed(request, logged_internal(log, "a stream request", exc))
        await answers.put(response)

    async def read() -> None:
        nonlocal unanswered
        async for request in requests:
            task = asyncio.create_task(one(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            unanswered += 1

    reader = asyncio.create_task(read())
    # Also when reading fails (a message over max_message_size, or one that does not parse) or
    # the stop cuts it: the loop below then stops waiting for requests.
    reader.add_done_callback(lambda _: answers.put_nowait(reading_ended))
    stop_watch = asyncio.create_task(stopping.wait())
    stop_watch.add_done_callback(lambda _: reader.cancel())
    try:
        while (response := await answers.get()) is not reading_ended:
            unanswered -= 1
            yield response
        if not reader.cancelled():
            reader.result()  # a message that could not be read ends the stream with its error
        while unanswered:
            unanswered -= 1
            yield await answers.get()
        if reader.cancelled():
            context.set_trailing_metadata(((UNANSWERED_NOT_RUN_HEADER, "true"),))
            raise Unavailable(STOPPED_STREAM)
    finally:
        await cancel_and_wait([reader, stop_watch, *tasks])

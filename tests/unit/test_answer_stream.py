"""A bidirectional inference stream at the daemon's stop: it reads no more requests, answers the
ones it read, then ends with Unavailable saying that the rest were not run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tesserad.api.streams import STOPPED_STREAM, UNANSWERED_NOT_RUN_HEADER, answer_stream
from tesserad.errors import Internal, TesseraError, Unavailable


class Trailers:
    """Takes the place of gRPC's servicer context, whose trailing metadata is all a stream sets."""

    def __init__(self) -> None:
        self.set: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.set = trailers


def test_a_stop_answers_the_requests_read_then_ends_with_unavailable() -> None:
    async def main() -> list[int]:
        stopping, answering, release, reading_cut = (asyncio.Event() for _ in range(4))

        async def requests() -> AsyncIterator[int]:
            yield 1
            try:
                await asyncio.Event().wait()  # the client keeps the stream open
            finally:
                reading_cut.set()

        async def answer(request: int) -> int:
            answering.set()
            await release.wait()
            return request * 10

        def failed(request: int, error: TesseraError) -> int:
            raise AssertionError(f"request {request} failed: {error}")

        answers: list[int] = []
        trailers = Trailers()
        stream = answer_stream(requests(), answer, failed, stopping, trailers)
        first = asyncio.ensure_future(anext(stream))
        await answering.wait()
        stopping.set()
        await reading_cut.wait()
        release.set()  # the request read before the stop is answered after it
        answers.append(await first)
        with pytest.raises(Unavailable, match="tesserad is shutting down") as raised:
            async for response in stream:
                answers.append(response)
        assert raised.value.message == STOPPED_STREAM
        assert trailers.set == ((UNANSWERED_NOT_RUN_HEADER, "true"),)
        return answers

    # The stream ended although the client never ended its requests.
    assert asyncio.run(main()) == [10]


def test_a_stop_after_the_last_request_ends_the_stream_as_usual() -> None:
    async def main() -> tuple[list[int], tuple[tuple[str, str], ...]]:
        stopping, trailers = asyncio.Event(), Trailers()

        async def requests() -> AsyncIterator[int]:
            yield 1

        async def answer(request: int) -> int:
            stopping.set()  # the client has sent all it will: nothing is left unread
            await asyncio.sleep(0)
            return request * 10

        answers = [
            r async for r in answer_stream(requests(), answer, lambda _r, exc: exc, stopping, trailers)
        ]
        return answers, trailers.set

    assert asyncio.run(main()) == ([10], ())


def test_an_unexpected_error_fails_its_request_as_internal_and_the_stream_goes_on() -> None:
    async def main() -> list[int | TesseraError]:
        async def requests() -> AsyncIterator[int]:
            yield 1
            yield 2

        async def answer(request: int) -> int:
            if request == 1:
                raise RuntimeError("a bug")
            return request * 10

        stream = answer_stream(requests(), answer, lambda _r, exc: exc, asyncio.Event(), Trailers())
        return [r async for r in stream]

    answers = asyncio.run(main())
    assert 20 in answers
    (error,) = [a for a in answers if isinstance(a, TesseraError)]
    # Internal, which the one table of statuses answers with INTERNAL; the details stay in the log.
    assert isinstance(error, Internal)
    assert "a bug" not in error.message
    assert "the daemon's log has the details under that id" in error.message

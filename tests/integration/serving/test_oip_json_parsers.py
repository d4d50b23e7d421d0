"""The processes that parse large OIP HTTP JSON bodies (tesserad.api.oip_parsers), driven as the
HTTP listener drives them: none is left running by a request cancelled, a parse that hangs, or a
stop."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from multiprocessing.process import BaseProcess

import pytest

from tesserad import errors
from tesserad.api import oip_parsers
from tesserad.api.oip_parsers import JsonParsers
from tesserad.dashboard.listener import RETRY_AFTER, Refused

BODY = b'{"inputs": []}'


def _parsers(others: frozenset[int | None]) -> list[BaseProcess]:
    """This process's parser processes running, but those whose pids are `others`."""
    return [
        p
        for p in multiprocessing.active_children()
        if p.name == "tesserad-json-parser" and p.pid not in others
    ]


def _others() -> frozenset[int | None]:
    # Another test's daemon's parsers may be running.
    return frozenset(p.pid for p in _parsers(frozenset()))


def test_a_parse_cancelled_as_it_runs_or_as_its_process_starts_leaves_no_process() -> None:
    others = _others()

    async def scenario() -> None:
        parsers = JsonParsers(1, 1 << 30, 60.0)
        try:
            assert await parsers.parse(BODY, True, len(BODY)) == {"inputs": []}
            (parser,) = _parsers(others)
            parsing = asyncio.ensure_future(parsers.parse(BODY, True, len(BODY)))
            await asyncio.sleep(0)  # handed to the idle process
            parsing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await parsing
            assert not parser.is_alive() and not _parsers(others)
            starting = asyncio.ensure_future(parsers.parse(BODY, True, len(BODY)))
            await asyncio.sleep(0)  # a process starting for it
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            assert not _parsers(others)
            assert await parsers.parse(BODY, True, len(BODY)) == {"inputs": []}
        finally:
            await parsers.close()
        assert not _parsers(others)

    asyncio.run(scenario())


def test_a_parse_that_hangs_is_ended_at_its_deadline_and_at_close() -> None:
    others = _others()

    async def scenario() -> None:
        # A deadline of a second for a 14-byte body: 1 s plus 14 bytes at 1 MiB/s.
        parsers = JsonParsers(1, 1 << 30, 1.0)
        try:
            await parsers.parse(BODY, True, len(BODY))
            (stopped,) = _parsers(others)
            os.kill(stopped.pid or 0, signal.SIGSTOP)  # as a parser that hangs
            with pytest.raises(Refused) as late:
                await parsers.parse(BODY, True, len(BODY))
            assert (late.value.status, late.value.message, late.value.headers) == (
                503,
                "the process parsing this request's JSON body took over 1 s to parse it (14 B; "
                "limits.http_request_timeout_s plus 1 s per MiB), and was ended (another is started for "
                "the next request); send the request again, or send large tensors as binary data",
                RETRY_AFTER,
            )
            assert not stopped.is_alive() and not _parsers(others)
            assert await parsers.parse(BODY, True, len(BODY)) == {"inputs": []}
            (replaced,) = _parsers(others)
            os.kill(replaced.pid or 0, signal.SIGSTOP)
            held = asyncio.ensure_future(parsers.parse(BODY, True, len(BODY)))
            await asyncio.sleep(0)  # handed to the stopped process
        finally:
            # Answered at once: a stop does not wait on a parse.
            await parsers.close()
        with pytest.raises(errors.Unavailable) as stopping:
            await held
        assert stopping.value.message == (
            "tesserad stopped while it parsed this request's JSON body; send the request to another instance"
        )
        assert not replaced.is_alive() and not _parsers(others)

    asyncio.run(scenario())


def test_a_request_waiting_for_a_process_at_close_starts_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was handed the freed process slot after close, started a process, and had it killed.
    others = _others()
    started = 0

    class Counted(oip_parsers._Parser):
        def __init__(self) -> None:
            nonlocal started
            started += 1
            super().__init__()

    monkeypatch.setattr(oip_parsers, "_Parser", Counted)

    async def scenario() -> None:
        parsers = JsonParsers(1, 1 << 30, 60.0)
        try:
            await parsers.parse(BODY, True, len(BODY))
            (stopped,) = _parsers(others)
            os.kill(stopped.pid or 0, signal.SIGSTOP)
            held = asyncio.ensure_future(parsers.parse(BODY, True, len(BODY)))
            waiting = asyncio.ensure_future(parsers.parse(BODY, True, len(BODY)))
            await asyncio.sleep(0)  # one handed to the stopped process, one waiting for it
        finally:
            await parsers.close()
        for request in (held, waiting):
            with pytest.raises(errors.Unavailable):
                await request
        assert started == 1 and not _parsers(others)

    asyncio.run(scenario())

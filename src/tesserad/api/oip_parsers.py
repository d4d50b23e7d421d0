"""Processes that parse large JSON inference bodies for the Open Inference Protocol over HTTP.

json.loads, and making numpy arrays of the lists it builds, hold the interpreter's lock for the
whole parse on any thread (about 1 s per 8 MiB of numbers): on the event loop's thread, or on
another, health probes and every other call on the daemon would wait behind it. A process has
an interpreter of its own; it gets the JSON's bytes and sends back the request's arrays, whose
unpickling is a copy of their bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
from multiprocessing.process import BaseProcess
from typing import Any

from tesserad import errors
from tesserad.api.oip_json_tensors import serve_parses
from tesserad.config import format_size
from tesserad.dashboard.listener import RETRY_AFTER, Refused
from tesserad.tasks import wait_out

log = logging.getLogger(__name__)

# How long a parser process has to end once asked (its pipe closed), before it is killed.
_END_WAIT_S = 2.0


class _Parser:
    """One parser process and the daemon's end of its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self.connection = ours
        self.process: BaseProcess = context.Process(
            target=serve_parses,
            args=(theirs, sys.getrecursionlimit()),
            name="tesserad-json-parser",
            daemon=True,
        )
        self.process.start()
        # Its end closed here: the process's exit then ends a recv here with EOFError.
        theirs.close()

    def exchange(self, text: bytes, whole_body: bool) -> tuple[str, Any]:
        """Blocking: `text` parsed in the process. EOFError or OSError: the process ended."""
        self.connection.send(whole_body)
        self.connection.send_bytes(text)
        answer: tuple[str, Any] = self.connection.recv()
        return answer

    def end(self) -> None:
        """Blocking: the process ended (killed when it does not end on its own in a moment)."""
        self.connection.close()
        self.process.join(_END_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class JsonParsers:
    """Up to `processes` parser processes, started as the first large bodies arrive; bodies
    wait for a free one while at most `queue_size` bytes of them are waiting or being parsed
    (one body is always taken), and are refused with 503 past that."""

    def __init__(self, processes: int, queue_size: int) -> None:
        self._processes = processes
        self._queue_size = queue_size
        self._free = asyncio.Semaphore(processes)
        self._idle: list[_Parser] = []
        self._busy: set[_Parser] = set()
        self._queued = 0
        self._closed = False

    async def parse(self, text: bytes, whole_body: bool) -> Any:
        """The document `parsed_request` makes of `text`; its InvalidArgument as it raises it."""
        size = len(text)
        if self._closed:
            raise errors.Unavailable("tesserad is stopping; send the request to another instance")
        if self._queued and self._queued + size > self._queue_size:
            raise Refused(
                503,
                f"tesserad is parsing {format_size(self._queued)} of JSON request bodies already, "
                f"and this one ({format_size(size)}) would take it over serving.oip_http_json_queue_size "
                f"= {format_size(self._queue_size)}; send it again in a moment, or send large tensors "
                "as binary data (the binary tensor data extension; tritonclient.http: "
                "set_data_from_numpy(..., binary_data=True)), which takes no parsing",
                headers=RETRY_AFTER,
            )
        self._queued += size
        try:
            async with self._free:
                if self._closed:
                    # It waited for a process while the daemon stopped: none is started again.
                    raise errors.Unavailable("tesserad is stopping; send the request to another instance")
                parser = await self._parser()
                self._busy.add(parser)
                try:
                    # Waited out when the request is cancelled: the process is busy until then.
                    kind, value = await wait_out(
                        asyncio.ensure_future(asyncio.to_thread(parser.exchange, text, whole_body))
                    )
                except (EOFError, OSError):
                    await asyncio.to_thread(parser.end)
                    if self._closed:
                        raise errors.Unavailable(
                            "tesserad stopped while it parsed this request's JSON body; send the "
                            "request to another instance"
                        ) from None
                    log.error(
                        "a JSON parser process ended while it parsed a request body; one is started again"
                    )
                    raise Refused(
                        503,
                        "the process parsing this request's JSON body ended before it was done (another "
                        "is started for the next request); send the request again, or send large tensors "
                        "as binary data",
                        headers=RETRY_AFTER,
                    ) from None
                finally:
                    self._busy.discard(parser)
                if not self._closed:
                    self._idle.append(parser)
        finally:
            self._queued -= size
        if kind == "invalid":
            raise errors.InvalidArgument(value)
        if kind == "failed":
            # Answered 500 with an error id; what failed goes to the log alone.
            raise RuntimeError(f"a JSON parser process failed: {value}")
        return value

    async def _parser(self) -> _Parser:
        """An idle parser process that is still running, or a new one."""
        while self._idle:
            parser = self._idle.pop()
            if parser.process.is_alive():
                return parser
            log.warning("a JSON parser process had ended while idle; one is started again")
            await asyncio.to_thread(parser.end)
        return await asyncio.to_thread(_Parser)

    async def close(self) -> None:
        """End every parser process; a parse in progress is answered 503."""
        self._closed = True
        parsers = [*self._idle, *self._busy]
        self._idle.clear()
        for parser in self._busy:
            # A running parse ends at once; an idle process ends as its pipe closes.
            with contextlib.suppress(OSError):
                parser.process.terminate()
        await asyncio.gather(*(asyncio.to_thread(parser.end) for parser in parsers))

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
import functools
import logging
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from tesserad import errors
from tesserad.api.oip_json_tensors import serve_parses
from tesserad.config import format_size
from tesserad.dashboard.listener import RETRY_AFTER, Refused
from tesserad.tasks import wait_out

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a parser process has to end once asked (its pipe closed), before it is killed.
_END_WAIT_S = 2.0
# How long a parser process may take to start (a spawned interpreter imports numpy) before it
# is taken to hang.
_START_WAIT_S = 60.0
# The pace below which a parse is taken to hang: a MiB a second, an eighth of what one takes on an
# idle core (1 s per 8 MiB), which leaves room for processes sharing a loaded machine's cores.
_PARSED_PER_S = 2**20


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
        self.started = False

    def start(self) -> None:
        """Blocking: returns once the process has started (imported what it parses with).
        EOFError or OSError: the process ended."""
        self.connection.recv_bytes()
        self.started = True

    def exchange(self, text: bytes | memoryview, whole_body: bool) -> tuple[str, Any]:
        """Blocking: `text` parsed in the process. EOFError or OSError: the process ended."""
        self.connection.send(whole_body)
        self.connection.send_bytes(text)
        answer: tuple[str, Any] = self.connection.recv()
        return answer

    def kill(self) -> None:
        """Its process killed now (a stopped one too): an exchange in progress ends with EOFError
        or OSError, and `end` returns at once."""
        with contextlib.suppress(OSError):
            self.process.kill()

    def end(self) -> None:
        """Blocking: the process ended (killed when it does not end on its own in a moment)."""
        self.connection.close()
        self.process.join(_END_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class JsonParsers:
    """Up to `processes` parser processes, started as the first large bodies arrive; bodies
    wait for a free one while at most `queue_size` bytes of them are held waiting or being
    parsed (one body is always taken), and are refused with 503 past that. A parse gets
    `deadline_s` of its size (`timeout_s`: limits.http_request_timeout_s): past it, its process
    is killed and the body answered 503."""

    def __init__(self, processes: int, queue_size: int, timeout_s: float) -> None:
        self._processes = processes
        self._queue_size = queue_size
        self._timeout_s = timeout_s
        self._free = asyncio.Semaphore(processes)
        # One thread per process, each blocked in its exchange while the process parses: the
        # default executor's few threads (gzip, shared memory) are not held by parses.
        self._exchanges = ThreadPoolExecutor(processes, thread_name_prefix="tesserad-json-exchange")
        self._idle: list[_Parser] = []
        self._busy: set[_Parser] = set()
        self._queued = 0
        self._closed = False

    def deadline_s(self, size: int) -> float:
        """How long the parse of `size` bytes of JSON may take: the request timeout, plus a
        second per MiB (eight times what a parse takes on an idle core)."""
        return self._timeout_s + size / _PARSED_PER_S

    async def parse(self, text: bytes | memoryview, whole_body: bool, held: int) -> Any:
        """The document `parsed_request` makes of `text`; its InvalidArgument as it raises it.
        `held`: the bytes the request holds meanwhile (its body, binary data included), which
        count toward the queue's size."""
        if self._closed:
            raise errors.Unavailable("tesserad is stopping; send the request to another instance")
        if self._queued and self._queued + held > self._queue_size:
            raise Refused(
                503,
                f"tesserad holds {format_size(self._queued)} of request bodies whose JSON waits for or is "
                f"in a parser process already, and this one ({format_size(held)}) would take it over "
                f"serving.oip_http_json_queue_size = {format_size(self._queue_size)}; send it again in a "
                "moment, or send large tensors as binary data (the binary tensor data extension; "
                "tritonclient.http: set_data_from_numpy(..., binary_data=True)), which takes no parsing",
                headers=RETRY_AFTER,
            )
        self._queued += held
        try:
            async with self._free:
                if self._closed:
                    # The daemon stopped while this request waited for a process: none is started.
                    raise errors.Unavailable("tesserad is stopping; send the request to another instance")
                kind, value = await self._parsed(text, whole_body)
        finally:
            self._queued -= held
        if kind == "invalid":
            raise errors.InvalidArgument(value)
        if kind == "failed":
            # Answered 500 with an error id; what failed goes to the log alone.
            raise RuntimeError(f"a JSON parser process failed: {value}")
        return value

    async def _parsed(self, text: bytes | memoryview, whole_body: bool) -> tuple[str, Any]:
        """A parser process's answer to `text`. Every way out hands the process back idle
        (its exchange completed) or ends it: none is left running unowned."""
        parser = await self._parser()
        self._busy.add(parser)
        if not parser.started:
            await self._exchanged(
                parser, parser.start, _START_WAIT_S, f"did not start within {_START_WAIT_S:g} s"
            )
        deadline = self.deadline_s(len(text))
        answer: tuple[str, Any] = await self._exchanged(
            parser,
            functools.partial(parser.exchange, text, whole_body),
            deadline,
            f"took over {round(deadline, 2):g} s to parse it ({format_size(len(text))}; "
            "limits.http_request_timeout_s plus 1 s per MiB)",
        )
        self._busy.discard(parser)
        if self._closed:
            await self._discard(parser)
        else:
            self._idle.append(parser)
        return answer

    async def _exchanged(self, parser: _Parser, work: Callable[[], T], deadline: float, late: str) -> T:
        """`work()` (blocking on `parser`'s pipe) run on a thread of its own; past `deadline`
        seconds, or when the caller is cancelled or `work` fails, `parser` is ended."""
        if self._closed:
            # The daemon stopped while the request waited for `parser` (or for it to start).
            await self._discard(parser)
            raise errors.Unavailable("tesserad is stopping; send the request to another instance")
        job = asyncio.get_running_loop().run_in_executor(self._exchanges, work)
        try:
            done, _ = await asyncio.wait([job], timeout=deadline)
        except asyncio.CancelledError:
            # The request ended (its token revoked, its client gone, the daemon stopping): its
            # parse is of no use, and a process that finished it could be held up for seconds.
            await self._discard(parser, job)
            raise
        if not done:
            await self._discard(parser, job)
            log.error("a JSON parser process %s; it was killed, and another is started", late)
            raise Refused(
                503,
                f"the process parsing this request's JSON body {late}, and was ended (another is "
                "started for the next request); send the request again, or send large tensors as "
                "binary data",
                headers=RETRY_AFTER,
            )
        try:
            return job.result()
        except (EOFError, OSError):
            await self._discard(parser)
            if self._closed:
                raise errors.Unavailable(
                    "tesserad stopped while it parsed this request's JSON body; send the request to "
                    "another instance"
                ) from None
            log.error("a JSON parser process ended while it parsed a request body; one is started again")
            raise Refused(
                503,
                "the process parsing this request's JSON body ended before it was done (another is "
                "started for the next request); send the request again, or send large tensors as "
                "binary data",
                headers=RETRY_AFTER,
            ) from None
        except BaseException:
            # An answer that could not be read (unpickled): the pipe is in no known state.
            await self._discard(parser)
            raise

    async def _parser(self) -> _Parser:
        """An idle parser process that is still running, or a new one."""
        while self._idle:
            parser = self._idle.pop()
            if parser.process.is_alive():
                return parser
            log.warning("a JSON parser process had ended while idle; one is started again")
            await self._discard(parser)
        starting = asyncio.ensure_future(asyncio.to_thread(_Parser))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # It starts all the same: ended once it has.
            await wait_out(asyncio.ensure_future(self._unwanted(starting)))
            raise

    async def _unwanted(self, starting: asyncio.Future[_Parser]) -> None:
        await asyncio.wait([starting])
        if not starting.cancelled() and starting.exception() is None:
            await self._discard(starting.result())

    async def _discard(self, parser: _Parser, exchange: asyncio.Future[Any] | None = None) -> None:
        """`parser` killed and its process reaped, once `exchange` (its exchange in progress)
        has returned; done in full however often the caller is cancelled meanwhile."""
        self._busy.discard(parser)
        parser.kill()
        await wait_out(asyncio.ensure_future(self._reaped(parser, exchange)))

    @staticmethod
    async def _reaped(parser: _Parser, exchange: asyncio.Future[Any] | None) -> None:
        if exchange is not None:
            await asyncio.wait([exchange])
            if not exchange.cancelled():
                # Retrieved: its EOFError (the process killed) is of no interest.
                exchange.exception()
        await asyncio.to_thread(parser.end)

    async def close(self) -> None:
        """End every parser process: a parse in progress (or a process that hangs) is killed
        and its request answered 503 at once, so a stop does not wait on it."""
        self._closed = True
        idle, self._idle = self._idle, []
        for parser in self._busy:
            # Reaped by the request that holds it, as its exchange fails.
            parser.kill()
        await asyncio.gather(*(self._discard(parser) for parser in idle))
        # Exchanges in progress return, as their processes are killed; none starts after this.
        self._exchanges.shutdown(wait=False)

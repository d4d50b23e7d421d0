"""SDK methods written once for the blocking and the asyncio client.

A client part's method builds a description of what to do (`Op`: one unary call; `Upload`,
`Save`, `Followed`, `ResumingDownload`, `Chain`, `PagesUpTo`; a stream of results: `Resumable`,
`ReconnectingBidi`; or a paginated list: `Pages`), and each kind of description knows how to
run itself on a blocking `Connection` and on an asyncio `AioConnection`. The `call` and `stream`
decorators make the method, on a part holding a `Connection`, return the result (an iterator of
results, or a `Listing` read again each time it is iterated), and on a part holding an
`AioConnection`, a coroutine (an async iterator, or an `AioListing`):

    class System(Part[C]):
        @call
        def info(self) -> Op[pb.ServerInfo]:
            return Op("System", "GetServerInfo", pb.GetServerInfoRequest())

    System(Connection(...)).info()          # a ServerInfo
    await System(AioConnection(...)).info()  # the same, awaited
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from tessera.errors import (
    DeadlineExceeded,
    Internal,
    OutOfRange,
    ResourceExhausted,
    TesseraError,
    Unavailable,
    Unimplemented,
    reached_no_daemon,
    stream_reset,
)
from tessera.listings import AioListing, Listing, messages_frame
from tessera.transport import AioConnection, Connection, RetryPolicy, call_timeout

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
P = ParamSpec("P")
C = TypeVar("C", Connection, AioConnection)


def _same(response: Any) -> Any:
    return response


class Call(ABC, Generic[T_co]):
    """Something that gives one result: run on a blocking or an asyncio connection."""

    @abstractmethod
    def run(self, conn: Connection) -> T_co: ...

    @abstractmethod
    async def run_async(self, conn: AioConnection) -> T_co: ...


class Stream(ABC, Generic[T_co]):
    """Something that gives results one by one: iterated on a blocking or an asyncio connection."""

    @abstractmethod
    def iterate(self, conn: Connection) -> Iterator[T_co]: ...

    @abstractmethod
    def iterate_async(self, conn: AioConnection) -> AsyncIterator[T_co]: ...


@dataclass(frozen=True)
class Op(Call[T_co]):
    """One unary call; `convert` turns the response message into the caller's result, and
    `timeout` (None: the client's) bounds it."""

    service: str
    method: str
    request: Message
    convert: Callable[[Any], T_co] = field(default=_same)
    timeout: float | None = None

    def __post_init__(self) -> None:
        call_timeout(self.timeout)

    def run(self, conn: Connection) -> T_co:
        return self.convert(conn.unary(self.service, self.method, self.request, self.timeout))

    async def run_async(self, conn: AioConnection) -> T_co:
        return self.convert(await conn.unary(self.service, self.method, self.request, self.timeout))


@dataclass(frozen=True)
class Upload(Call[T_co]):
    """A client stream of `requests()`; where `requests()` gives one message instead (a file
    small enough to send whole), the unary `inline_method` with it. The asyncio client calls
    `requests` in a thread, since preparing them may read and hash a whole file."""

    service: str
    method: str
    requests: Callable[[], Iterable[Message] | Message]
    timeout: float
    convert: Callable[[Any], T_co] = field(default=_same)
    inline_method: str = ""

    def __post_init__(self) -> None:
        call_timeout(self.timeout)

    def run(self, conn: Connection) -> T_co:
        requests = self.requests()
        if isinstance(requests, Message):
            return self.convert(conn.unary(self.service, self.inline_method, requests, self.timeout))
        return self.convert(conn.client_stream(self.service, self.method, requests, self.timeout))

    async def run_async(self, conn: AioConnection) -> T_co:
        requests = await asyncio.to_thread(self.requests)
        if isinstance(requests, Message):
            return self.convert(await conn.unary(self.service, self.inline_method, requests, self.timeout))
        return self.convert(await conn.client_stream(self.service, self.method, requests, self.timeout))


class Sink(Protocol[T_co]):
    """Where a download's chunks go; `finish` checks them and gives the result."""

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> T_co: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class Save(Call[T_co]):
    """A server stream of chunks alone (`data(response)` gives each one's bytes) into `sink()`."""

    service: str
    method: str
    request: Message
    timeout: float
    sink: Callable[[], Sink[T_co]]
    data: Callable[[Any], bytes]

    def __post_init__(self) -> None:
        call_timeout(self.timeout)

    def run(self, conn: Connection) -> T_co:
        sink = self.sink()
        try:
            for response in conn.server_stream(self.service, self.method, self.request, self.timeout):
                sink.write(self.data(response))
        except BaseException:
            sink.abort()
            raise
        return sink.finish()

    async def run_async(self, conn: AioConnection) -> T_co:
        sink = self.sink()
        try:
            async for response in conn.server_stream(self.service, self.method, self.request, self.timeout):
                # A disk's or a pipe's write, off the loop; a cancel is raised once it has ended,
                # never aborting the sink under it.
                await _off_the_loop(sink.write, self.data(response))
        except BaseException:
            # The thread runs to its end even where this await is cancelled again.
            await _off_the_loop(sink.abort)
            raise
        # A cancel meanwhile is raised once it has ended, its file then in place or not: to_thread
        # raised it at once, the thread going on to put the file in place after.
        return await _off_the_loop(sink.finish)


@dataclass(frozen=True)
class Followed(Call[T_co]):
    """A server stream that tells how a long operation goes, `each(message)` called with every
    message, and gives the result in its last (`convert(last)`); from a daemon older than the
    stream's method (UNIMPLEMENTED), the result of `older` instead, with no message told."""

    service: str
    method: str
    request: Message
    timeout: float
    each: Callable[[Any], None]
    convert: Callable[[Any], T_co]
    older: Call[T_co]

    def __post_init__(self) -> None:
        call_timeout(self.timeout)

    def run(self, conn: Connection) -> T_co:
        last = None
        try:
            for last in conn.server_stream(self.service, self.method, self.request, self.timeout):
                self.each(last)
        except Unimplemented:
            if last is not None:
                raise
            return self.older.run(conn)
        return self.convert(self._last(last))

    async def run_async(self, conn: AioConnection) -> T_co:
        last = None
        try:
            async for last in conn.server_stream(self.service, self.method, self.request, self.timeout):
                self.each(last)
        except Unimplemented:
            if last is not None:
                raise
            return await self.older.run_async(conn)
        return self.convert(self._last(last))

    def _last(self, last: Any) -> Any:
        if last is None:
            raise Internal(f"the daemon ended {self.method} without its result; call it again")
        return last


@dataclass(frozen=True)
class Chain(Call[T_co]):
    """Make the call `first`, then the call `then` makes of its result."""

    first: Call[Any]
    then: Callable[[Any], Call[T_co]]

    def run(self, conn: Connection) -> T_co:
        return self.then(self.first.run(conn)).run(conn)

    async def run_async(self, conn: AioConnection) -> T_co:
        return await self.then(await self.first.run_async(conn)).run_async(conn)


@dataclass(frozen=True)
class Given(Call[T_co]):
    """A result at hand, no call made: a `Chain`'s `then` where its result needs no other call."""

    result: T_co

    def run(self, conn: Connection) -> T_co:
        return self.result

    async def run_async(self, conn: AioConnection) -> T_co:
        return self.result


@dataclass(frozen=True)
class Decided(Call[T_co]):
    """The call `decide()` picks, where picking looks at the disk (whether a path is a
    directory): on the asyncio client on a worker thread, so that a slow disk stalls no loop."""

    decide: Callable[[], Call[T_co]]

    def run(self, conn: Connection) -> T_co:
        return self.decide().run(conn)

    async def run_async(self, conn: AioConnection) -> T_co:
        return await (await _off_the_loop(self.decide)).run_async(conn)


@dataclass(frozen=True)
class Pages(Generic[T_co]):
    """Every item of a paginated list, as a `Listing` that asks again each time it is read:
    `page(token)` is the call for one page, `items` the response's repeated field, `frame`
    makes the listing's `to_pandas()`; the next page is fetched only when the caller gets there."""

    page: Callable[[str], Op[Any]]
    items: str
    convert: Callable[[Any], T_co] = field(default=_same)
    frame: Callable[[Iterable[Any]], Any] | None = None  # None: messages_frame of the item message

    def listing(self, conn: Connection) -> Listing[T_co]:
        # The first page's call made now: a bad argument (timeout) is refused when the listing is.
        first = self.page("")
        return Listing(lambda: self._iterate(conn), first.request, self._frame(first))

    def listing_async(self, conn: AioConnection) -> AioListing[T_co]:
        first = self.page("")
        return AioListing(lambda: self._iterate_async(conn), first.request, self._frame(first))

    def _frame(self, first: Op[Any]) -> Callable[[Iterable[Any]], Any]:
        """`frame`, or messages_frame with the columns of the response's item message, which an
        empty listing's frame has too."""
        if self.frame is not None:
            return self.frame
        file = first.request.DESCRIPTOR.file
        method = file.pool.FindMethodByName(f"{file.package}.{first.service}.{first.method}")
        item: Descriptor = method.output_type.fields_by_name[self.items].message_type  # type: ignore[assignment]  # upb's is the same type
        return lambda items: messages_frame(items, item)

    def _iterate(self, conn: Connection) -> Iterator[T_co]:
        token = ""
        while True:
            response = self.page(token).run(conn)
            for item in getattr(response, self.items):
                yield self.convert(item)
            token = response.next_page_token
            if not token:
                return

    async def _iterate_async(self, conn: AioConnection) -> AsyncIterator[T_co]:
        token = ""
        while True:
            response = await self.page(token).run_async(conn)
            for item in getattr(response, self.items):
                yield self.convert(item)
            token = response.next_page_token
            if not token:
                return


@dataclass(frozen=True)
class JoinedPages(Call[T_co]):
    """Every page of a paginated answer joined into one message: `page(token)` is the call for
    one page; repeated fields are concatenated, the others are the last page's."""

    page: Callable[[str], Op[T_co]]

    def run(self, conn: Connection) -> T_co:
        joined: Any = self.page("").run(conn)
        while token := joined.next_page_token:
            self._add(joined, self.page(token).run(conn))
        return cast(T_co, joined)

    async def run_async(self, conn: AioConnection) -> T_co:
        joined: Any = await self.page("").run_async(conn)
        while token := joined.next_page_token:
            self._add(joined, await self.page(token).run_async(conn))
        return cast(T_co, joined)

    @staticmethod
    def _add(joined: Any, page: Any) -> None:
        joined.MergeFrom(page)  # appends repeated fields; sets the others that are not empty
        joined.next_page_token = page.next_page_token  # empty on the last page: MergeFrom skips it


@dataclass(frozen=True)
class PagesUpTo(Call[list[T_co]]):
    """The first `limit` items of a paginated list, as one list: `page(token, wanted)` is the call
    for one page of at most `wanted` items, `items` the response's repeated field. A page may
    hold fewer than asked (the daemon ends one at the size of an answer)."""

    page: Callable[[str, int], Op[Any]]
    items: str
    limit: int

    def run(self, conn: Connection) -> list[T_co]:
        got: list[T_co] = []
        token = ""
        while True:
            response = self.page(token, self.limit - len(got)).run(conn)
            got.extend(getattr(response, self.items))
            token = response.next_page_token
            if not token or len(got) >= self.limit:
                return got

    async def run_async(self, conn: AioConnection) -> list[T_co]:
        got: list[T_co] = []
        token = ""
        while True:
            response = await self.page(token, self.limit - len(got)).run_async(conn)
            got.extend(getattr(response, self.items))
            token = response.next_page_token
            if not token or len(got) >= self.limit:
                return got


class Cursor(Protocol):
    """Where a resumable stream has got to (see `tessera.training.WatchCursor`)."""

    def request(self) -> Message:
        """The request that resumes the stream from where it got to."""
        ...

    def remaining(self) -> float | None:
        """Seconds left of the whole stream's deadline (None: no deadline)."""
        ...

    def accept(self, response: Any) -> bool:
        """Record a response; False for one the caller already has."""
        ...

    def resume_after(self, error: TesseraError) -> float:
        """Seconds to wait before resuming after `error`; re-raises it when it must not be."""
        ...


class Reconnects:
    """Whether a broken stream is made again, and when: after an error of `RESUMED` (UNAVAILABLE:
    connection cut, daemon restarting) and a backoff, until `retry.attempts` tries in a row have
    failed or the whole stream's `timeout` would run out. `doing` names the stream in messages
    ("watching job j-1"), `again` says how to go on after one gives up."""

    RESUMED: tuple[type[TesseraError], ...] = (Unavailable,)

    def __init__(self, doing: str, again: str, retry: RetryPolicy, timeout: float | None) -> None:
        self.doing = doing
        self._again = again
        self._retry = retry
        self._failures = 0
        timeout = call_timeout(timeout)
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def again(self) -> str:
        return self._again

    def remaining(self) -> float | None:
        """Seconds left of the stream's timeout; DeadlineExceeded once none are (gRPC's
        asyncio channel does not always fail a call given 0)."""
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.doing} ran past its timeout; {self.again()}")
        return remaining

    def went_on(self) -> None:
        """A response came: the failures in a row start again from none."""
        self._failures = 0

    def resume_after(self, error: TesseraError) -> float:
        """Seconds to wait before resuming; re-raises `error` when it must not be resumed."""
        if not self.resumes(error):
            raise error
        self._failures += 1
        if self._failures >= self._retry.attempts:
            raise self._gave_up(error, "")
        pause = self._retry.backoff_s(self._failures)
        if self._deadline is not None and time.monotonic() + pause >= self._deadline:
            raise self._gave_up(error, ": its timeout ends before the next")
        return pause

    def resumes(self, error: TesseraError) -> bool:
        """Whether the stream is made again after `error`: one of RESUMED."""
        return isinstance(error, self.RESUMED)

    def _gave_up(self, error: TesseraError, why: str) -> TesseraError:
        """`error` (same type, same trailers) saying how many reconnects were made before it."""
        # The first of the failed tries was the stream itself, not a reconnect.
        reconnects = self._failures - 1
        return type(error)(
            f"{error.daemon_message} (gave up {self.doing} after {reconnects} reconnects, the last failing "
            f"{error.code}{why}; {self.again()})",
            error.trailers,
        )


class ResumableSink(Protocol[T_co]):
    """A download's file, which a stream broken midway goes on writing from `offset()`
    (see `tessera.transfer.ResumableDownloadSink`). Its file work (`start`, `write`, `finish`,
    `abort`) may block on the disk; `progressed` only calls the caller's progress callback."""

    @property
    def finish_publishes(self) -> bool:
        """Whether `finish` puts a file in place: a cancel meanwhile then waits for it to end, so
        that the file is either in place or not when the cancel is raised. A `finish` that only
        makes the result is left to end on its thread, the cancel raised at once."""
        ...

    def write(self, chunk: bytes) -> None: ...

    def progressed(self) -> None: ...

    def finish(self) -> T_co: ...

    def resuming(self) -> bool: ...

    def offset(self) -> int: ...

    def start(self, header: Any) -> None: ...

    def how_to_go_on(self) -> str: ...

    def changed(self, how: str) -> TesseraError: ...

    def abort(self, error: BaseException) -> BaseException:
        """Ends the download after `error`; the error to raise (`error`, or one saying more)."""
        ...


class _SinkReconnects(Reconnects):
    """Reconnects of a download, whose message on giving up or running out of time says what
    the sink kept."""

    def __init__(
        self, doing: str, sink: ResumableSink[Any], retry: RetryPolicy, timeout: float | None
    ) -> None:
        super().__init__(doing, "", retry, timeout)
        self._sink = sink

    def again(self) -> str:
        return self._sink.how_to_go_on()

    def resume_after(self, error: TesseraError) -> float:
        if isinstance(error, DeadlineExceeded):
            # gRPC's words name neither the download nor the bytes it kept.
            raise DeadlineExceeded(
                f"{error.daemon_message} ({self.doing}; {self.again()})", error.trailers
            ) from None
        return super().resume_after(error)


class _Resuming(Generic[T_co]):
    """Where a ResumingDownload has got to, between the steps that `run` and `run_async` take
    (each doing the I/O in its own way): the header the first stream sent (or the one resolved
    for the bytes kept), and the reconnects made."""

    def __init__(self, download: ResumingDownload[T_co], sink: ResumableSink[T_co]) -> None:
        self.sink = sink
        self._download = download
        self._header: Any = None
        self._asked_from = 0
        self._reconnects = _SinkReconnects(download.doing, sink, download.retry, download.timeout)

    def start(self, header: Any) -> None:
        """A header, resolved or sent at a stream's start, checked by the sink (file work)."""
        self.sink.start(header)
        self._header = header

    def next_stream(self) -> tuple[Message, float | None]:
        """The request for the rest of the file and the seconds left for it. Called outside the
        stream's `try`: running out here is not a break to resume after, and its message already
        says what was kept."""
        remaining = self._reconnects.remaining()
        self._asked_from = self.sink.offset()
        return self._download.request(self._header, self._asked_from), remaining

    def wrote(self) -> None:
        """A chunk was written: progress is reported, and the failures in a row start again."""
        self.sink.progressed()
        self._reconnects.went_on()

    def pause_after(self, error: TesseraError) -> float:
        """Seconds to wait before the next stream; re-raises `error` where it ends the download."""
        if isinstance(error, OutOfRange) and self._asked_from:
            # Bytes the file had when they were written are past its end now: it was stored again.
            raise self.sink.changed(f"it now ends before byte {self._asked_from}") from None
        return self._reconnects.resume_after(error)


def _on_a_worker(work: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`work(*args)` started on the loop's default executor, in a copy of the caller's context.
    A future, not to_thread's task: asyncio.run's shutdown cancels every task, and a task
    cancelled while the thread runs would read as done, its result never let go of."""
    return asyncio.get_running_loop().run_in_executor(
        None, functools.partial(contextvars.copy_context().run, work, *args)
    )


async def _off_the_loop(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on a worker thread. A cancel meanwhile, or several (a TaskGroup's teardown
    after a first), lets it end first, so that the sink is never aborted under a write still in
    flight; the first cancel is raised once it has."""
    future = _on_a_worker(work, *args)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            # wait, unlike wait_for, leaves the future running when this await is cancelled.
            await asyncio.wait([future])
        except asyncio.CancelledError as error:
            cancelled = cancelled or error
    if cancelled is not None:
        # Its error is the cancel's to raise now, not asyncio's to log as never retrieved.
        future.exception()
        raise cancelled
    return future.result()


async def _left_on_cancel(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on a worker thread, which a cancel meanwhile leaves to end alone: a load
    cancelled and started again parses beside the parse it left, each on its own worker."""
    future = _on_a_worker(work, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # Its result or error is no one's now, not asyncio's to log as never retrieved.
        future.add_done_callback(_let_go)
        # The cancel's traceback holds this frame: the future's result (a parsed dataset) is let
        # go once it is made, not kept as long as the caller keeps the error.
        del future
        raise


def _let_go(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class ResumingDownload(Call[T_co]):
    """A server stream of a header, then chunks, into `sink()`, which goes on from the bytes the
    sink has after a break that `retry` allows (UNAVAILABLE: connection cut, daemon restarting),
    asking `request(header, offset)` for the rest; `header` is None for the first stream (what
    the caller named) and then the first stream's header, so that a reconnect gets the same
    file. Where `sink()` holds bytes of an earlier download, `resolve` says first what file the
    caller named, for the sink to check them against (None for a sink that never holds any).
    `doing` names the download in messages ("downloading clips:1"). The asyncio variant does the
    sink's file work on worker threads, off the caller's event loop."""

    service: str
    method: str
    request: Callable[[Any, int], Message]
    resolve: Op[Any] | None
    timeout: float
    sink: Callable[[], ResumableSink[T_co]]
    retry: RetryPolicy
    doing: str

    def __post_init__(self) -> None:
        call_timeout(self.timeout)

    def run(self, conn: Connection) -> T_co:
        state = _Resuming(self, self.sink())
        try:
            if state.sink.resuming():
                assert self.resolve is not None, "a sink that resumes needs resolve"
                state.start(self.resolve.run(conn))
                # The bytes kept may be all there is: no chunk would report them.
                state.sink.progressed()
            while True:
                request, remaining = state.next_stream()
                try:
                    responses = conn.server_stream(self.service, self.method, request, remaining)
                    with contextlib.closing(responses):
                        state.start(next(responses).header)
                        for response in responses:
                            state.sink.write(response.chunk)
                            state.wrote()
                    break
                except TesseraError as error:
                    time.sleep(state.pause_after(error))
        except BaseException as error:
            told = state.sink.abort(error)
            if told is error:
                raise
            raise told from error
        return state.sink.finish()

    async def run_async(self, conn: AioConnection) -> T_co:
        # Made in a thread: resuming hashes the bytes kept.
        making = _on_a_worker(self.sink)
        try:
            sink = await asyncio.shield(making)
        except asyncio.CancelledError as cancelled:
            # The thread goes on making it: what it opened is let go of once it has.
            making.add_done_callback(functools.partial(_abort_made, cancelled))
            raise
        state = _Resuming(self, sink)
        try:
            if sink.resuming():
                assert self.resolve is not None, "a sink that resumes needs resolve"
                await _off_the_loop(state.start, await self.resolve.run_async(conn))
                sink.progressed()
            while True:
                request, remaining = state.next_stream()
                try:
                    responses = conn.server_stream(self.service, self.method, request, remaining)
                    async with contextlib.aclosing(responses):
                        await _off_the_loop(state.start, (await anext(responses)).header)
                        async for response in responses:
                            await _off_the_loop(sink.write, response.chunk)
                            state.wrote()
                    break
                except TesseraError as error:
                    await asyncio.sleep(state.pause_after(error))
        except BaseException as error:
            # The thread runs to its end even where this await is cancelled again.
            told = await _off_the_loop(sink.abort, error)
            if told is error:
                raise
            raise told from error
        if sink.finish_publishes:
            return await _off_the_loop(sink.finish)
        return await _left_on_cancel(sink.finish)


def _abort_made(error: BaseException, making: asyncio.Future[ResumableSink[Any]]) -> None:
    if not making.cancelled() and making.exception() is None:
        # A thread of its own: the abort's file work must not block the loop this callback runs
        # on, and the loop's executor may be shut down by now (asyncio.run ending).
        threading.Thread(target=making.result().abort, args=(error,), name="tessera-abort").start()


class SeqCursor(Reconnects, ABC):
    """Where a stream of numbered responses has got to (a job's events, the registry's
    changes): resumed from the next sequence number, after RESOURCE_EXHAUSTED (watcher too
    slow) and a stream reset (`stream_reset`) too."""

    RESUMED = (Unavailable, ResourceExhausted)

    def __init__(self, what: str, from_seq: int, retry: RetryPolicy, timeout: float | None) -> None:
        super().__init__(f"watching {what}", "watch again", retry, timeout)
        self.next_seq = from_seq

    @abstractmethod
    def request(self) -> Message:
        """The request that resumes the stream at `next_seq`."""

    def again(self) -> str:
        return f"{super().again()} from seq {self.next_seq}"

    def resumes(self, error: TesseraError) -> bool:
        """A stream reset (RST_STREAM: a daemon restarting, a proxy dropping its upstream) too: a
        watch only reads, and goes on from the next sequence number, so nothing is seen twice."""
        return super().resumes(error) or stream_reset(error)

    def accept_seq(self, seq: int) -> bool:
        """Record a received response's seq; False for a replayed one the caller already has."""
        if seq < self.next_seq:
            return False
        self.next_seq = seq + 1
        self.went_on()
        return True


@dataclass(frozen=True)
class Resumable(Stream[T_co]):
    """A server stream resumed after the errors `cursor` allows, from where it got to; it ends
    where the server ends it, or after a response for which `until` is true."""

    service: str
    method: str
    cursor: Cursor
    convert: Callable[[Any], T_co] = field(default=_same)
    until: Callable[[Any], bool] = field(default=lambda _: False)

    def iterate(self, conn: Connection) -> Iterator[T_co]:
        while True:
            try:
                responses = conn.server_stream(
                    self.service, self.method, self.cursor.request(), self.cursor.remaining()
                )
                # closing: a stream left at `until` is cancelled now, not when it is collected.
                with contextlib.closing(responses):
                    for response in responses:
                        if self.cursor.accept(response):
                            yield self.convert(response)
                        if self.until(response):
                            return
                return
            except TesseraError as error:
                time.sleep(self.cursor.resume_after(error))

    async def iterate_async(self, conn: AioConnection) -> AsyncIterator[T_co]:
        while True:
            try:
                responses = conn.server_stream(
                    self.service, self.method, self.cursor.request(), self.cursor.remaining()
                )
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        if self.cursor.accept(response):
                            yield self.convert(response)
                        if self.until(response):
                            return
                return
            except TesseraError as error:
                await asyncio.sleep(self.cursor.resume_after(error))


class _SharedRequests:
    """The caller's requests, taken once each by the calls of a reconnecting stream one after
    another. gRPC's sending thread for a call that broke may be waiting on the caller's
    iterator meanwhile: what it takes then is kept for the next call, not lost."""

    def __init__(self, requests: Iterable[Message], key: Callable[[Any], str]) -> None:
        self.requests = iter(requests)
        self.key = key
        # Held while the caller's iterator is asked: one thread at a time may ask it.
        self.taking = threading.Lock()
        # Held briefly, never while asking the iterator: a break must not wait for the caller.
        self.state = threading.Lock()
        self.kept: list[Message] = []

    def feed(self) -> _Feed:
        return _Feed(self)

    def send_again(self, requests: list[Message]) -> None:
        """Send `requests` (taken before those kept) first on the next call."""
        with self.state:
            self.kept[:0] = requests


class _Feed:
    """One call's requests from `_SharedRequests`; those sent and not answered are in flight."""

    def __init__(self, shared: _SharedRequests) -> None:
        self._shared = shared
        self._in_flight: list[Message] = []
        self._broken = False

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        shared = self._shared
        # Kept requests first, without waiting for `taking`: the thread of a call that broke
        # may hold it for as long as the caller's iterator waits for its next request.
        if (request := self._kept()) is not None:
            return request
        with shared.taking:
            if (request := self._kept()) is not None:
                return request
            request = next(shared.requests)
            with shared.state:
                if self._broken:
                    shared.kept.append(request)
                    raise StopIteration
                self._in_flight.append(request)
                return request

    def _kept(self) -> Message | None:
        """The first kept request, now in flight on this call; None when none is kept."""
        shared = self._shared
        with shared.state:
            if self._broken:
                raise StopIteration
            if not shared.kept:
                return None
            request = shared.kept.pop(0)
            self._in_flight.append(request)
            return request

    def answered(self, response: Any) -> None:
        key = self._shared.key(response)
        with self._shared.state:
            for index, request in enumerate(self._in_flight):
                if self._shared.key(request) == key:
                    del self._in_flight[index]
                    return

    def break_off(self) -> list[Message]:
        """End this call's requests; those in flight, which may or may not have been run."""
        with self._shared.state:
            self._broken = True
            unanswered, self._in_flight = self._in_flight, []
        return unanswered


# Trailing metadata of a stream the daemon ended as it stopped: it answered every request it read
# first, so those in flight were not run.
UNANSWERED_NOT_RUN = "tessera-unanswered-not-run"


def _ran_none(error: TesseraError) -> bool:
    """Whether the daemon ran none of the requests in flight on the call that `error` ended."""
    return error.trailers.get(UNANSWERED_NOT_RUN) == "true" or reached_no_daemon(error)


@dataclass(frozen=True)
class ReconnectingBidi(Stream[T_co]):
    """A bidirectional stream of requests answered one each (`key` of a request and of its
    response match), made again after the errors `reconnects` allows, for the requests not yet
    sent. A request in flight when the stream broke is not sent again, since the daemon may
    have run it already: it is given back as `unanswered(request, error)`, in order, before the
    stream goes on; unless the daemon ran none of them, which it says when its stop ended the
    stream (UNANSWERED_NOT_RUN), as gRPC does when the call found no connection: then they are
    sent again first."""

    service: str
    method: str
    requests: Iterable[Message]
    reconnects: Reconnects
    key: Callable[[Any], str]
    unanswered: Callable[[Any, TesseraError], T_co]
    convert: Callable[[Any], T_co] = field(default=_same)

    def iterate(self, conn: Connection) -> Iterator[T_co]:
        shared = _SharedRequests(self.requests, self.key)
        while True:
            feed = shared.feed()
            try:
                responses = conn.bidi_stream(self.service, self.method, feed, self.reconnects.remaining())
                # closing: a stream the caller leaves is cancelled now, not when it is collected.
                with contextlib.closing(responses):
                    for response in responses:
                        feed.answered(response)
                        self.reconnects.went_on()
                        yield self.convert(response)
                return
            except TesseraError as error:
                pause = self.reconnects.resume_after(error)
                in_flight = feed.break_off()
                if _ran_none(error):
                    shared.send_again(in_flight)
                else:
                    for request in in_flight:
                        yield self.unanswered(request, error)
                time.sleep(pause)
            finally:
                feed.break_off()

    async def iterate_async(self, conn: AioConnection) -> AsyncIterator[T_co]:
        shared = _SharedRequests(self.requests, self.key)
        while True:
            feed = shared.feed()
            try:
                responses = conn.bidi_stream(self.service, self.method, feed, self.reconnects.remaining())
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        feed.answered(response)
                        self.reconnects.went_on()
                        yield self.convert(response)
                return
            except TesseraError as error:
                pause = self.reconnects.resume_after(error)
                in_flight = feed.break_off()
                if _ran_none(error):
                    shared.send_again(in_flight)
                else:
                    for request in in_flight:
                        yield self.unanswered(request, error)
                await asyncio.sleep(pause)
            finally:
                feed.break_off()


class Part(Generic[C]):
    """A part of a client (models, datasets, ...) on a blocking or an asyncio connection."""

    def __init__(self, conn: C) -> None:
        self._conn: C = conn


def _resolved(annotation: Any, namespace: dict[str, Any]) -> Any:
    """An annotation (a string, under `from __future__ import annotations`) as the type it names;
    the string itself where it names one only a type checker imports."""
    if not isinstance(annotation, str):
        return annotation
    try:
        # As typing.get_type_hints does, but one at a time: one unresolved leaves the rest.
        return eval(annotation, namespace)
    except NameError:
        return annotation


def _result_of(description: Any, kind: type) -> Any:
    """What running `description`, an `Op[T]` or a class of Call[T], gives, or what iterating a
    Stream[T] gives: T; `kind` is Call or Stream. (A `Pages[T]` is neither: its Listing[T] is
    read by the `listing` decorator.)"""
    origin = typing.get_origin(description) or description
    if isinstance(origin, type) and issubclass(origin, kind):
        if origin is not description:
            return typing.get_args(description)[0]
        for cls in origin.__mro__:
            for base in vars(cls).get("__orig_bases__", ()):
                if typing.get_origin(base) is kind:
                    return typing.get_args(base)[0]
    return Any


def _on(conn_type: type, annotation: Any) -> Any:
    """`annotation` with the connection's type for C: `Job[C]` on a blocking client is `Job[Connection]`."""
    if C in getattr(annotation, "__parameters__", ()):
        return annotation[conn_type]
    return annotation


class _Method:
    """What `call` and `stream` share: the wrapped builder's name, doc and signature, and the
    bound method, made on first use and kept on the part (later lookups skip this)."""

    def __init__(self, build: Callable[..., Any]) -> None:
        functools.update_wrapper(cast(Any, self), build)
        self._build = build
        self._name = build.__name__
        self._signatures: dict[type, inspect.Signature] = {}

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def _signature(self, conn_type: type) -> inspect.Signature:
        """What help() and IDEs show: the method's own parameters, without `self`, and what it
        gives on a `conn_type` connection (not the description of the call that gives it);
        resolved on first use, once the module (whose classes the annotations name) is whole."""
        if conn_type not in self._signatures:
            signature = inspect.signature(self._build)
            # The parameters' annotations stay as written: resolved, an alias such as `Inputs`
            # would show as the whole union it stands for.
            parameters = list(signature.parameters.values())[1:]
            description = _resolved(signature.return_annotation, self._build.__globals__)
            self._signatures[conn_type] = inspect.Signature(
                parameters, return_annotation=_on(conn_type, self._returns(description, conn_type))
            )
        return self._signatures[conn_type]

    def _returns(self, description: Any, conn_type: type) -> Any:
        """What the bound method returns, of the `description` its builder returns."""
        raise NotImplementedError

    @property
    def __signature__(self) -> inspect.Signature:
        """The method read off its class (`inspect.signature(tessera.Job.watch)`, help()): `self`
        and the method's parameters, giving what it gives on the blocking client."""
        bound = self._signature(Connection)
        this = next(iter(inspect.signature(self._build).parameters.values()))
        return bound.replace(parameters=[this, *bound.parameters.values()])

    def __call__(self, part: Part[Any], /, *args: Any, **kwargs: Any) -> Any:
        # Read off its class, the method is called with its part first, as a function is.
        return getattr(part, self._name)(*args, **kwargs)

    def _bind(self, part: Part[Any], method: Callable[..., Any]) -> Any:
        functools.update_wrapper(method, self._build)
        method.__signature__ = self._signature(type(part._conn))  # type: ignore[attr-defined]
        vars(part)[self._name] = method
        return method


class _CallMethod(_Method, Generic[P, T]):
    def _returns(self, description: Any, conn_type: type) -> Any:
        # An asyncio client's method is a coroutine function: its annotation is what it gives
        # awaited, as an `async def`'s is.
        return _result_of(description, Call)

    @overload
    def __get__(self, part: None, owner: type) -> _CallMethod[P, T]: ...
    @overload
    def __get__(self, part: Part[Connection], owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, part: Part[AioConnection], owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, part: Part[Any] | None, owner: type) -> Any:
        if part is None:
            return self
        build, conn = self._build, part._conn
        if isinstance(conn, AioConnection):

            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await build(part, *args, **kwargs).run_async(conn)

            return self._bind(part, run_async)

        def run(*args: Any, **kwargs: Any) -> Any:
            return build(part, *args, **kwargs).run(conn)

        return self._bind(part, run)


class _StreamMethod(_Method, Generic[P, T]):
    def _returns(self, description: Any, conn_type: type) -> Any:
        iterator: Any = AsyncIterator if issubclass(conn_type, AioConnection) else Iterator
        return iterator[_result_of(description, Stream)]

    @overload
    def __get__(self, part: None, owner: type) -> _StreamMethod[P, T]: ...
    @overload
    def __get__(self, part: Part[Connection], owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, part: Part[AioConnection], owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, part: Part[Any] | None, owner: type) -> Any:
        if part is None:
            return self
        build, conn = self._build, part._conn
        if isinstance(conn, AioConnection):

            def iterate_async(*args: Any, **kwargs: Any) -> Any:
                return build(part, *args, **kwargs).iterate_async(conn)

            return self._bind(part, iterate_async)

        def iterate(*args: Any, **kwargs: Any) -> Any:
            return build(part, *args, **kwargs).iterate(conn)

        return self._bind(part, iterate)


class _ListingMethod(_Method, Generic[P, T]):
    def _returns(self, description: Any, conn_type: type) -> Any:
        listing: Any = AioListing if issubclass(conn_type, AioConnection) else Listing
        return listing[typing.get_args(description)[0] if typing.get_args(description) else Any]

    @overload
    def __get__(self, part: None, owner: type) -> _ListingMethod[P, T]: ...
    @overload
    def __get__(self, part: Part[Connection], owner: type) -> Callable[P, Listing[T]]: ...
    @overload
    def __get__(self, part: Part[AioConnection], owner: type) -> Callable[P, AioListing[T]]: ...
    def __get__(self, part: Part[Any] | None, owner: type) -> Any:
        if part is None:
            return self
        build, conn = self._build, part._conn
        if isinstance(conn, AioConnection):

            def listing_async(*args: Any, **kwargs: Any) -> Any:
                return build(part, *args, **kwargs).listing_async(conn)

            return self._bind(part, listing_async)

        def listing(*args: Any, **kwargs: Any) -> Any:
            return build(part, *args, **kwargs).listing(conn)

        return self._bind(part, listing)


def call(build: Callable[Concatenate[Any, P], Call[T]]) -> _CallMethod[P, T]:
    """A part's method that gives one result: `build` returns the Call to run."""
    return _CallMethod(build)


def stream(build: Callable[Concatenate[Any, P], Stream[T]]) -> _StreamMethod[P, T]:
    """A part's method that gives results one by one: `build` returns the Stream to iterate."""
    return _StreamMethod(build)


def listing(build: Callable[Concatenate[Any, P], Pages[T]]) -> _ListingMethod[P, T]:
    """A part's method that lists a paginated list, read again each time it is iterated:
    `build` returns its Pages."""
    return _ListingMethod(build)

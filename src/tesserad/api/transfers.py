"""Streamed transfer shared by Registry, Datasets and run artifacts: a header, then chunks.

Chunks go straight into a BlobWriter (a temp file being hashed), so an upload never holds
more than one chunk in memory; the writer is aborted, leaving nothing, when the stream
fails, ends early or is cancelled by the client. Once every chunk is in, the commit and the
registration run to their end whatever the client does. The stream's end counts only once
`client_stream` has told it from a cancel.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tesserad.errors import InvalidArgument, OutOfRange, TesseraError
from tesserad.store import BlobRef, BlobWriter, NotAsDeclared
from tesserad.tasks import off_the_loop

MAX_CHUNK_SIZE = 4 * 2**20
# Each chunk of a download is a message of its own: 1-byte chunks would have the daemon send a
# million messages per MiB. limits.chunk_size, the default, has the same floor.
MIN_CHUNK_SIZE = 4096

T = TypeVar("T")


async def client_stream(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    """`requests`, ending where the client ended its stream, or cancelled where it cancelled.

    grpc.aio ends the request stream of a call the client cancels as it ends one the client sent
    in full (its failed receive reads as the end) and cancels the handler's task only when the
    call's close comes through, often turns of the loop later: an upload cut short would be
    taken for a whole one, and stored where it declared no size. A batch started on the call
    after the end tells the two apart: sending the response's initial metadata goes through on
    a call the client finished, and on one it cancelled fails or is overtaken by the cancel.
    """
    async for request in requests:
        yield request
    try:
        await context.send_initial_metadata(())
    except grpc.aio.InternalError:
        raise asyncio.CancelledError("the client cancelled the call") from None


async def read_header(messages: AsyncIterator[Any]) -> Any:
    """The stream's first message, which must be a header."""
    try:
        first = await anext(messages)
    except StopAsyncIteration:
        raise InvalidArgument("the upload stream is empty: send a header message, then the chunks") from None
    if first.WhichOneof("part") != "header":
        raise InvalidArgument("the first message of an upload must be the header; send chunks after it")
    return first.header


@dataclass
class UploadStart:
    """The messages read after an upload's header by `read_start`.

    `messages` are as received, not yet checked; `error` is what reading the next one raised
    (e.g. an undecodable message), held back so that it reaches the caller after the header
    checks, where a plain streamed upload meets it; `complete` says the stream ended after them.
    """

    messages: list[Any]
    error: TesseraError | None
    complete: bool

    def in_hand(self) -> bytes | None:
        """The whole upload when the stream ended after chunks alone; else None (the stream is
        to be read as any, so that its errors come after the header checks)."""
        if not self.complete or self.error is not None:
            return None
        if any(message.WhichOneof("part") != "chunk" for message in self.messages):
            return None
        return b"".join(message.chunk for message in self.messages)

    async def replay(self, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The messages read, then the rest of the stream: the stream as if never read ahead."""
        for message in self.messages:
            yield message
        if self.error is not None:
            raise self.error
        async for message in rest:
            yield message


async def read_start(messages: AsyncIterator[Any], declared_size: int) -> UploadStart:
    """Read ahead after the header: the first message and, when it is a chunk holding the whole
    declared size, whether the stream ends there (a small upload, handled in one step).

    At most one chunk is held besides a message past the declared size, so a large upload
    still never holds more than about one chunk in memory.
    """
    start = UploadStart([], None, False)
    try:
        start.messages.append(await anext(messages))
        first = start.messages[0]
        if first.WhichOneof("part") == "chunk" and len(first.chunk) >= declared_size:
            start.messages.append(await anext(messages))
    except StopAsyncIteration:
        start.complete = True
    except TesseraError as exc:
        start.error = exc
    return start


def _chunk(message: Any) -> bytes:
    if message.WhichOneof("part") != "chunk":
        raise InvalidArgument("only the first message of an upload may be a header; the rest must be chunks")
    chunk: bytes = message.chunk
    return chunk


async def receive_chunks(
    messages: AsyncIterator[Any],
    writer: BlobWriter,
    expected_sha256: str | None,
    expected_size: int | None,
    register: Callable[[BlobRef], T],
    executor: Executor | None = None,
) -> T:
    """Write every chunk after the header (NotAsDeclared once they pass `expected_size`); then
    commit the blob (NotAsDeclared if size or sha256 differ) and `register` it, in one job on `executor`
    that runs to its end even when the call is cancelled meanwhile. The commit claims the blob
    and the registration ends the claim, success or not: a cancel between the two would keep
    the blob, held by nothing, until a restart."""
    received = 0
    async for message in messages:
        chunk = _chunk(message)
        received += len(chunk)
        if expected_size is not None and received > expected_size:
            # Refused now: the rest would only be written to disk to be refused at the end.
            raise NotAsDeclared(
                f"received more than the {expected_size} bytes the header declared; send the file "
                "the header describes, or declare its true size"
            )
        # Waited out when cancelled: the caller's abort must not run under a write in flight.
        await off_the_loop(functools.partial(writer.write, chunk))
    writer.hand_off()

    def commit_and_register() -> T:
        return register(writer.commit(expected_sha256, expected_size))

    job = asyncio.get_running_loop().run_in_executor(
        executor, contextvars.copy_context().run, commit_and_register
    )
    # A cancelled caller leaves the job's outcome unread; read it so asyncio does not log it.
    job.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(job)


def chunk_size(requested: int, default: int) -> int:
    """A download's bytes per chunk: `requested`, or `default` for 0."""
    if requested and not MIN_CHUNK_SIZE <= requested <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"chunk_size must be 0 (default {default}) or {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes, "
            f"got {requested}"
        )
    return requested or default


def download_offset(offset: int, size: int, what: str) -> int:
    """A download's `offset` into a file of `size` bytes (`what`: "mlp v1's artifact"):
    InvalidArgument when negative, OutOfRange past the end (at the end: nothing left to send)."""
    if offset < 0:
        raise InvalidArgument(f"offset must be >= 0 (0: from the file's start), got {offset}")
    if offset > size:
        raise OutOfRange(
            f"offset {offset} is past the end of {what} ({size} bytes); resume at most at {size}"
        )
    return offset


async def stream_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Pull a blocking chunk iterator (disk reads, hashing) from a worker thread, a chunk a step:
    the thread, shared by every call, outlives a cancelled one until its step ends. An empty chunk
    is a step with nothing to send (a download from an offset reads the bytes before it)."""
    done = object()
    while True:
        chunk = await asyncio.to_thread(next, chunks, done)
        if chunk is done:
            return
        if chunk:
            yield chunk  # type: ignore[misc]

"""A replica reads its primary's watch on a task of its own while the follower applies what was
read, in order: the error that ended the stream is raised only once the answers read before it
are applied; an apply that fails cancels the reading, and the next watch goes on from the last
change applied; a cancel while the reader waits on a full queue ends both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tessera import errors as sdk_errors
from tessera.v1 import registry_pb2 as pb
from tesserad.api import follow
from tesserad.api.follow import Follower
from tesserad.replica.link import PrimaryLink


def change(seq: int) -> pb.WatchChangesResponse:
    return pb.WatchChangesResponse(change=pb.RegistryChange(seq=seq, model="m"))


class Watch:
    """The primary's side of each watch: `streams[n]` makes the nth stream's answers from its
    request; notes each request, and whether each stream was closed."""

    def __init__(
        self, *streams: Callable[[pb.WatchChangesRequest], AsyncIterator[pb.WatchChangesResponse]]
    ) -> None:
        self._streams = list(streams)
        self.requests: list[pb.WatchChangesRequest] = []
        self.closed: list[bool] = []
        self.opened = asyncio.Event()

    def server_stream(
        self, service: str, method: str, request: Any, timeout: float | None
    ) -> AsyncIterator[Any]:
        self.requests.append(request)
        self.opened.set()
        return self._stream(len(self.requests) - 1, request)

    async def _stream(
        self, index: int, request: pb.WatchChangesRequest
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        self.closed.append(False)
        try:
            async for response in self._streams[index](request):
                yield response
        finally:
            self.closed[index] = True


class Applying(Follower):
    """The follower's reading and applying, the rest of it (the registry, serving) left out:
    `apply` is given each change read, in order."""

    def __init__(self, watch: Watch, apply: Callable[[int], Any]) -> None:
        self._watch = watch  # type: ignore[assignment]
        self._advertise = ""
        self._transport = pb.REPLICA_TRANSPORT_PLAINTEXT
        self._heartbeat_ms = 0
        self._link = PrimaryLink()
        self._followed = SimpleNamespace(seq=0)  # type: ignore[assignment]
        self._wake = asyncio.Event()
        self._connected = False
        self._failed = False
        self.primary = "primary:1"
        self._applying = apply

    def _received(self, response: pb.WatchChangesResponse) -> None:
        self._connected = True

    async def _apply(self, response: pb.WatchChangesResponse) -> None:
        await self._applying(response.change.seq)
        self._followed.seq = response.change.seq


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds: a bounded number of turns, not a time."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def forever() -> None:
    await asyncio.Event().wait()


def test_the_error_that_ended_the_stream_is_raised_after_the_changes_read_before_it() -> None:
    cut = False

    async def cut_after_three(request: pb.WatchChangesRequest) -> AsyncIterator[pb.WatchChangesResponse]:
        nonlocal cut
        for seq in (1, 2, 3):
            yield change(seq)
        cut = True
        raise sdk_errors.Unavailable("connection reset")

    applied: list[int] = []

    async def slowly(seq: int) -> None:
        await until(lambda: cut)  # the reader reaches the stream's end meanwhile
        applied.append(seq)

    async def main() -> None:
        with pytest.raises(sdk_errors.Unavailable, match="connection reset"):
            await Applying(Watch(cut_after_three), slowly)._follow(1)

    asyncio.run(main())
    assert applied == [1, 2, 3]


def test_an_apply_that_fails_cancels_the_reader_and_the_next_watch_goes_on_after_the_last_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(follow, "RECONNECT_FIRST_S", 0.0)

    async def live(request: pb.WatchChangesRequest) -> AsyncIterator[pb.WatchChangesResponse]:
        for seq in range(request.from_seq, request.from_seq + 3):
            yield change(seq)
        await forever()

    async def failing_on_2(seq: int) -> None:
        if seq == 2:
            raise RuntimeError("cannot apply change 2")

    async def main() -> Watch:
        watch = Watch(live, live)
        following = asyncio.create_task(Applying(watch, failing_on_2)._follow_forever())
        while len(watch.requests) < 2:
            watch.opened.clear()
            await watch.opened.wait()
        following.cancel()
        await asyncio.wait([following])
        return watch

    watch = asyncio.run(main())
    assert [request.from_seq for request in watch.requests] == [1, 2]
    assert watch.closed == [True, True]


def test_a_cancel_while_the_reader_waits_on_a_full_queue_ends_both() -> None:
    read = 0

    async def flood(request: pb.WatchChangesRequest) -> AsyncIterator[pb.WatchChangesResponse]:
        nonlocal read
        for seq in range(1, follow.PENDING_ANSWERS * 2):
            read = seq
            yield change(seq)

    applying = asyncio.Event()

    async def stuck(seq: int) -> None:
        applying.set()
        await forever()

    async def main() -> tuple[Watch, set[asyncio.Task[Any]]]:
        watch = Watch(flood)
        following = asyncio.create_task(Applying(watch, stuck)._follow(1))
        await applying.wait()
        # The reader waits to put one more than the queue holds past the one being applied.
        await until(lambda: read == follow.PENDING_ANSWERS + 2)
        following.cancel()
        await asyncio.wait([following])
        return watch, asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    watch, left = asyncio.run(main())
    assert watch.closed == [True] and not left

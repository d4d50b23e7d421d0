"""Work run off the event loop (an inference request's shared-memory reads and writes, an upload's
chunk writes): its caller ends only after it, however often the caller is cancelled meanwhile."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tesserad.tasks import off_the_loop


def test_a_call_cancelled_twice_ends_only_once_its_read_has_returned() -> None:
    """The caller's lease closes the regions the read uses when the call ends: a second cancel
    must not end it while the read goes on."""
    started, release = threading.Event(), threading.Event()
    returned: list[str] = []

    def read() -> str:
        started.set()
        release.wait(30)
        returned.append("read")
        return "read"

    async def cancel_twice_mid_read() -> None:
        reading = asyncio.create_task(off_the_loop(read))
        await asyncio.to_thread(started.wait, 30)
        try:
            for _ in range(2):
                reading.cancel()
                # Each yield lets the task take its cancel before the next comes.
                for _ in range(5):
                    await asyncio.sleep(0)
            assert not reading.done()
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert returned == ["read"]

    asyncio.run(cancel_twice_mid_read())


def test_a_call_not_cancelled_answers_the_read_s_result_or_error() -> None:
    def fail() -> None:
        raise OSError(5, "Input/output error")

    async def both() -> None:
        assert await off_the_loop(lambda: 7) == 7
        with pytest.raises(OSError, match="Input/output error"):
            await off_the_loop(fail)

    asyncio.run(both())

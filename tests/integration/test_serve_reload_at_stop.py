"""`tesserad serve` stopped while a SIGHUP reload is under way: the reload finishes (within the
grace period) before the daemon stops, instead of being cancelled halfway by asyncio.run."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tesserad.server import Daemon, serve
from tests.conftest import daemon_settings


class Recorder:
    """Daemon.start, reload and stop, recorded in order; a reload waits for `release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        self.started = asyncio.Event()
        self.reloading = asyncio.Event()
        self.release = asyncio.Event()
        start, reload, stop = Daemon.start, Daemon.reload, Daemon.stop

        async def started(daemon: Daemon) -> None:
            await start(daemon)
            self.started.set()

        async def reloaded(daemon: Daemon) -> None:
            self.events.append("reload started")
            self.reloading.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.events.append("reload cancelled")
                raise
            await reload(daemon)
            self.events.append("reload finished")

        async def stopped(daemon: Daemon, grace: float | None = None) -> None:
            self.events.append("stop")
            await stop(daemon, grace)

        monkeypatch.setattr(Daemon, "start", started)
        monkeypatch.setattr(Daemon, "reload", reloaded)
        monkeypatch.setattr(Daemon, "stop", stopped)


async def _sighup_then_sigterm(recorder: Recorder, served: asyncio.Task[Any]) -> None:
    await recorder.started.wait()
    os.kill(os.getpid(), signal.SIGHUP)
    await recorder.reloading.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(20):  # loop turns in which a stop would have begun
        await asyncio.sleep(0)
    # Not applied while stopping: nothing would wait for it.
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not served.done()


def test_a_reload_under_way_finishes_before_the_daemon_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = daemon_settings(tmp_path / "data", metrics_listen="off", http_listen="")

    async def main() -> None:
        recorder = Recorder(monkeypatch)
        served = asyncio.create_task(serve(settings, insecure=True))
        await _sighup_then_sigterm(recorder, served)
        assert recorder.events == ["reload started"]
        recorder.release.set()
        await served
        assert recorder.events == ["reload started", "reload finished", "stop"]

    asyncio.run(main())


def test_a_reload_that_outlasts_the_grace_period_is_abandoned_and_the_daemon_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = daemon_settings(tmp_path / "data", metrics_listen="off", http_listen="", grace_period_s=0.2)

    async def main() -> None:
        recorder = Recorder(monkeypatch)
        served = asyncio.create_task(serve(settings, insecure=True))
        await _sighup_then_sigterm(recorder, served)
        await served
        assert recorder.events == ["reload started", "reload cancelled", "stop"]

    asyncio.run(main())

"""Fixtures that run a real tesserad: in this process (fast) or as a subprocess (signals, exits)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tesserad.config import Settings, load_settings
from tesserad.server import Daemon, create_server

# CI runs on two busy cores: judge properties, not how fast examples are drawn.
hypothesis_settings.register_profile("tessera", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("tessera")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With TESSERA_REQUIRE_GPU set (bench/gpu_check.sh sets it), a CUDA test that skips fails:
    on the machine meant to run them, "no GPU" or "no CUDA provider" is the fault to report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("TESSERA_REQUIRE_GPU") and item.get_closest_marker("cuda"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped although TESSERA_REQUIRE_GPU is set: {reason}"


def daemon_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a daemon under test: free ports, a small map, a short grace period, and
    commits left to the OS to write (store.durability relaxed: a crash of the daemon loses
    nothing, only a power cut would): an fsync a commit was most of many tests' time. A test of
    how the store meets the disk passes "full", the product's default; `tesserad serve`
    subprocesses (the SIGKILL tests) keep that default."""
    values = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "store.map_size": "1GiB",
        "store.durability": "relaxed",
        "grace_period_s": 5,
    }
    values.update(overrides)
    return load_settings(env={}, overrides=values)


_LOOP_THREAD = "tesserad-test-loop"


@dataclass
class InProcessDaemon:
    """A real Daemon on its own event loop thread, reached over real gRPC on 127.0.0.1."""

    settings: Settings
    daemon: Daemon = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)
    _channels: list[grpc.Channel] = field(default_factory=list)
    _threads_before: set[threading.Thread] = field(default_factory=set)

    def start(self) -> InProcessDaemon:
        self._threads_before = set(threading.enumerate())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=_LOOP_THREAD, daemon=True)
        self._thread.start()
        self.daemon = create_server(self.settings)
        try:
            self.run(self.daemon.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the daemon's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.target)
        self._channels.append(channel)
        return channel

    def stop(self, grace: float | None = 0, outliving: tuple[str, ...] = ()) -> None:
        """`outliving`: name prefixes of threads the test means to outlive the stop (an export
        the grace period abandoned, which nothing can interrupt)."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        try:
            self.run(self.daemon.stop(grace))
            pending = self.run(_pending_tasks())
        finally:
            self._stop_loop()
        # What a stopped daemon leaves behind runs on (or is destroyed pending) after its test.
        assert not pending, f"tasks still pending after Daemon.stop(): {pending}"
        if any(t.name == _LOOP_THREAD for t in threading.enumerate()):
            return  # a thread does not say which daemon started it: the last one to stop checks
        # The daemon names its threads and its pools' threads; one named by default (a thread's
        # or an executor's) is the test's own. One on its way out (a gRPC channel's, say) gets a
        # moment to end.
        deadline = time.monotonic() + 5
        threads = [
            t
            for t in threading.enumerate()
            if t not in self._threads_before
            and not _serves_the_process(t)
            and not re.match(r"(Thread|ThreadPoolExecutor)-\d+", t.name)
        ]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in threads if t.is_alive() and not t.name.startswith(outliving)]
        assert not left, f"threads still running after Daemon.stop(): {left}"

    def _stop_loop(self) -> None:
        # As asyncio.run does when `tesserad serve` returns.
        asyncio.run_coroutine_threadsafe(self._loop.shutdown_default_executor(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def _serves_the_process(thread: threading.Thread) -> bool:
    """A library's named thread that starts at its first use and serves the whole process from
    then on, never one daemon: tqdm's monitor (torch.fx makes a progress bar, disabled, in an ONNX
    export, and never closes it). grpc.aio's poller is one too, named by default."""
    return thread.name == "tqdm_monitor"


async def _pending_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def daemon(data_dir: Path) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(daemon_settings(data_dir)).start()
    yield running
    running.stop()


@pytest.fixture
def channel(daemon: InProcessDaemon) -> grpc.Channel:
    return daemon.channel()


class DaemonProcess:
    """`tesserad serve` as a child process with JSON logs, for signal and exit-code tests.

    The dashboard is off unless a test turns it on (--http-listen or its environment variable):
    its default port would make parallel daemons collide. The process leads a process group of
    its own, which `close` ends whole. It inherits no TESSERA_* variable, only those `env`
    gives: the test runner's own (TESSERA_TRITONCLIENT_PYTHON, set by `make test`) would be
    warned of as unknown settings, and a developer's settings would change what is tested.
    `launcher` is a command the daemon runs under (setpriv, to run it as another user).
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], object] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.args = [*launcher, sys.executable, "-m", "tesserad", "serve", "--log-format", "json", *args]
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            preexec_fn=preexec_fn,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **{name: value for name, value in os.environ.items() if not name.startswith("TESSERA_")},
                "TESSERA_HTTP_LISTEN": "off",
                **(env or {}),
            },
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put("")

    def wait_for_log(self, message: str, timeout: float = 60) -> dict[str, Any]:
        """The first JSON log entry whose msg is `message`; fails with the whole log if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line == "":
                break
            self.log.append(line)
            try:
                entry: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("msg") == message:
                return entry
        raise AssertionError(f"no log entry {message!r}; log so far:\n{''.join(self.log)}")

    def wait_serving(self) -> str:
        address: str = self.wait_for_log("tesserad serving")["address"]
        return address

    def output(self, timeout: float = 30) -> str:
        """Everything the process wrote to stderr, once it has exited."""
        self.process.wait(timeout)
        while True:
            line = self.lines.get(timeout=timeout)
            if line == "":
                return "".join(self.log)
            self.log.append(line)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Kill the process and what it started (its process group), and close its stderr once
        the pump has read it all (closed under a blocked read, it would wait for that read). A
        fork server or worker that a SIGKILLed daemon left behind holds that stderr open until
        it notices, which can take it many seconds (a fork server first imports torch)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.kill()
        self._pump_thread.join(30)
        if not self._pump_thread.is_alive():
            assert self.process.stderr is not None
            self.process.stderr.close()


def as_nobody() -> list[str]:
    """The launcher running a command (the daemon) as uid and gid 65534 ("nobody") where this
    test runs as root, whom no directory's mode refuses; none otherwise (the mode refuses this
    user)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip(
            "running as root, and setpriv (util-linux), to run the daemon as another user, is missing"
        )
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def spawn_daemon() -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def spawn(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], object] | None = None,
        launcher: Sequence[str] = (),
    ) -> DaemonProcess:
        process = DaemonProcess(list(args), env, cwd, preexec_fn, launcher)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.close()

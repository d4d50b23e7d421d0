"""`tesserad serve` as a child process for the benches: JSON logs, free port, no metrics port."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil


def start_daemon(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """The started process and the address it serves on, once its log says it is serving."""
    process, serving = start_daemon_logged(data_dir, *extra)
    return process, serving["address"]


def start_daemon_logged(
    data_dir: Path, *extra: str, on_log: Callable[[dict[str, Any]], None] | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The started process and its "tesserad serving" log entry (address, dashboard, ...);
    `on_log` gets each later log entry, in a thread of its own.

    `extra` flags come after the defaults, so they win (e.g. `--http-listen 127.0.0.1:0`)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tesserad",
            "serve",
            "--log-format",
            "json",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--http-listen",
            "off",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    stderr = process.stderr
    assert stderr is not None
    for line in stderr:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "tesserad serving":
            # Keep draining the log so the daemon never blocks on a full pipe.
            drain = stderr.read if on_log is None else lambda: _follow_log(stderr, on_log)
            threading.Thread(target=drain, daemon=True).start()
            return process, entry
    raise RuntimeError("tesserad did not start")


def _follow_log(stderr: IO[str], on_log: Callable[[dict[str, Any]], None]) -> None:
    for line in stderr:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        on_log(entry)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and everything under it, ended (reaped) children included."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total

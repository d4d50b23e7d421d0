"""A one-node Ray cluster for the benches, started with `ray start --head` in a process group of
its own: the group is the handle that stops exactly this cluster (`ray stop` would stop every
Ray on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def start_ray(temp: Path, cpus: int = 1) -> tuple[str, int]:
    """(the cluster's address, its process group). `temp` must be short: Ray's socket paths
    under it must fit in 107 bytes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.wait(120) == 0
    return f"127.0.0.1:{port}", process.pid


def stop_ray(group: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        time.sleep(3)

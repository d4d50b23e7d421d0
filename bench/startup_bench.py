"""`tesserad serve`'s start and stop: wall and CPU time from spawn to SERVING to its exit on SIGTERM.

Each repeat starts the daemon on a fresh temporary data directory, gRPC on a free port of
127.0.0.1 (the dashboard and the metrics port off), and asks gRPC health's whole-server status
("") every 10 ms until it answers SERVING (on a channel that tries to connect again within
10 ms: gRPC's default reconnect backoff, 1 s and then 1.6 s after a refused connection, would
add its own wait to the figure); then it sends SIGTERM and reaps the daemon with
os.wait4, whose resource usage is the daemon's CPU time (user + system, with its own reaped
children's) over its whole life. The CPU time to SERVING is read from /proc as it is reached.

Beside it, rows for what the daemon no longer pays at start: `python -c "import torch"` (the
daemon imported torch at every start until tesserad.nn loaded its torch parts on first use),
`python -c "import numpy"` (torch imports numpy, but so does the daemon still: that part of the
torch import is no saving) and `python -c "pass"`, the interpreter's own start, all reaped with
os.wait4. The medians of each row are given, and the saving (torch's import less numpy's) with
its share of a start that still paid it (serve's CPU plus the saving).

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/startup_bench.py \\
        [--repeats 5] [--label after] [--out startup.json] [--before OLD.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from statistics import median
from typing import Any

import grpc
import psutil
import results_file
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The longest a start or a stop may take before the bench gives up on it.
LIMIT_S = 120.0
POLL_S = 0.01
# Reconnect at once after a refused connection, so that the poll sees SERVING within POLL_S of it.
RECONNECT_MS = 10
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS),
    ("grpc.min_reconnect_backoff_ms", RECONNECT_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_MS),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reap(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for `process` to end: (its exit code, its CPU seconds, reaped children's included)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def serving(address: str, deadline: float) -> None:
    """Return once gRPC health at `address` says the whole server is SERVING."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                # types-grpcio-health-checking declares HealthStub without its Check method.
                answer = health.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(POLL_S)
    raise RuntimeError(f"tesserad at {address} was not SERVING within {LIMIT_S:g} s")


def serve_once() -> dict[str, Any]:
    """One start and stop of `tesserad serve`: its wall and CPU times."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="tessera-startup-") as data_dir:
        start = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tesserad",
                "serve",
                "--data-dir",
                data_dir,
                "--listen",
                address,
                "--metrics-listen",
                "off",
                "--http-listen",
                "off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            serving(address, time.monotonic() + LIMIT_S)
        except BaseException:
            process.kill()
            reap(process)
            raise
        ready = time.perf_counter()
        times = psutil.Process(process.pid).cpu_times()
        cpu_to_serving = times.user + times.system + times.children_user + times.children_system
        process.send_signal(signal.SIGTERM)
        code, cpu = reap(process)
        end = time.perf_counter()
    if code != 0:
        raise RuntimeError(f"tesserad exited {code} on SIGTERM, not 0")
    return {
        "spawn_to_serving_s": round(ready - start, 4),
        "sigterm_to_exit_s": round(end - ready, 4),
        "wall_s": round(end - start, 4),
        "cpu_to_serving_s": round(cpu_to_serving, 3),
        "cpu_s": round(cpu, 3),
    }


def python_once(code: str) -> dict[str, Any]:
    """One `python -c CODE` in this interpreter: its wall and CPU times."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code])
    exit_code, cpu = reap(process)
    end = time.perf_counter()
    if exit_code != 0:
        raise RuntimeError(f"python -c {code!r} exited {exit_code}")
    return {"wall_s": round(end - start, 4), "cpu_s": round(cpu, 3)}


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: round(median(run[key] for run in runs), 4) for key in runs[0]}


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of each row's medians."""
    old = {row["row"]: row["median"] for row in before["results"]}
    out = []
    for row in after["results"]:
        earlier = old.get(row["row"])
        if earlier is None:
            continue
        out.append(
            {
                "row": row["row"],
                **{key: round(earlier[key] / max(value, 1e-9), 2) for key, value in row["median"].items()},
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    load_before = os.getloadavg()

    rows: dict[str, list[dict[str, Any]]] = {
        "tesserad serve": [],
        'python -c "import torch"': [],
        'python -c "import numpy"': [],
        'python -c "pass"': [],
    }
    # Interleaved, so that a change in the machine's load falls on every row alike.
    for repeat in range(args.repeats):
        rows["tesserad serve"].append(serve_once())
        rows['python -c "import torch"'].append(python_once("import torch"))
        rows['python -c "import numpy"'].append(python_once("import numpy"))
        rows['python -c "pass"'].append(python_once("pass"))
        print(f"repeat {repeat + 1}/{args.repeats}: {rows['tesserad serve'][-1]}", flush=True)

    serve, torch, numpy, _ = (medians(runs) for runs in rows.values())
    results: list[dict[str, Any]] = [
        {"row": row, "median": medians(runs), "runs": runs} for row, runs in rows.items()
    ]
    # The daemon imports numpy at start still: torch's import saves only what it adds to numpy's.
    torch_cpu = torch["cpu_s"] - numpy["cpu_s"]
    torch_wall = torch["wall_s"] - numpy["wall_s"]
    results.append(
        {
            "row": "torch import beyond numpy's: its share of a start that paid it",
            "median": {
                "cpu_s_saved": round(torch_cpu, 3),
                "wall_s_saved": round(torch_wall, 4),
                "cpu_share": round(torch_cpu / (serve["cpu_to_serving_s"] + torch_cpu), 3),
                "wall_share": round(torch_wall / (serve["spawn_to_serving_s"] + torch_wall), 3),
            },
            "runs": [],
        }
    )
    for result in results:
        print(result["row"], result["median"])
    results_file.finish("startup_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()

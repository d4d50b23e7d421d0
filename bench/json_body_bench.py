"""Health probes and small requests while clients send large JSON inference bodies over the Open
Inference Protocol's HTTP port: JSON parsed in a parser process (serving.oip_http_json_processes
= 1) against on the event loop (0), two daemons side by side in one run, in turns.

Each repeat runs K clients looping a large JSON infer against one daemon for --seconds while a
probe alternates GET /v2/health/ready and a small JSON infer; the result has the probes' p50 and
p99 per daemon, the medians of the per-repeat ratios (inline / process), and the daemon's CPU
(its parser process included) per large request. --handoff first times, in this process, a
body's parse inline against its round trip through a parser process, per size: where the
hand-off starts to pay (serving.oip_http_json_process_min_size).

    python bench/json_body_bench.py --large-mib 8 --clients 2 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from daemon_process import start_daemon_logged, tree_cpu_s
from onnx import TensorProto, helper, numpy_helper

from tessera import Client
from tesserad.api.oip_json_tensors import parsed_request
from tesserad.api.oip_parsers import JsonParsers

RESULTS = Path(__file__).parent / "results"
COLUMNS = 256


def model_file(directory: Path) -> Path:
    """y = x @ w: x float32 (N, COLUMNS) -> y float32 (N, 1); a large input, a small answer."""
    w = numpy_helper.from_array(np.ones((COLUMNS, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", COLUMNS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = directory / "wide.onnx"
    onnx.save(model, path)
    return path


def body_of(rows: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal((rows, COLUMNS)).astype(np.float32)
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [rows, COLUMNS], "data": x.ravel().tolist()}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()


def rows_for(size: int) -> int:
    per_row = len(body_of(4)) / 4
    return max(1, int(size / per_row))


class Http:
    """One kept-alive connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        self.connection.request(method, path, body=body)
        response = self.connection.getresponse()
        response.read()
        return response.status


def start(directory: Path, processes: int, model: Path) -> tuple[Any, int]:
    os.environ["TESSERA_SERVING_OIP_HTTP_JSON_PROCESSES"] = str(processes)
    os.environ["TESSERA_SERVING_MAX_BATCH_SIZE"] = "65536"
    process, serving = start_daemon_logged(directory, "--oip-http-listen", "127.0.0.1:0")
    port = int(serving["oip_http"].rsplit(":", 1)[1])
    with Client(serving["address"]) as client:
        client.models.push("wide", model)
    return process, port


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def one_run(
    process: Any, port: int, large: bytes, small: bytes, clients: int, seconds: float
) -> dict[str, Any]:
    stop = threading.Event()
    counts = [0] * clients
    statuses: dict[int, int] = {}

    def loop(index: int) -> None:
        http_ = Http(port)
        while not stop.is_set():
            status = http_.request("POST", "/v2/models/wide/infer", large)
            statuses[status] = statuses.get(status, 0) + 1
            counts[index] += 1

    cpu_before = tree_cpu_s(process.pid)
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    probe = Http(port)
    health: list[float] = []
    small_ms: list[float] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        began = time.perf_counter()
        assert probe.request("GET", "/v2/health/ready") == 200
        health.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        assert probe.request("POST", "/v2/models/wide/infer", small) == 200
        small_ms.append((time.perf_counter() - began) * 1000)
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    cpu = tree_cpu_s(process.pid) - cpu_before
    large_done = sum(counts)
    return {
        "health_p50_ms": percentile(health, 50),
        "health_p99_ms": percentile(health, 99),
        "health_max_ms": max(health),
        "small_p50_ms": percentile(small_ms, 50),
        "small_p99_ms": percentile(small_ms, 99),
        "probes": len(health),
        "large_requests": large_done,
        "large_statuses": statuses,
        "cpu_s_per_large_request": cpu / large_done if large_done else float("nan"),
    }


async def handoff(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    parsers = JsonParsers(1, 1 << 30, 60.0)
    rows: list[dict[str, Any]] = []
    try:
        await parsers.parse(body_of(1), True, 0)  # started
        for size in sizes:
            body = body_of(rows_for(size))
            inline, round_trip, parent_cpu = [], [], []
            for _ in range(repeats):
                began = time.perf_counter()
                parsed_request(body, True)
                inline.append(time.perf_counter() - began)
                began, cpu = time.perf_counter(), time.process_time()
                await parsers.parse(body, True, len(body))
                round_trip.append(time.perf_counter() - began)
                parent_cpu.append(time.process_time() - cpu)
            rows.append(
                {
                    "body_bytes": len(body),
                    "inline_parse_ms": statistics.median(inline) * 1000,
                    "process_round_trip_ms": statistics.median(round_trip) * 1000,
                    "process_daemon_cpu_ms": statistics.median(parent_cpu) * 1000,
                }
            )
    finally:
        await parsers.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large-mib", type=float, default=8.0, help="size of each large JSON body")
    parser.add_argument("--clients", type=int, default=2, help="clients looping large bodies (K)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per daemon per repeat")
    parser.add_argument("--handoff", action="store_true", help="also time inline parse vs hand-off per size")
    parser.add_argument("--out", default="json_body_bench.json", help="file under bench/results/")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "bench": "json_body_bench",
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if args.handoff:
        sizes = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
        result["handoff"] = asyncio.run(handoff(sizes, 5))
        print(json.dumps(result["handoff"], indent=1))
    large = body_of(rows_for(int(args.large_mib * 2**20)))
    small = body_of(1, seed=1)
    result["large_body_bytes"] = len(large)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        model = model_file(directory)
        daemons = {}
        for label, processes in (("process", 1), ("inline", 0)):
            (directory / label).mkdir()
            daemons[label] = start(directory / label, processes, model)
        try:
            for label, (_, port) in daemons.items():
                # The model loaded, the parser process started.
                assert Http(port).request("POST", "/v2/models/wide/infer", large) == 200, label
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in daemons}
            for repeat in range(args.repeats):
                order = list(daemons) if repeat % 2 == 0 else list(reversed(daemons))
                for label in order:
                    process, port = daemons[label]
                    runs[label].append(one_run(process, port, large, small, args.clients, args.seconds))
                    print(label, json.dumps(runs[label][-1]))
        finally:
            for process, _ in daemons.values():
                process.terminate()
                process.wait(30)
    result["runs"] = runs
    keys = ["health_p50_ms", "health_p99_ms", "small_p50_ms", "small_p99_ms", "cpu_s_per_large_request"]
    result["median"] = {
        label: {key: statistics.median(run[key] for run in label_runs) for key in keys}
        for label, label_runs in runs.items()
    }
    result["median_ratio_inline_over_process"] = {
        key: statistics.median(i[key] / p[key] for i, p in zip(runs["inline"], runs["process"], strict=True))
        for key in keys
    }
    result["load_before_after"] = [load_before, os.getloadavg()]
    print(
        json.dumps(
            {"median": result["median"], "ratios": result["median_ratio_inline_over_process"]}, indent=1
        )
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""How long large JSON inference requests on the OIP HTTP listener hold up the daemon's other calls:
the delay of gRPC's ServerLive and of HTTP's GET /v2/health/live, each probed every 20 ms, while 1
and then 4 JSON bodies of some 50 MiB are sent at once (to a model the daemon does not hold: the
body is parsed and decoded whole before the model is looked up, as for the 11,000-row body an
operator saw refused past max_batch_size).

Each mode runs its own `tesserad serve`: `threaded` as the daemon is; `inline` with
tesserad.api.oip_http.JSON_OFF_LOOP_SIZE raised past any body, so that every body is parsed on the
event loop, as before bodies were parsed in a thread. First, in this process, how long a body's
parse and decode take by its size (where JSON_OFF_LOOP_SIZE was chosen).

    .venv/bin/python bench/oip_json_stall_bench.py --out oip_json_stall_bench.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from results_file import RESULTS

from tesserad.api.oip_json import infer_request, split_body
from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.serving.shared_memory import SharedMemory

_PROBE_EVERY_S = 0.02
_START = """
import sys
import tesserad.api.oip_http
if sys.argv.pop(1) == "inline":
    tesserad.api.oip_http.JSON_OFF_LOOP_SIZE = 1 << 62
from tesserad.cli import main
sys.exit(main())
"""


def _body(mib: float) -> bytes:
    """An FP32 input of 11,000 rows as JSON numbers, about `mib` MiB."""
    columns = max(1, int(mib * 2**20 / 11_000 / 11))
    values = np.round(np.random.default_rng(0).standard_normal(11_000 * columns), 6).tolist()
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [11_000, columns], "data": values}]}
    return json.dumps(document).encode()


def _parse_ms_by_size() -> list[dict[str, Any]]:
    """How long a body's parse and decode take on the event loop, by its size (the fastest of
    20): where JSON_OFF_LOOP_SIZE was chosen, at some 1 to 2 ms."""
    lease = SharedMemory(1).lease()
    rows = []
    for count in (1_024, 2_048, 4_096, 8_192, 16_384, 65_536):
        values = np.random.default_rng(0).standard_normal(count).astype(np.float32).tolist()
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [count // 64, 64], "data": values}]}
        ).encode()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            infer_request(*split_body(body, None), lease)
            times.append(time.perf_counter() - started)
        rows.append(
            {"body_kib": round(len(body) / 1024, 1), "parse_and_decode_ms": round(min(times) * 1e3, 3)}
        )
    return rows


def _start(mode: str, data_dir: Path) -> tuple[subprocess.Popen[str], str, int]:
    """The daemon, its gRPC address and its OIP HTTP port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _START,
            mode,
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
            "--oip-http-listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "tesserad serving":
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, entry["address"], int(entry["oip_http"].rsplit(":", 1)[1])
    raise RuntimeError("tesserad did not start")


def _infer(port: int, body: bytes, answers: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v2/models/absent/infer", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    answers.append(response.status)
    connection.close()


def _probe(call: Any, stop: threading.Event, delays: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        call()
        delays.append(time.perf_counter() - started)
        time.sleep(_PROBE_EVERY_S)


def _summary(delays: list[float]) -> dict[str, Any]:
    return {
        "probes": len(delays),
        "p50_ms": round(statistics.median(delays) * 1e3, 2),
        "max_ms": round(max(delays) * 1e3, 2),
    }


def _measure(mode: str, body: bytes, concurrency: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as data_dir:
        process, address, port = _start(mode, Path(data_dir))
        channel = grpc.insecure_channel(address)
        try:
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = grpc_service_pb2.ServerLiveRequest()
            live = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

            def http_live() -> None:
                live.request("GET", "/v2/health/live")
                response = live.getresponse()
                response.read()
                assert response.status == 200

            def grpc_live() -> None:
                assert oip.ServerLive(request, timeout=600).live

            grpc_live()
            http_live()
            for senders in concurrency:
                stop = threading.Event()
                grpc_delays: list[float] = []
                http_delays: list[float] = []
                probes = [
                    threading.Thread(target=_probe, args=(grpc_live, stop, grpc_delays)),
                    threading.Thread(target=_probe, args=(http_live, stop, http_delays)),
                ]
                for probe in probes:
                    probe.start()
                time.sleep(0.5)
                answers: list[int] = []
                started = time.perf_counter()
                infers = [threading.Thread(target=_infer, args=(port, body, answers)) for _ in range(senders)]
                for infer in infers:
                    infer.start()
                for infer in infers:
                    infer.join()
                elapsed = time.perf_counter() - started
                stop.set()
                for probe in probes:
                    probe.join()
                assert answers == [404] * senders, answers
                rows.append(
                    {
                        "mode": mode,
                        "concurrent_infers": senders,
                        "infers_s": round(elapsed, 2),
                        "grpc_server_live": _summary(grpc_delays),
                        "http_health_live": _summary(http_delays),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            live.close()
        finally:
            channel.close()
            process.terminate()
            process.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=50.0, help="size of each JSON body (MiB)")
    parser.add_argument("--modes", default="inline,threaded", help="inline, threaded or both")
    parser.add_argument("--concurrency", default="1,4", help="infers sent at once, per round")
    parser.add_argument("--out", default="", help="write the result to bench/results/OUT (a new file)")
    args = parser.parse_args()
    path = RESULTS / args.out if args.out else None
    if path is not None and path.exists():
        parser.error(f"{path} exists; results files are never overwritten, pick another --out name")
    body = _body(args.mib)
    load = os.getloadavg()
    by_size = _parse_ms_by_size()
    print(json.dumps(by_size), flush=True)
    results = [
        row
        for mode in args.modes.split(",")
        for row in _measure(mode, body, [int(n) for n in args.concurrency.split(",")])
    ]
    out = {
        "bench": "oip_json_stall_bench",
        "body_mib": round(len(body) / 2**20, 1),
        "probe_every_ms": _PROBE_EVERY_S * 1e3,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load, "end": os.getloadavg()},
        "parse_on_the_loop": by_size,
        "results": results,
    }
    if path is not None:
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

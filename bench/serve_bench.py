"""Serving benchmark: tesserad (batching off / on) against a bare grpc.aio echo server and
in-process onnxruntime, for a tiny MLP and the exported cnn4d classifier, in one run.

Closed loop: client processes each keep `concurrency / processes` blocking Predict calls in
flight; one row per request. Writes bench/results/serve_bench.json and prints a table.

    .venv/bin/python bench/serve_bench.py [--seconds 3] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.config import load_settings
from tesserad.serving.pool import ModelPool, ServingConfig, servable_file
from tesserad.serving.service import DeploymentPlan, InferenceService

RESULTS = Path(__file__).parent / "results" / "serve_bench.json"


# -- models ---------------------------------------------------------------------------------


def export_models(directory: Path) -> dict[str, Path]:
    from tesserad.nn.architectures import build_model
    from tesserad.nn.onnx_export import export_onnx
    from tesserad.nn.specs import Cnn4dSpec, MlpSpec

    specs = {
        "tiny_mlp": MlpSpec(input_shape=(16,), output_size=4, hidden_sizes=(32,)),
        "cnn4d": Cnn4dSpec(input_shape=(1, 4, 4, 8, 8), output_size=3, channels=(4, 8)),
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = directory / f"{name}.onnx"
        export_onnx(build_model(spec).eval(), spec, paths[name])
    return paths


class FileSource:
    """Serves exported files as version 1 of each model (the registry is not what is measured)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths

    def servable(self, model: str, version: int | None, alias: str | None):  # type: ignore[no-untyped-def]
        return servable_file(model, 1, "onnx", self._paths[model.rsplit("-", 1)[0]])

    def deployment(self, model: str) -> DeploymentPlan | None:
        return None

    def model_names(self) -> list[str]:
        return sorted(self._paths)


# -- servers --------------------------------------------------------------------------------


class EchoServicer(inference_pb2_grpc.InferenceServicer):
    """The floor: a grpc.aio server that answers Predict with its input, doing nothing else."""

    async def Predict(self, request, context):  # type: ignore[no-untyped-def]
        return inference_pb2.PredictResponse(request_id=request.request_id, outputs=request.inputs)


def start_echo() -> tuple[int, threading.Thread]:
    ready: list[int] = []
    started = threading.Event()

    async def run() -> None:
        server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServicer_to_server(EchoServicer(), server)
        ready.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        started.set()
        await server.wait_for_termination()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    started.wait(10)
    return ready[0], thread


# -- load generator -------------------------------------------------------------------------


def client_process(
    target: str, model: str, shape: list[int], threads: int, seconds: float, out: mp.Queue
) -> None:
    channel = grpc.insecure_channel(target)
    stub = inference_pb2_grpc.InferenceStub(channel)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=model),
        inputs=[
            common_pb2.Tensor(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=shape, data=x.tobytes())
        ],
    )
    for _ in range(20):  # warm the channel and the server
        stub.Predict(request)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = time.perf_counter() + 0.2
    end = start + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                stub.Predict(request)
                latencies[i].append(time.perf_counter() - t0)
            except grpc.RpcError:
                errors[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(([v for lat in latencies for v in lat], sum(errors)))


def measure(target: str, model: str, shape: list[int], concurrency: int, seconds: float) -> dict:
    processes = min(concurrency, 4)
    out: mp.Queue = mp.get_context("spawn").Queue()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=client_process, args=(target, model, shape, concurrency // processes, seconds, out)
        )
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        lat, err = out.get(timeout=seconds + 120)
        latencies += lat
        errors += err
    for p in procs:
        p.join()
    q = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [0, 0, 0]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / seconds,
        "p50_ms": float(q[0]),
        "p95_ms": float(q[1]),
        "p99_ms": float(q[2]),
    }


def in_process_rows_per_s(path: Path, shape: list[int], batch: int, seconds: float = 1.5) -> float:
    """onnxruntime's own throughput (rows/s) at one batch size, with the daemon's session options."""
    from tesserad.serving.runtimes import OnnxRuntime

    runtime = OnnxRuntime(path, "cpu", 0)
    x = {"input": np.random.default_rng(0).standard_normal([batch, *shape[1:]]).astype(np.float32)}
    for _ in range(5):
        runtime.run(x, ["output"])
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        runtime.run(x, ["output"])
        runs += 1
    return runs * batch / (time.perf_counter() - start)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import InProcessDaemon

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    paths = export_models(work)
    shapes = {"tiny_mlp": [1, 16], "cnn4d": [1, 1, 4, 4, 8, 8]}
    settings = load_settings(
        env={}, overrides={"listen": "127.0.0.1:0", "metrics_listen": "off", "data_dir": str(work / "data")}
    )
    daemon = InProcessDaemon(settings).start()
    # Serve exported files directly: this measures serving, not the registry.
    service: InferenceService = daemon.daemon.inference
    file_service = InferenceService(FileSource(paths), ModelPool(service.pool.defaults, None), autoload=False)
    daemon.daemon.inference = file_service
    for servicer_service in _servicers_of(daemon):
        servicer_service._service = file_service
    for model in paths:
        file_service.pool.load(
            servable_file(f"{model}-off", 1, "onnx", paths[model]), ServingConfig(max_batch_size=1)
        )
        file_service.pool.load(
            servable_file(f"{model}-on", 1, "onnx", paths[model]), ServingConfig(max_batch_size=32)
        )
    echo_port, _ = start_echo()

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds_per_cell": args.seconds,
        "models": {},
    }
    for model, shape in shapes.items():
        rows: dict = {"echo": [], "batching_off": [], "batching_on": []}
        for concurrency in args.concurrency:
            echo = measure(f"127.0.0.1:{echo_port}", model, shape, concurrency, args.seconds)
            rows["echo"].append(echo)
            print(f"{model:9s} {'echo':13s} c={concurrency:<3d} {echo['throughput_rps']:8.0f} req/s  "
                  f"p50 {echo['p50_ms']:.3f} ms  p99 {echo['p99_ms']:.3f} ms", flush=True)  # fmt: skip
            for mode, suffix in (("batching_off", "off"), ("batching_on", "on")):
                name = f"{model}-{suffix}"
                file_service.pool.get(name, 1).stats.snapshot(reset=True)
                cell = measure(daemon.target, name, shape, concurrency, args.seconds)
                snap = file_service.pool.get(name, 1).stats.snapshot()
                batches = sum(n for n, _ in snap.batches.values())
                cell["mean_batch_rows"] = snap.row_count / batches if batches else 0.0
                rows[mode].append(cell)
                print(f"{model:9s} {mode:13s} c={concurrency:<3d} {cell['throughput_rps']:8.0f} req/s  "
                      f"p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms  batch {cell['mean_batch_rows']:.1f}", flush=True)  # fmt: skip
        ratios = []
        for echo, off, on in zip(rows["echo"], rows["batching_off"], rows["batching_on"], strict=True):
            batch = max(1, round(on["mean_batch_rows"]))
            in_process = in_process_rows_per_s(paths[model], shape, batch)
            ratios.append(
                {
                    "concurrency": echo["concurrency"],
                    "p50_off_vs_echo": off["p50_ms"] / echo["p50_ms"],
                    "p50_on_vs_echo": on["p50_ms"] / echo["p50_ms"],
                    "throughput_on_vs_off": on["throughput_rps"] / off["throughput_rps"],
                    "in_process_rows_per_s_at_formed_batch": in_process,
                    "formed_batch": batch,
                    "served_on_vs_in_process": on["throughput_rps"] / in_process,
                }
            )
        results["models"][model] = {"cells": rows, "ratios": ratios}
        for r in ratios:
            print(f"{model:9s} c={r['concurrency']:<3d} p50 off/echo {r['p50_off_vs_echo']:.2f}  on/echo {r['p50_on_vs_echo']:.2f}  "
                  f"thr on/off {r['throughput_on_vs_off']:.2f}  served/in-process(batch {r['formed_batch']}) "
                  f"{r['served_on_vs_in_process']:.2f}", flush=True)  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    daemon.stop()


def _servicers_of(daemon) -> list:  # type: ignore[no-untyped-def]
    """The daemon's Inference servicer instances, found through the gRPC server's handlers."""
    import gc

    from tesserad.api.inference import InferenceServicer
    from tesserad.api.oip import OipServicer

    return [o for o in gc.get_objects() if isinstance(o, InferenceServicer | OipServicer)]


if __name__ == "__main__":
    main()

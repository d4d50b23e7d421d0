"""Serving benchmark: tesserad (batching off / on) against a bare grpc.aio echo server and
in-process onnxruntime, for a tiny MLP and the exported cnn4d classifier, in one run.

Closed loop: two client processes (one at concurrency 1) each keep `concurrency / processes`
Predict calls in flight on an asyncio loop, all starting together; one row per request. Every
cell runs `--repeats` times, interleaved (echo, off, on at each concurrency, in an order that
rotates each repeat), and reports the median of each figure: the machine is shared. Ratios are
given both as ratios of those medians and as the median of per-repeat ratios (`paired_by_repeat`):
cells of one repeat run back to back, so a slow spell of the machine moves both sides.

The in-process baseline for batching on is measured at exactly the batch sizes the batcher
formed (its GetStats batch-size histogram): rows served / the time onnxruntime alone takes to run
that many batches of each size. Beside it, onnxruntime's wall and CPU time per row by batch size
(`in_process_cost_by_batch`): on a CPU, batching can save work per row or only spread a batch
over more cores. `--auth-share` adds tiny-model cells at concurrency 1 on a second
daemon whose auth interceptor is a pass-through, to measure that interceptor's cost (no tokens).
Writes bench/results/serve_bench.json and prints a table.

`--instances N` serves both modes with N model instances (default: the daemon's, 2 on a CPU);
the in-process baseline is always one session with onnxruntime's default threads.

    .venv/bin/python bench/serve_bench.py [--seconds 3] [--repeats 5] [--concurrency 1 8 32]
        [--models tiny_mlp cnn4d] [--instances N] [--auth-share] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc
import numpy as np
from daemon_process import start_daemon
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tessera
from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.config import load_settings
from tesserad.serving.pool import ModelPool, ServingConfig, servable_file
from tesserad.serving.service import DeploymentPlan, InferenceService

RESULTS = Path(__file__).parent / "results" / "serve_bench.json"
REPLICA_RESULTS = Path(__file__).parent / "results" / "replica_bench.json"
# Calls spread over every address of an `ipv4:a,b` target (--replicas); one address: as before.
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


# -- models ---------------------------------------------------------------------------------


def model_specs() -> dict:  # type: ignore[type-arg]
    from tesserad.nn.specs import Cnn4dSpec, MlpSpec

    return {
        "tiny_mlp": MlpSpec(input_shape=(16,), output_size=4, hidden_sizes=(32,)),
        # A classifier of the size users train on spacetime clips: 1 channel, T=8, 16^3 voxels,
        # two Conv4d blocks (8 and 16 channels) with pooling, then the head. Its compute
        # (milliseconds a row on 2 CPU cores) outweighs the per-request gRPC cost, as real models do.
        "cnn4d": Cnn4dSpec(input_shape=(1, 8, 16, 16, 16), output_size=3, channels=(8, 16)),
    }


def export_models(directory: Path, names: list[str]) -> dict[str, Path]:
    from tesserad.nn.architectures import build_model
    from tesserad.nn.onnx_export import export_onnx

    paths = {}
    for name, spec in model_specs().items():
        if name in names:
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
    target: str,
    model: str,
    shape: list[int],
    in_flight: int,
    seconds: float,
    ready: Event,
    go: Event,
    out: mp.Queue,
) -> None:
    """`in_flight` closed-loop callers on one asyncio loop, sending one request serialised once.

    An asyncio client costs about half the CPU per call of blocking calls from threads (GIL
    hand-offs), and that CPU is taken from the server on this shared machine; a lone caller
    makes blocking calls, which have the lowest latency. The request is serialised once, as a
    load generator should. Measurement starts on `go`, once every client process has started
    and warmed up: a process still importing would otherwise take CPU from the server during
    the others' measurement.
    """
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model=model),
        inputs=[
            common_pb2.Tensor(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=shape, data=x.tobytes())
        ],
    ).SerializeToString()

    if in_flight == 1:
        out.put(_blocking_caller(target, request, seconds, ready, go))
        return

    async def run() -> tuple[list[float], int]:
        channel = grpc.aio.insecure_channel(target, options=ROUND_ROBIN)
        # Raw bytes both ways: the responses are not parsed, as the server's work is measured.
        predict = channel.unary_unary("/tessera.v1.Inference/Predict")
        for _ in range(20):  # warm the channel and the server
            await predict(request)
        ready.set()
        await asyncio.to_thread(go.wait)
        latencies: list[float] = []
        errors = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    await predict(request)
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError:
                    errors += 1

        await asyncio.gather(*(caller() for _ in range(in_flight)))
        await channel.close()
        return latencies, errors

    out.put(asyncio.run(run()))


def _blocking_caller(
    target: str, request: bytes, seconds: float, ready: Event, go: Event
) -> tuple[list[float], int]:
    """One caller making blocking calls: at concurrency 1 the client with the lowest latency."""
    channel = grpc.insecure_channel(target, options=ROUND_ROBIN)
    predict = channel.unary_unary("/tessera.v1.Inference/Predict")
    for _ in range(20):
        predict(request)
    ready.set()
    go.wait()
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        try:
            predict(request)
            latencies.append(time.perf_counter() - t0)
        except grpc.RpcError:
            errors += 1
    channel.close()
    return latencies, errors


def measure(target: str, model: str, shape: list[int], concurrency: int, seconds: float) -> dict:
    processes = min(concurrency, 2)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    go = ctx.Event()
    ready = [ctx.Event() for _ in range(processes)]
    procs = [
        ctx.Process(
            target=client_process,
            args=(target, model, shape, concurrency // processes, seconds, ready[i], go, out),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for event in ready:
        if not event.wait(120):
            raise RuntimeError("a client process did not start within 120 s")
    go.set()
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


def in_process_seconds_per_batch(path: Path, shape: list[int], batch: int, budget_s: float = 0.5) -> float:
    """onnxruntime's own time for one batch of `batch` rows, with the daemon's session options
    (best of a few timed runs, as a floor that the served run is held against)."""
    from tesserad.serving.runtimes import OnnxRuntime

    runtime = OnnxRuntime(path, "cpu", 0)
    x = {"input": np.random.default_rng(0).standard_normal([batch, *shape[1:]]).astype(np.float32)}
    for _ in range(3):
        runtime.run(x, ["output"])
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 200):
        t0 = time.perf_counter()
        runtime.run(x, ["output"])
        times.append(time.perf_counter() - t0)
    runtime.close()
    return statistics.median(times)


def in_process_cost_by_batch(
    path: Path, shape: list[int], batches: tuple[int, ...] = (1, 2, 4, 8, 16)
) -> dict:
    """Per row, onnxruntime's wall time and the CPU time it burns (all its threads), by batch
    size: whether batching saves work per row or only spreads it over more cores."""
    from tesserad.serving.runtimes import OnnxRuntime

    runtime = OnnxRuntime(path, "cpu", 0)
    table = {}
    for batch in batches:
        x = {"input": np.random.default_rng(0).standard_normal([batch, *shape[1:]]).astype(np.float32)}
        for _ in range(3):
            runtime.run(x, ["output"])
        runs = max(8, 64 // batch)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(runs):
            runtime.run(x, ["output"])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        table[str(batch)] = {
            "wall_us_per_row": wall / runs / batch * 1e6,
            "cpu_us_per_row": cpu / runs / batch * 1e6,
        }
    runtime.close()
    return table


def in_process_at_histogram(path: Path, shape: list[int], histogram: dict[int, int]) -> float:
    """Rows/s onnxruntime reaches running exactly the batches the batcher formed (`rows -> count`)."""
    seconds = sum(
        count * in_process_seconds_per_batch(path, shape, rows) for rows, count in histogram.items()
    )
    return sum(rows * count for rows, count in histogram.items()) / seconds


def paired_ratio(cells: list[dict], baselines: list[dict], key: str) -> dict:
    """`key` of each repeat's cell over its baseline cell of the same repeat (run minutes apart
    at most, so a slow spell of the shared machine moves both): every ratio and their median."""
    each = [cell[key] / base[key] for cell, base in zip(cells, baselines, strict=True)]
    return {"median": statistics.median(each), "each": [round(r, 3) for r in each]}


def median_cell(cells: list[dict]) -> dict:
    """The median of each figure over repeats, with every repeat's throughput kept."""
    merged = {"concurrency": cells[0]["concurrency"], "repeats": len(cells)}
    for key in cells[0]:
        if key != "concurrency":
            merged[key] = statistics.median(c[key] for c in cells)
    merged["throughput_rps_each"] = [round(c["throughput_rps"], 1) for c in cells]
    return merged


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["tiny_mlp", "cnn4d"], choices=list(model_specs()))
    parser.add_argument(
        "--instances", type=int, default=0, help="instances per served version (0: the default)"
    )
    parser.add_argument("--auth-share", action="store_true")
    parser.add_argument(
        "--replicas", type=int, default=0, help="only compare N serving replicas with the daemon they follow"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.replicas:
        replicas_comparison(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    paths = export_models(work, args.models)
    shapes = {"tiny_mlp": [1, 16], "cnn4d": [1, 1, 8, 16, 16, 16]}
    daemon, file_service = start_file_daemon(work / "data", paths, args.instances)
    echo_port, _ = start_echo()

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "seconds_per_cell": args.seconds,
        "instances": file_service.pool.get(f"{args.models[0]}-on", 1).config.instances,
        "repeats": args.repeats,
        "models": {},
    }
    for model in args.models:
        shape = shapes[model]
        spec = model_specs()[model]
        row_us = in_process_seconds_per_batch(paths[model], shape, 1, budget_s=1.0) * 1e6
        cost_by_batch = in_process_cost_by_batch(paths[model], shape)
        print(f"{model}: {spec}; in-process onnxruntime {row_us:.0f} us per single-row run", flush=True)
        runs: dict = {
            mode: {c: [] for c in args.concurrency} for mode in ("echo", "batching_off", "batching_on")
        }
        histograms: dict[int, dict[int, int]] = {c: {} for c in args.concurrency}
        modes = ["echo", "batching_off", "batching_on"]
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                # The order rotates each repeat: whatever runs after another cell inherits its
                # state (caches, allocator, the machine's load), so no mode always goes first.
                for mode in modes[repeat % 3 :] + modes[: repeat % 3]:
                    if mode == "echo":
                        cell = measure(f"127.0.0.1:{echo_port}", model, shape, concurrency, args.seconds)
                        runs["echo"][concurrency].append(cell)
                        report(model, "echo", repeat, cell)
                        continue
                    served = f"{model}-{'on' if mode == 'batching_on' else 'off'}"
                    stats = file_service.pool.get(served, 1).stats
                    stats.snapshot(reset=True)
                    cell = measure(daemon.target, served, shape, concurrency, args.seconds)
                    snap = stats.snapshot()
                    batches = sum(n for n, _ in snap.batches.values())
                    cell["mean_batch_rows"] = snap.row_count / batches if batches else 0.0
                    runs[mode][concurrency].append(cell)
                    report(model, mode, repeat, cell)
                    if mode == "batching_on":
                        for rows, (n, _) in snap.batches.items():
                            histograms[concurrency][rows] = histograms[concurrency].get(rows, 0) + n
        cells = {mode: [median_cell(runs[mode][c]) for c in args.concurrency] for mode in runs}
        ratios = []
        for echo, off, on in zip(cells["echo"], cells["batching_off"], cells["batching_on"], strict=True):
            concurrency = echo["concurrency"]
            histogram = histograms[concurrency]
            in_process = in_process_at_histogram(paths[model], shape, histogram)
            paired = {
                name: paired_ratio(runs[a][concurrency], runs[b][concurrency], key)
                for name, a, b, key in (
                    ("p50_off_vs_echo", "batching_off", "echo", "p50_ms"),
                    ("p50_on_vs_echo", "batching_on", "echo", "p50_ms"),
                    ("throughput_on_vs_off", "batching_on", "batching_off", "throughput_rps"),
                )
            }
            ratios.append(
                {
                    "concurrency": concurrency,
                    "p50_off_vs_echo": off["p50_ms"] / echo["p50_ms"],
                    "p50_on_vs_echo": on["p50_ms"] / echo["p50_ms"],
                    "p50_on_vs_off": on["p50_ms"] / off["p50_ms"],
                    "throughput_on_vs_off": on["throughput_rps"] / off["throughput_rps"],
                    "paired_by_repeat": paired,
                    "formed_batch_histogram": {str(rows): n for rows, n in sorted(histogram.items())},
                    "in_process_rows_per_s_at_formed_batches": in_process,
                    "served_on_vs_in_process": on["throughput_rps"] / in_process,
                }
            )
        results["models"][model] = {
            "spec": {"architecture": type(spec).__name__, **{k: v for k, v in vars(spec).items()}},
            "request_shape": shape,
            "in_process_us_per_row_at_batch_1": row_us,
            "in_process_cost_by_batch": cost_by_batch,
            "cells": cells,
            "ratios": ratios,
        }
        for r in ratios:
            paired = r["paired_by_repeat"]
            print(f"{model:9s} c={r['concurrency']:<3d} p50 off/echo {r['p50_off_vs_echo']:.2f}  on/echo {r['p50_on_vs_echo']:.2f}  "
                  f"thr on/off {r['throughput_on_vs_off']:.2f}  served/in-process {r['served_on_vs_in_process']:.2f}  "
                  f"(paired by repeat: off/echo {paired['p50_off_vs_echo']['median']:.2f}  on/echo "
                  f"{paired['p50_on_vs_echo']['median']:.2f}  thr on/off {paired['throughput_on_vs_off']['median']:.2f})", flush=True)  # fmt: skip
    daemon.stop()
    if args.auth_share and "tiny_mlp" in paths:
        results["auth_interceptor_share"] = auth_share(work, paths, shapes["tiny_mlp"], echo_port, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


def report(model: str, mode: str, repeat: int, cell: dict) -> None:
    batch = f"  batch {cell['mean_batch_rows']:.1f}" if "mean_batch_rows" in cell else ""
    print(f"{model:9s} {mode:13s} #{repeat} c={cell['concurrency']:<3d} {cell['throughput_rps']:8.0f} req/s  "
          f"p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms{batch}", flush=True)  # fmt: skip


def start_file_daemon(data_dir: Path, paths: dict[str, Path], instances: int = 0):  # type: ignore[no-untyped-def]
    """A daemon serving the exported files as `<model>-off` (max_batch_size 1) and `<model>-on` (32)."""
    from conftest import InProcessDaemon

    settings = load_settings(
        env={}, overrides={"listen": "127.0.0.1:0", "metrics_listen": "off", "data_dir": str(data_dir)}
    )
    daemon = InProcessDaemon(settings).start()
    # Serve exported files directly: this measures serving, not the registry. The daemon's own
    # serving metrics stay on, as in production.
    service: InferenceService = daemon.daemon.inference
    file_service = InferenceService(
        FileSource(paths), ModelPool(service.pool.defaults, service.pool._metrics), autoload=False
    )
    daemon.daemon.inference = file_service
    for servicer_service in _servicers_of(daemon):
        servicer_service._service = file_service
    for model in paths:
        file_service.pool.load(
            servable_file(f"{model}-off", 1, "onnx", paths[model]),
            ServingConfig(max_batch_size=1, instances=instances),
        )
        file_service.pool.load(
            servable_file(f"{model}-on", 1, "onnx", paths[model]),
            ServingConfig(max_batch_size=32, instances=instances),
        )
    return daemon, file_service


def auth_share(work: Path, paths: dict[str, Path], shape: list[int], echo_port: int, args) -> dict:  # type: ignore[no-untyped-def]
    """Tiny model, concurrency 1, no tokens: the daemon as configured against one whose auth
    interceptor only passes calls on (interleaved, medians)."""
    import tesserad.server
    from tesserad.api.auth import AuthInterceptor

    class PassThrough(AuthInterceptor):
        async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
            return await continuation(handler_call_details)

    with_auth, _ = start_file_daemon(work / "data-auth", {"tiny_mlp": paths["tiny_mlp"]})
    original = tesserad.server.AuthInterceptor
    tesserad.server.AuthInterceptor = PassThrough  # type: ignore[misc]
    try:
        without_auth, _ = start_file_daemon(work / "data-no-auth", {"tiny_mlp": paths["tiny_mlp"]})
    finally:
        tesserad.server.AuthInterceptor = original  # type: ignore[misc]
    runs: dict[str, list[dict]] = {"echo": [], "with_auth_interceptor": [], "pass_through_interceptor": []}
    for repeat in range(args.repeats):
        for name, target in (
            ("echo", f"127.0.0.1:{echo_port}"),
            ("with_auth_interceptor", with_auth.target),
            ("pass_through_interceptor", without_auth.target),
        ):
            model = "tiny_mlp" if name == "echo" else "tiny_mlp-off"
            cell = measure(target, model, shape, 1, args.seconds)
            runs[name].append(cell)
            report("tiny_mlp", name, repeat, cell)
    with_auth.stop()
    without_auth.stop()
    cells = {name: median_cell(r) for name, r in runs.items()}
    share = {
        "cells": cells,
        "p50_ms_added_by_auth_interceptor": cells["with_auth_interceptor"]["p50_ms"]
        - cells["pass_through_interceptor"]["p50_ms"],
        "p50_with_vs_echo": cells["with_auth_interceptor"]["p50_ms"] / cells["echo"]["p50_ms"],
        "p50_pass_through_vs_echo": cells["pass_through_interceptor"]["p50_ms"] / cells["echo"]["p50_ms"],
    }
    print(f"auth interceptor: p50 +{share['p50_ms_added_by_auth_interceptor'] * 1000:.0f} us; vs echo "
          f"{share['p50_with_vs_echo']:.2f} with, {share['p50_pass_through_vs_echo']:.2f} pass-through", flush=True)  # fmt: skip
    return share


def _servicers_of(daemon) -> list:  # type: ignore[no-untyped-def]
    """The daemon's Inference servicer instances, found through the gRPC server's handlers."""
    import gc

    from tesserad.api.inference import InferenceServicer
    from tesserad.api.oip import OipServicer

    return [o for o in gc.get_objects() if isinstance(o, InferenceServicer | OipServicer)]


def replicas_comparison(args) -> None:  # type: ignore[no-untyped-def]
    """Requests/s of `args.replicas` serving replicas (`tesserad serve --follow`, called round
    robin) against the one daemon they follow, on the tiny model, with the client CPU each took."""
    work = Path(tempfile.mkdtemp(prefix="replica-bench-"))
    path = export_models(work, ["tiny_mlp"])["tiny_mlp"]
    shape = [1, 16]
    primary, address = start_daemon(work / "primary")
    with tessera.Client(address) as client:
        client.models.push("tiny", path)
        client.models.deploy("tiny", {1: 100})
    replicas = [start_daemon(work / f"replica{i}", "--follow", address) for i in range(args.replicas)]
    for _, replica in replicas:
        with grpc.insecure_channel(replica) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while (
                health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING
            ):
                time.sleep(0.1)
    targets = {"one_daemon": address, "replicas": "ipv4:" + ",".join(r for _, r in replicas)}
    concurrency = max(args.concurrency)
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    for repeat in range(args.repeats):
        for name in list(targets)[repeat % 2 :] + list(targets)[: repeat % 2]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            cell = measure(targets[name], "tiny", shape, concurrency, args.seconds)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            cell["client_cpu_s"] = cpu_s
            cell["client_cpu_us_per_request"] = cpu_s / max(cell["requests"], 1) * 1e6
            runs[name].append(cell)
            report("tiny_mlp", name, repeat, cell)
    cells = {name: median_cell(cells) for name, cells in runs.items()}
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "note": (
            f"{args.replicas} replicas and the daemon they follow, all on this machine with the load "
            "generator: on 2 cores the replicas and the clients share the same CPUs, so this measures "
            "the overhead of a replica (following, round robin over connections), not scaling"
        ),
        "concurrency": concurrency,
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
        "cells": cells,
        "replicas_vs_one_daemon_throughput": paired_ratio(
            runs["replicas"], runs["one_daemon"], "throughput_rps"
        ),
    }
    for process, _ in [(primary, address), *replicas]:
        process.terminate()
        process.wait(30)
    out = REPLICA_RESULTS if args.out == RESULTS else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

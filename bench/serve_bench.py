"""Serving benchmark: what tesserad costs per request, in server CPU and in wall-clock time, for a
tiny MLP and the exported cnn4d classifier, against a bare grpc.aio echo server and in-process
onnxruntime, in one run.

Servers, each its own process so that its CPU time is its own (read from /proc at each cell's
start and end, divided by the requests answered):
- `echo`: a bare grpc.aio server answering Predict with a tensor the size of the model's output
  (the floor: gRPC and protobuf, nothing else);
- `transport`: the daemon's own server setup (interceptors, options, handler routing) whose
  Predict answers the same way without going near serving;
- the daemon serving `<model>-off` (max_batch_size 1), `<model>-on` (32, the default) and
  `<model>-constant` (a graph of the same signature that slices its input: the constant-model
  trick, onnxruntime's per-run overhead with no compute).

The daemon's CPU per request at batching off splits into transport (the `transport` server),
our Python path (`constant` less transport less in-process onnxruntime's CPU for the constant
graph) and the model's run (the rest).

Load: two client processes, started once and reused (one caller at concurrency 1, making blocking
calls), keep `concurrency / 2` Predict calls each in flight, all starting together; one row per
request. Every cell runs `--repeats` times, interleaved in an order that rotates each repeat.
Figures are medians over repeats; ratios and goals are medians of per-repeat ratios (cells of a
repeat run back to back, so a slow spell of the shared machine moves both sides).

Goals (this machine, CPU):
- tiny model, c=1: daemon CPU per request <= 1.3x the echo server's;
- cnn4d: daemon CPU per request less in-process onnxruntime's CPU for the same rows (at the batch
  sizes the batcher formed) <= 1.2x the echo server's;
- batching on against off: >= 0.95x the requests/s at every concurrency;
- tiny model, c=1: p99 <= 2x the echo server's p99.

The tail: tiny model at c=1 also runs with the daemon's garbage collector off (`gc_off` cells),
and the daemon records its collections' pauses during each cell; `tail` in the JSON says what
the p99 is made of.

Defaults (1.5 s cells, 4 repeats) take ~7 minutes on the 2-core dev box; `--full` runs 3 s
cells, 5 repeats (~15 minutes).
Writes bench/results/serve_bench.json and prints a table.

    .venv/bin/python bench/serve_bench.py [--full] [--seconds S] [--repeats N]
        [--concurrency 1 8 32] [--models tiny_mlp cnn4d] [--instances N] [--device cpu|cuda:0]
        [--auth-share] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from unittest import mock

import grpc
import numpy as np
from daemon_process import start_daemon
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tessera
from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tesserad.config import load_settings
from tesserad.serving.pool import LoadedVersion, ModelPool, ServableVersion, ServingConfig, servable_file
from tesserad.serving.service import DeploymentPlan, InferenceService

if TYPE_CHECKING:  # imported where used, as the bench imports them late
    from conftest import InProcessDaemon

    from tesserad.api.inference import InferenceServicer
    from tesserad.nn.specs import Cnn4dSpec, MlpSpec
    from tesserad.serving.open_inference import OpenInference

RESULTS = Path(__file__).parent / "results" / "serve_bench.json"
REPLICA_RESULTS = Path(__file__).parent / "results" / "replica_bench.json"
# Calls spread over every address of an `ipv4:a,b` target (--replicas); one address: as before.
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]
SHAPES = {"tiny_mlp": [1, 16], "cnn4d": [1, 1, 8, 16, 16, 16]}
OUTPUT_SIZES = {"tiny_mlp": 4, "cnn4d": 3}
GOALS = {
    "tiny_c1_cpu_vs_echo": 1.3,
    "cnn4d_cpu_less_onnxruntime_vs_echo": 1.2,
    "throughput_on_vs_off_min": 0.95,
    "tiny_c1_p99_vs_echo": 2.0,
}
# On a GPU: batching pays, and serving costs little beside the model.
GPU_GOALS = {"cnn4d_throughput_on_vs_off_at_c8_up": 1.5, "cnn4d_served_vs_in_process": 0.8}


# -- models ---------------------------------------------------------------------------------


def model_specs() -> dict[str, MlpSpec | Cnn4dSpec]:
    from tesserad.nn.specs import Cnn4dSpec, MlpSpec

    return {
        "tiny_mlp": MlpSpec(input_shape=(16,), output_size=4, hidden_sizes=(32,)),
        # A classifier of the size users train on spacetime clips: 1 channel, T=8, 16^3 voxels,
        # two Conv4d blocks (8 and 16 channels) with pooling, then the head. Its compute
        # (milliseconds a row on 2 CPU cores) outweighs the per-request gRPC cost, as real models do.
        "cnn4d": Cnn4dSpec(input_shape=(1, 8, 16, 16, 16), output_size=3, channels=(8, 16)),
    }


def export_models(directory: Path, names: list[str]) -> dict[str, Path]:
    """`<name>.onnx` for each model and `<name>-constant.onnx`, its constant-model twin."""
    from tesserad.nn.architectures import build_model
    from tesserad.nn.onnx_export import export_onnx

    paths = {}
    for name, spec in model_specs().items():
        if name in names:
            paths[name] = directory / f"{name}.onnx"
            export_onnx(build_model(spec).eval(), spec, paths[name])
            paths[f"{name}-constant"] = constant_model(directory / f"{name}-constant.onnx", name)
    return paths


def constant_model(path: Path, model: str) -> Path:
    """A graph with `model`'s input and output (named "input" and "output") that only reshapes and
    slices its input: served, it costs what serving costs without the model's compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rank = len(SHAPES[model])
    size = OUTPUT_SIZES[model]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "flat"], ["rows"]),
            helper.make_node("Slice", ["rows", "starts", "ends", "axes"], ["output"]),
        ],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *SHAPES[model][1:]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", size])],
        [
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
            numpy_helper.from_array(np.array([size], dtype=np.int64), "ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    assert rank >= 2
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


class FileSource:
    """Serves exported files as version 1 of each model (the registry is not what is measured)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = paths

    def servable(self, model: str, version: int | None, alias: str | None) -> ServableVersion:
        return servable_file(model, 1, "onnx", self._paths[model.rsplit("-", 1)[0]])

    def known_servable(self, model: str, version: int) -> ServableVersion | None:
        return self.servable(model, version, None)

    def deployment(self, model: str) -> DeploymentPlan | None:
        return None

    def model_names(self) -> list[str]:
        return sorted(self._paths)

    def model_identity(self, model: str) -> Hashable:
        return model  # never deleted


# -- servers, each in its own process ---------------------------------------------------------


def output_response(model: str) -> inference_pb2.PredictResponse:
    """What the echo servers answer: a tensor the size of `model`'s one-row output."""
    size = OUTPUT_SIZES[model.split("-", 1)[0]]
    data = np.zeros((1, size), dtype=np.float32).tobytes()
    return inference_pb2.PredictResponse(
        outputs=[
            common_pb2.Tensor(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[1, size], data=data)
        ]
    )


class EchoServicer(inference_pb2_grpc.InferenceServicer):
    """The floor: a grpc.aio server that answers Predict with an output-sized tensor."""

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.PredictResponse:
        response = output_response(request.target.model)
        response.request_id = request.request_id
        return response


def echo_server_process(conn: Connection) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        # The generated stub declares every method abstract; at run time the base answers the
        # others UNIMPLEMENTED, as the echo server should.
        inference_pb2_grpc.add_InferenceServicer_to_server(EchoServicer(), server)  # type: ignore[abstract]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(f"127.0.0.1:{port}")
        await asyncio.to_thread(conn.recv)
        await server.stop(0)

    asyncio.run(run())


class GcPauses:
    """The garbage collector's pauses in this process, from gc.callbacks."""

    def __init__(self) -> None:
        self.pauses_us: list[float] = []
        self.by_generation = [0, 0, 0]
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.pauses_us.append((time.perf_counter_ns() - self._started) / 1000)
            self.by_generation[info["generation"]] += 1

    def take(self) -> dict[str, Any]:
        pauses, self.pauses_us = self.pauses_us, []
        generations, self.by_generation = self.by_generation, [0, 0, 0]
        return {
            "collections": len(pauses),
            "by_generation": generations,
            "total_us": round(sum(pauses), 1),
            "max_us": round(max(pauses, default=0.0), 1),
        }


def daemon_process(
    conn: Connection,
    data_dir: Path,
    paths: dict[str, Path],
    instances: int,
    device: str,
    transport_only: bool,
    pass_through_auth: bool,
) -> None:
    """A daemon serving the exported files; with `transport_only`, one whose Predict answers an
    output-sized tensor without touching serving. Answers commands on `conn` until "stop"."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    if pass_through_auth:
        import tesserad.server
        from tesserad.api.aio_handlers import Handler
        from tesserad.api.auth import AuthInterceptor

        class PassThrough(AuthInterceptor):
            def handler_for(
                self, handler: Handler | None, handler_call_details: grpc.HandlerCallDetails
            ) -> Handler | None:
                return handler

        # Replaces the server module's own import of it, which create_server calls; for the
        # process's life, as patch.object fails if the name is gone.
        mock.patch.object(tesserad.server, "AuthInterceptor", PassThrough).start()
    if transport_only:
        # Before the server starts: gRPC binds the servicer's methods when they are registered.
        from tesserad.api.inference import InferenceServicer

        async def answer(
            self: InferenceServicer,
            request: inference_pb2.PredictRequest,
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> inference_pb2.PredictResponse:
            response = output_response(request.target.model)
            response.request_id = request.request_id
            return response

        mock.patch.object(InferenceServicer, "Predict", answer).start()
    daemon, file_service = start_file_daemon(data_dir, {} if transport_only else paths, instances, device)
    pauses = GcPauses()
    conn.send(daemon.target)
    while True:
        command, argument = conn.recv()
        if command == "stop":
            daemon.stop()
            conn.send(None)
            return
        if command == "gc":
            if argument:
                gc.enable()
            else:
                gc.disable()
            pauses.take()
            conn.send(None)
        elif command == "reset":
            pauses.take()
            if argument:
                loaded(file_service, argument).stats.snapshot(reset=True)
            conn.send(None)
        elif command == "stats":
            figures: dict[str, Any] = {"gc": pauses.take()}
            if argument:
                snap = loaded(file_service, argument).stats.snapshot()
                figures["batches"] = {rows: n for rows, (n, _) in snap.batches.items()}
                figures["server_total_p50_us"] = snap.total.p50
                figures["server_total_p99_us"] = snap.total.p99
                figures["server_compute_p99_us"] = snap.compute.p99
            conn.send(figures)


def loaded(service: InferenceService, model: str) -> LoadedVersion:
    """Version 1 of `model`, which start_file_daemon loaded."""
    entry = service.pool.get(model, 1)
    assert entry is not None, model
    return entry


def start_file_daemon(
    data_dir: Path, paths: dict[str, Path], instances: int = 0, device: str = ""
) -> tuple[InProcessDaemon, InferenceService]:
    """An in-process daemon serving the exported files: `<model>-off` (max_batch_size 1), `<model>-on`
    (32) and `<model>-constant` (the constant twin, max_batch_size 1)."""
    from conftest import InProcessDaemon

    settings = load_settings(
        env={},
        overrides={
            "listen": "127.0.0.1:0",
            "metrics_listen": "off",
            "http_listen": "off",
            "data_dir": str(data_dir),
        },
    )
    daemon = InProcessDaemon(settings).start()
    # Serve exported files directly: this measures serving, not the registry. The daemon's own
    # serving metrics stay on, as in production.
    service = daemon.daemon.inference
    assert service is not None  # set as the daemon starts
    file_service = InferenceService(
        FileSource(paths),
        ModelPool(service.pool.defaults, service.pool._metrics),
        autoload=False,
        calls=service.calls,
    )
    daemon.daemon.inference = file_service
    for servicer in _servicers_of():
        servicer._service = file_service
    for model, path in paths.items():
        if model.endswith("-constant"):
            file_service.pool.load(
                servable_file(model, 1, "onnx", path),
                ServingConfig(max_batch_size=1, instances=instances, device=device),
            )
            continue
        for mode, rows in (("off", 1), ("on", 32)):
            file_service.pool.load(
                servable_file(f"{model}-{mode}", 1, "onnx", path),
                ServingConfig(max_batch_size=rows, instances=instances, device=device),
            )
    return daemon, file_service


def _servicers_of() -> list[InferenceServicer | OpenInference]:
    """What holds the daemon's InferenceService: the Inference servicer, and the Open Inference
    Protocol's core its transports share."""
    from tesserad.api.inference import InferenceServicer
    from tesserad.serving.open_inference import OpenInference

    return [o for o in gc.get_objects() if isinstance(o, InferenceServicer | OpenInference)]


def process_cpu_s(pid: int | None) -> float:
    """User and system CPU time of every thread of the process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server process: its address, its CPU time, and (daemons) its commands."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        if not self._conn.poll(300):
            raise RuntimeError("a server process did not start within 300 s")
        self.target: str = self._conn.recv()

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def call(self, command: str, argument: Any = None) -> Any:
        self._conn.send((command, argument))
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send(("stop", None))
        self._conn.poll(60)
        self.process.join(60)
        if self.process.is_alive():
            self.process.kill()


# -- load generator -------------------------------------------------------------------------


def client_process(jobs: mp.Queue[Any], ready: Event, go: Event, out: mp.Queue[Any]) -> None:
    """Runs cells until it gets None: for each, `in_flight` closed-loop callers sending one
    request serialised once, measuring from `go` on.

    An asyncio client costs about half the CPU per call of blocking calls from threads (GIL
    hand-offs), and that CPU is taken from the server on this shared machine; a lone caller
    makes blocking calls, which have the lowest latency.
    """
    while (job := jobs.get()) is not None:
        target, model, shape, in_flight, seconds = job
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        request = inference_pb2.PredictRequest(
            target=common_pb2.VersionRef(model=model),
            inputs=[
                common_pb2.Tensor(
                    name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=shape, data=x.tobytes()
                )
            ],
        ).SerializeToString()
        if in_flight == 1:
            out.put(_blocking_caller(target, request, seconds, ready, go))
        else:
            out.put(asyncio.run(_async_callers(target, request, in_flight, seconds, ready, go)))


async def _async_callers(
    target: str, request: bytes, in_flight: int, seconds: float, ready: Event, go: Event
) -> tuple[list[float], int]:
    channel = grpc.aio.insecure_channel(target, options=ROUND_ROBIN)
    # Raw bytes both ways: the responses are not parsed, as the server's work is measured.
    predict: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/tessera.v1.Inference/Predict"
    )
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


def _blocking_caller(
    target: str, request: bytes, seconds: float, ready: Event, go: Event
) -> tuple[list[float], int]:
    """One caller making blocking calls: at concurrency 1 the client with the lowest latency."""
    channel = grpc.insecure_channel(target, options=ROUND_ROBIN)
    predict: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/tessera.v1.Inference/Predict")
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


class Measured(Protocol):
    """What Clients.measure uses of a server: the address to call and its CPU time so far."""

    target: str

    def cpu_s(self) -> float: ...


class Clients:
    """Two client processes, started once; each cell uses one (concurrency 1) or both."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._out: mp.Queue[Any] = ctx.Queue()
        self._go = ctx.Event()
        self._jobs = [ctx.Queue() for _ in range(2)]
        self._ready = [ctx.Event() for _ in range(2)]
        self._procs = [
            ctx.Process(target=client_process, args=(self._jobs[i], self._ready[i], self._go, self._out))
            for i in range(2)
        ]
        for p in self._procs:
            p.start()

    def measure(
        self, server: Measured, model: str, shape: list[int], concurrency: int, seconds: float
    ) -> dict[str, Any]:
        """One cell: latency percentiles, requests/s, and the server's CPU per request."""
        processes = min(concurrency, 2)
        self._go.clear()
        for i in range(processes):
            self._ready[i].clear()
            self._jobs[i].put((server.target, model, shape, concurrency // processes, seconds))
        for i in range(processes):
            if not self._ready[i].wait(120):
                raise RuntimeError("a client process did not get ready within 120 s")
        cpu_start = server.cpu_s()
        self._go.set()
        latencies: list[float] = []
        errors = 0
        for _ in range(processes):
            lat, err = self._out.get(timeout=seconds + 120)
            latencies += lat
            errors += err
        cpu = server.cpu_s() - cpu_start
        q = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [0, 0, 0]
        return {
            "concurrency": concurrency,
            "requests": len(latencies),
            "errors": errors,
            "throughput_rps": len(latencies) / seconds,
            "p50_ms": float(q[0]),
            "p95_ms": float(q[1]),
            "p99_ms": float(q[2]),
            "server_cpu_us_per_request": cpu / max(1, len(latencies)) * 1e6,
        }

    def cpu_s(self) -> float:
        """CPU time the client processes have used."""
        return sum(process_cpu_s(p.pid) for p in self._procs)

    def close(self) -> None:
        for jobs in self._jobs:
            jobs.put(None)
        for p in self._procs:
            p.join(30)


# -- in-process onnxruntime -----------------------------------------------------------------


class InProcess:
    """onnxruntime in this process with the daemon's session options: wall and CPU time per row
    by batch size (measured once per size)."""

    def __init__(self, path: Path, shape: list[int], device: str, instances: int) -> None:
        from tesserad.serving.pool import ServingDefaults, effective_config
        from tesserad.serving.runtimes import OnnxRuntime

        # The intra-op threads the daemon gives an instance of a version loaded with the defaults.
        config = effective_config(
            ServingConfig(device=device or "cpu", instances=instances), ServingDefaults(), "onnx"
        )
        self._runtime = OnnxRuntime(path, device or "cpu", config.intra_op_threads)
        self._shape = shape
        self._costs: dict[int, dict[str, float]] = {}

    def cost(self, batch: int) -> dict[str, float]:
        if batch not in self._costs:
            x = {
                "input": np.random.default_rng(0)
                .standard_normal([batch, *self._shape[1:]])
                .astype(np.float32)
            }
            for _ in range(3):
                self._runtime.run(x, ["output"])
            runs = max(8, 256 // batch)
            walls: list[float] = []
            cpu = time.process_time()
            for _ in range(runs):
                t0 = time.perf_counter()
                self._runtime.run(x, ["output"])
                walls.append(time.perf_counter() - t0)
            cpu = time.process_time() - cpu
            self._costs[batch] = {
                # The median run: a floor that the served runs are held against.
                "wall_us_per_row": statistics.median(walls) / batch * 1e6,
                "cpu_us_per_row": cpu / runs / batch * 1e6,
            }
        return self._costs[batch]

    def cpu_now(self) -> float:
        """CPU us per row of single-row runs now (~0.1 s of them): paired with a cell run just
        before, under the same load of the shared machine, as cost(1) was measured at the start."""
        x = {"input": np.zeros(self._shape, dtype=np.float32)}
        self._runtime.run(x, ["output"])
        runs = max(16, int(100_000 / max(1.0, self.cost(1)["cpu_us_per_row"])))
        cpu = time.process_time()
        for _ in range(runs):
            self._runtime.run(x, ["output"])
        return (time.process_time() - cpu) / runs * 1e6

    def at_histogram(self, histogram: dict[int, int]) -> tuple[float, float]:
        """(rows/s, CPU us per row) running exactly the batches the batcher formed (rows -> count)."""
        rows = sum(r * n for r, n in histogram.items())
        if not rows:
            return 0.0, 0.0
        wall = sum(n * r * self.cost(r)["wall_us_per_row"] for r, n in histogram.items())
        cpu = sum(n * r * self.cost(r)["cpu_us_per_row"] for r, n in histogram.items())
        return rows / wall * 1e6, cpu / rows

    def table(self) -> dict[str, dict[str, float]]:
        return {str(b): {k: round(v, 2) for k, v in c.items()} for b, c in sorted(self._costs.items())}


# -- figures --------------------------------------------------------------------------------


def paired(
    cells: list[dict[str, Any]], baselines: list[dict[str, Any]], key: str, less: list[float] | None = None
) -> dict[str, Any]:
    """Each repeat's cell[key] (less `less[i]`) over its baseline's, and their median."""
    each = [
        (cell[key] - (less[i] if less else 0.0)) / base[key]
        for i, (cell, base) in enumerate(zip(cells, baselines, strict=True))
    ]
    return {"median": round(statistics.median(each), 3), "each": [round(r, 3) for r in each]}


def median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeats, with every repeat's throughput and CPU kept."""
    merged: dict[str, Any] = {"concurrency": cells[0]["concurrency"], "repeats": len(cells)}
    for key in cells[0]:
        if key != "concurrency" and isinstance(cells[0][key], int | float):
            merged[key] = round(statistics.median(c[key] for c in cells), 4)
    merged["throughput_rps_each"] = [round(c["throughput_rps"], 1) for c in cells]
    merged["server_cpu_us_per_request_each"] = [round(c["server_cpu_us_per_request"], 1) for c in cells]
    return merged


def report(model: str, mode: str, repeat: int, cell: dict[str, Any]) -> None:
    batch = f"  batch {cell['mean_batch_rows']:.1f}" if "mean_batch_rows" in cell else ""
    print(f"{model:9s} {mode:13s} #{repeat} c={cell['concurrency']:<3d} {cell['throughput_rps']:8.0f} req/s  "
          f"p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms  cpu {cell['server_cpu_us_per_request']:.0f} us/req{batch}",
          flush=True)  # fmt: skip


# -- main -----------------------------------------------------------------------------------

MODES = ("echo", "transport", "constant", "batching_off", "batching_on")


def run_model(
    model: str,
    paths: dict[str, Path],
    servers: dict[str, Server],
    clients: Clients,
    args: argparse.Namespace,
) -> dict[str, Any]:
    shape = SHAPES[model]
    spec = model_specs()[model]
    onnx = InProcess(paths[model], shape, args.device, args.instances)
    constant = InProcess(paths[f"{model}-constant"], shape, args.device, args.instances)
    for batch in (1, 2, 4, 8, 16):
        onnx.cost(batch)
    print(
        f"{model}: {spec}; in-process onnxruntime {onnx.cost(1)['wall_us_per_row']:.0f} us per single-row run",
        flush=True,
    )
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        m: {c: [] for c in args.concurrency} for m in (*MODES, "gc_off")
    }
    daemon = servers["daemon"]
    for repeat in range(args.repeats):
        for concurrency in args.concurrency:
            # The order rotates each repeat: whatever runs after another cell inherits its state
            # (caches, allocator, the machine's load), so no mode always goes first.
            modes = list(MODES[repeat % len(MODES) :] + MODES[: repeat % len(MODES)])
            if concurrency == 1 and model == "tiny_mlp":
                modes.append("gc_off")
            for mode in modes:
                server = servers.get(mode, daemon)
                served = {
                    "echo": model,
                    "transport": model,
                    "constant": f"{model}-constant",
                    "batching_off": f"{model}-off",
                    "gc_off": f"{model}-off",
                    "batching_on": f"{model}-on",
                }[mode]
                if server is daemon:
                    if mode == "gc_off":
                        daemon.call("gc", False)
                    daemon.call("reset", served)
                cell = clients.measure(server, served, shape, concurrency, args.seconds)
                if server is daemon:
                    figures = daemon.call("stats", served)
                    if mode == "gc_off":
                        daemon.call("gc", True)
                    histogram = figures.pop("batches")
                    batches = sum(histogram.values())
                    cell["mean_batch_rows"] = (
                        sum(r * n for r, n in histogram.items()) / batches if batches else 0.0
                    )
                    cell["formed_batches"] = histogram
                    cell["gc_collections"] = figures["gc"]["collections"]
                    cell["gc_pause_total_us"] = figures["gc"]["total_us"]
                    cell["gc_pause_max_us"] = figures["gc"]["max_us"]
                    cell["server_total_p50_us"] = figures["server_total_p50_us"]
                    cell["server_total_p99_us"] = figures["server_total_p99_us"]
                    in_process = onnx if mode != "constant" else constant
                    rows_per_s, cpu_per_row = in_process.at_histogram(histogram)
                    # The machine's load drifts between the start, when the costs by batch size
                    # were measured, and this cell: scale them by single-row runs measured now.
                    scale = in_process.cpu_now() / in_process.cost(1)["cpu_us_per_row"]
                    cell["in_process_cpu_scale_now"] = scale
                    cell["in_process_rows_per_s_at_formed_batches"] = rows_per_s
                    cell["in_process_cpu_us_per_row_at_formed_batches"] = cpu_per_row * scale
                runs[mode][concurrency].append(cell)
                report(model, mode, repeat, cell)

    ratios = []
    for concurrency in args.concurrency:
        r = {m: runs[m][concurrency] for m in runs}
        cpu = "server_cpu_us_per_request"
        onnx_cpu = {m: [c["in_process_cpu_us_per_row_at_formed_batches"] for c in r[m]] for m in MODES[2:]}
        entry: dict[str, Any] = {
            "concurrency": concurrency,
            "cpu_off_vs_echo": paired(r["batching_off"], r["echo"], cpu),
            "cpu_on_vs_echo": paired(r["batching_on"], r["echo"], cpu),
            "cpu_transport_vs_echo": paired(r["transport"], r["echo"], cpu),
            "cpu_off_less_onnxruntime_vs_echo": paired(
                r["batching_off"], r["echo"], cpu, onnx_cpu["batching_off"]
            ),
            "cpu_on_less_onnxruntime_vs_echo": paired(
                r["batching_on"], r["echo"], cpu, onnx_cpu["batching_on"]
            ),
            "p50_off_vs_echo": paired(r["batching_off"], r["echo"], "p50_ms"),
            "p50_on_vs_echo": paired(r["batching_on"], r["echo"], "p50_ms"),
            "p99_off_vs_echo": paired(r["batching_off"], r["echo"], "p99_ms"),
            "p99_on_vs_echo": paired(r["batching_on"], r["echo"], "p99_ms"),
            "p99_transport_vs_echo": paired(r["transport"], r["echo"], "p99_ms"),
            "throughput_on_vs_off": paired(r["batching_on"], r["batching_off"], "throughput_rps"),
            # The same comparison in CPU per request, steadier than requests/s on a shared machine.
            "cpu_on_vs_off": paired(r["batching_on"], r["batching_off"], cpu),
            "served_on_vs_in_process": {
                "median": round(
                    statistics.median(
                        c["throughput_rps"] / c["in_process_rows_per_s_at_formed_batches"]
                        for c in r["batching_on"]
                    ),
                    3,
                )
            },
            # Where the daemon's CPU per request goes at batching off (medians over repeats).
            "cpu_split_us_per_request": cpu_split(r, onnx_cpu),
        }
        if r["gc_off"]:
            entry["p99_gc_off_vs_on"] = paired(r["gc_off"], r["batching_off"], "p99_ms")
            entry["p99_gc_off_vs_echo"] = paired(r["gc_off"], r["echo"], "p99_ms")
        ratios.append(entry)
    return {
        "spec": {"architecture": type(spec).__name__, **dict(vars(spec).items())},
        "request_shape": shape,
        "in_process_cost_by_batch": onnx.table(),
        "in_process_constant_cost_by_batch": constant.table(),
        "cells": {m: [median_cell(runs[m][c]) for c in args.concurrency if runs[m][c]] for m in runs},
        "ratios": ratios,
    }


def cpu_split(r: dict[str, list[dict[str, Any]]], onnx_cpu: dict[str, list[float]]) -> dict[str, Any]:
    """The daemon's CPU per request at batching off as transport + our Python path + the model's
    run: transport is the `transport` server's; the Python path is the constant model's less
    transport less onnxruntime's CPU for the constant graph; the model's run is the rest."""
    key = "server_cpu_us_per_request"
    transport = statistics.median(c[key] for c in r["transport"])
    constant = statistics.median(c[key] for c in r["constant"])
    off = statistics.median(c[key] for c in r["batching_off"])
    python = constant - transport - statistics.median(onnx_cpu["constant"])
    return {
        "total": round(off, 1),
        "transport": round(transport, 1),
        "python_path": round(python, 1),
        "model_run": round(off - transport - python, 1),
        "in_process_onnxruntime_cpu_per_row": round(statistics.median(onnx_cpu["batching_off"]), 1),
        "echo_server": round(statistics.median(c[key] for c in r["echo"]), 1),
    }


def tail(tiny: dict[str, Any]) -> dict[str, Any]:
    """What the tiny model's p99 at c=1 is made of: the daemon's own time for a request (enqueue
    to answer) against the client's, the garbage collector's pauses, and p99 with it off."""
    cells = {m: next(c for c in tiny["cells"][m] if c["concurrency"] == 1) for m in ("echo", "batching_off")}
    c1 = next(r for r in tiny["ratios"] if r["concurrency"] == 1)
    off = cells["batching_off"]
    figures = {
        "client_p99_ms": {"echo": cells["echo"]["p99_ms"], "batching_off": off["p99_ms"]},
        "daemon_p99_us_enqueue_to_answer": off["server_total_p99_us"],
        "gc_collections_per_1000_requests": round(off["gc_collections"] / max(1, off["requests"]) * 1000, 2),
        "gc_pause_max_us": off["gc_pause_max_us"],
        "p99_gc_off_vs_on": c1.get("p99_gc_off_vs_on"),
        "p99_off_vs_echo": c1["p99_off_vs_echo"],
        "p99_transport_vs_echo": c1["p99_transport_vs_echo"],
    }
    gc_share = off["gc_pause_total_us"] / max(1.0, off["requests"] * 0.01 * off["p99_ms"] * 1000)
    figures["finding"] = (
        f"the daemon's own part of a request (enqueue to answer) reaches {off['server_total_p99_us']:.0f} us at its "
        f"p99, against a client p99 of {off['p99_ms'] * 1000:.0f} us (echo: {cells['echo']['p99_ms'] * 1000:.0f} us): "
        + (
            "the tail is outside that path, in the transport and the scheduling of the server's threads "
            "on the shared cores"
            if off["server_total_p99_us"] < 0.25 * off["p99_ms"] * 1000
            else "that path makes a good part of the tail"
        )
        + f"; garbage collections ran {figures['gc_collections_per_1000_requests']} times per "
        f"1000 requests, the longest {off['gc_pause_max_us']:.0f} us (their pauses sum to {gc_share:.0%} of the "
        f"slowest 1% of requests' time), and p99 with the collector off was "
        f"{(c1.get('p99_gc_off_vs_on') or {}).get('median', float('nan')):.2f}x p99 with it on; "
        f"the transport server (the daemon's own server setup answering without serving) had a p99 "
        f"{c1['p99_transport_vs_echo']['median']:.2f}x the echo server's, against "
        f"{c1['p99_off_vs_echo']['median']:.2f}x for the daemon serving the model"
    )
    return figures


def python_path_stages(path: Path) -> dict[str, float]:
    """Where a tiny-model request's microseconds go in the daemon's Python path, each stage timed
    alone in this process (hot caches, so a floor: the served request runs them cold)."""
    import timeit

    from tesserad.api.convert_inference import prediction_to_proto, target_from_proto
    from tesserad.api.convert_tensors import tensors_to_arrays
    from tesserad.serving.pool import ServingDefaults
    from tesserad.serving.signature import validate_request

    pool = ModelPool(ServingDefaults(), None)
    service = InferenceService(FileSource({"tiny_mlp": path}), pool, autoload=False)
    entry = pool.load(servable_file("tiny_mlp-off", 1, "onnx", path), ServingConfig(max_batch_size=1))
    assert entry.batcher is not None and entry.signature is not None
    signature, batcher = entry.signature, entry.batcher
    x = np.zeros((1, 16), dtype=np.float32)
    raw = inference_pb2.PredictRequest(
        target=common_pb2.VersionRef(model="tiny_mlp-off"),
        inputs=[
            common_pb2.Tensor(
                name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[1, 16], data=x.tobytes()
            )
        ],
    ).SerializeToString()
    request = inference_pb2.PredictRequest.FromString(raw)
    inputs = tensors_to_arrays(request.inputs)
    target = target_from_proto(request.target)
    runtime = batcher._runtimes[0]
    prediction = batcher.submit(inputs, ["output"], 1).result()
    response = prediction_to_proto("", "tiny_mlp-off", 1, prediction)
    stages: dict[str, Callable[[], object]] = {
        "parse request": lambda: inference_pb2.PredictRequest.FromString(raw),
        "target_from_proto": lambda: target_from_proto(request.target),
        "tensors_to_arrays (decode)": lambda: tensors_to_arrays(request.inputs),
        "validate_request": lambda: validate_request(signature, inputs, [], "m"),
        "onnxruntime Session.run (OnnxRuntime.run)": lambda: runtime.run(inputs, ["output"]),
        "stats.record_batch": lambda: entry.stats.record_batch(5000, [(0, 6000, 1, False)]),
        # `future` is None only for a version yet to load (this one is loaded): no check for it
        # inside the timed stage.
        # `started` is read only for a request the version refuses.
        "service.submit inline (route, validate, batcher, run, stats)": lambda: service.submit(
            target, inputs, [], None, "", started=0
        ).future.result(),  # type: ignore[union-attr]
        "prediction_to_proto (encode)": lambda: prediction_to_proto("", "tiny_mlp-off", 1, prediction),
        "serialise response": lambda: response.SerializeToString(),
    }
    costs = {}
    for name, stage in stages.items():
        for _ in range(200):
            stage()
        costs[name] = round(min(timeit.repeat(stage, number=2000, repeat=3)) / 2000 * 1e6, 2)

    async def yields(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    asyncio.run(yields(20000))
    costs["asyncio.sleep(0): one event-loop iteration"] = round((time.perf_counter() - t0) / 20000 * 1e6, 2)
    pool.close()
    return costs


def goals(models: dict[str, Any], device: str) -> dict[str, Any]:
    """Each goal with its measured value (median of per-repeat ratios) and whether it is met."""
    met: dict[str, Any] = {}
    if device != "cpu" and "cnn4d" in models:
        for r in models["cnn4d"]["ratios"]:
            if r["concurrency"] >= 8:
                met[f"gpu_cnn4d_c{r['concurrency']}_throughput_on_vs_off"] = _goal(
                    r["throughput_on_vs_off"]["median"],
                    GPU_GOALS["cnn4d_throughput_on_vs_off_at_c8_up"],
                    at_least=True,
                )
            met[f"gpu_cnn4d_c{r['concurrency']}_served_on_vs_in_process"] = _goal(
                r["served_on_vs_in_process"]["median"], GPU_GOALS["cnn4d_served_vs_in_process"], at_least=True
            )
    tiny = models.get("tiny_mlp")
    if tiny:
        c1 = next((r for r in tiny["ratios"] if r["concurrency"] == 1), None)
        if c1:
            met["tiny_c1_cpu_on_vs_echo"] = _goal(
                c1["cpu_on_vs_echo"]["median"], GOALS["tiny_c1_cpu_vs_echo"]
            )
            met["tiny_c1_cpu_off_vs_echo"] = _goal(
                c1["cpu_off_vs_echo"]["median"], GOALS["tiny_c1_cpu_vs_echo"]
            )
            met["tiny_c1_p99_on_vs_echo"] = _goal(
                c1["p99_on_vs_echo"]["median"], GOALS["tiny_c1_p99_vs_echo"]
            )
            met["tiny_c1_p99_off_vs_echo"] = _goal(
                c1["p99_off_vs_echo"]["median"], GOALS["tiny_c1_p99_vs_echo"]
            )
    cnn = models.get("cnn4d")
    if cnn:
        for r in cnn["ratios"]:
            for mode in ("on", "off"):
                met[f"cnn4d_c{r['concurrency']}_cpu_{mode}_less_onnxruntime_vs_echo"] = _goal(
                    r[f"cpu_{mode}_less_onnxruntime_vs_echo"]["median"],
                    GOALS["cnn4d_cpu_less_onnxruntime_vs_echo"],
                )
    for model, figures in models.items():
        for r in figures["ratios"]:
            met[f"{model}_c{r['concurrency']}_throughput_on_vs_off"] = _goal(
                r["throughput_on_vs_off"]["median"], GOALS["throughput_on_vs_off_min"], at_least=True
            )
    return met


def _goal(value: float, bound: float, at_least: bool = False) -> dict[str, Any]:
    return {
        "value": value,
        "goal": f">= {bound}" if at_least else f"<= {bound}",
        "met": value >= bound if at_least else value <= bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="3 s cells, 5 repeats (~15 minutes on 2 cores)")
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="seconds per cell (default 1.5, 3 with --full)"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="repeats of every cell (default 3, 5 with --full)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", default=["tiny_mlp", "cnn4d"], choices=list(model_specs()))
    parser.add_argument(
        "--instances", type=int, default=0, help="instances per served version (0: the default)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda:N, for the daemon and in-process onnxruntime"
    )
    parser.add_argument("--auth-share", action="store_true")
    parser.add_argument(
        "--replicas", type=int, default=0, help="only compare N serving replicas with the daemon they follow"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seconds = args.seconds or (3.0 if args.full else 1.5)
    args.repeats = args.repeats or (5 if args.full else 4)
    if args.replicas:
        replicas_comparison(args)
        return

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    paths = export_models(work, args.models)
    servers = {
        "echo": Server(echo_server_process),
        "transport": Server(daemon_process, work / "transport", {}, args.instances, args.device, True, False),
        "daemon": Server(daemon_process, work / "data", paths, args.instances, args.device, False, False),
    }
    clients = Clients()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "device": args.device,
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
        "goals_as_set": GOALS if args.device == "cpu" else {**GOALS, **GPU_GOALS},
        "models": {},
    }
    if "tiny_mlp" in args.models:
        results["tiny_mlp_python_path_stages_us"] = python_path_stages(paths["tiny_mlp"])
    for model in args.models:
        results["models"][model] = run_model(model, paths, servers, clients, args)
    if args.auth_share and "tiny_mlp" in paths:
        results["auth_interceptor_share"] = auth_share(work, paths, servers, clients, args)
    clients.close()
    for server in servers.values():
        server.stop()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["goals"] = goals(results["models"], args.device)
    if "tiny_mlp" in results["models"]:
        results["tail"] = tail(results["models"]["tiny_mlp"])
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for name, goal in results["goals"].items():
        print(f"{name:55s} {goal['value']:7.3f}  {goal['goal']:8s} {'met' if goal['met'] else 'NOT met'}")
    print(f"wrote {args.out} in {results['wall_s']:.0f} s")


def auth_share(
    work: Path, paths: dict[str, Path], servers: dict[str, Server], clients: Clients, args: argparse.Namespace
) -> dict[str, Any]:
    """Tiny model, concurrency 1, no tokens: the daemon as configured against one whose auth
    interceptor only passes calls on (interleaved, medians)."""
    tiny = {"tiny_mlp": paths["tiny_mlp"]}
    without_auth = Server(
        daemon_process, work / "data-no-auth", tiny, args.instances, args.device, False, True
    )
    runs: dict[str, list[dict[str, Any]]] = {
        "echo": [],
        "with_auth_interceptor": [],
        "pass_through_interceptor": [],
    }
    for repeat in range(args.repeats):
        for name, server in (
            ("echo", servers["echo"]),
            ("with_auth_interceptor", servers["daemon"]),
            ("pass_through_interceptor", without_auth),
        ):
            model = "tiny_mlp" if name == "echo" else "tiny_mlp-off"
            cell = clients.measure(server, model, SHAPES["tiny_mlp"], 1, args.seconds)
            runs[name].append(cell)
            report("tiny_mlp", name, repeat, cell)
    without_auth.stop()
    cells = {name: median_cell(r) for name, r in runs.items()}
    return {
        "cells": cells,
        "cpu_us_per_request_added_by_auth_interceptor": cells["with_auth_interceptor"][
            "server_cpu_us_per_request"
        ]
        - cells["pass_through_interceptor"]["server_cpu_us_per_request"],
        "p50_ms_added_by_auth_interceptor": cells["with_auth_interceptor"]["p50_ms"]
        - cells["pass_through_interceptor"]["p50_ms"],
    }


class _Daemons:
    """`tesserad serve` processes measured as one server (Clients.measure's Server): the target
    they are called at, and their CPU time together."""

    def __init__(self, target: str, pids: list[int]) -> None:
        self.target = target
        self._pids = pids

    def cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self._pids)


def replicas_comparison(args: argparse.Namespace) -> None:
    """Requests/s of `args.replicas` serving replicas (`tesserad serve --follow`, called round
    robin) against the one daemon they follow, on the tiny model, with the CPU each side took."""
    work = Path(tempfile.mkdtemp(prefix="replica-bench-"))
    path = export_models(work, ["tiny_mlp"])["tiny_mlp"]
    primary, address = start_daemon(work / "primary")
    with tessera.Client(address) as client:
        client.models.push("tiny", path)
        client.models.deploy("tiny", {1: 100})
    replicas = [start_daemon(work / f"replica{i}", "--follow", address) for i in range(args.replicas)]
    for _, replica in replicas:
        with grpc.insecure_channel(replica) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # types-grpcio-health-checking declares HealthStub without its Check method.
            check = health.Check  # type: ignore[attr-defined]
            while check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
                time.sleep(0.1)
    servers = {
        "one_daemon": _Daemons(address, [primary.pid]),
        "replicas": _Daemons("ipv4:" + ",".join(r for _, r in replicas), [p.pid for p, _ in replicas]),
    }
    clients = Clients()
    concurrency = max(args.concurrency)
    # Not recorded: the client processes' start-up (imports) would count as the first cell's CPU.
    for server in servers.values():
        clients.measure(server, "tiny", SHAPES["tiny_mlp"], concurrency, 0.5)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for repeat in range(args.repeats):
        for name in list(servers)[repeat % 2 :] + list(servers)[: repeat % 2]:
            client_cpu = clients.cpu_s()
            cell = clients.measure(servers[name], "tiny", SHAPES["tiny_mlp"], concurrency, args.seconds)
            cell["client_cpu_us_per_request"] = (
                (clients.cpu_s() - client_cpu) / max(cell["requests"], 1) * 1e6
            )
            runs[name].append(cell)
            report("tiny_mlp", name, repeat, cell)
    clients.close()
    for process, _ in [(primary, address), *replicas]:
        process.terminate()
        process.wait(30)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "note": (
            f"{args.replicas} replicas and the daemon they follow run on this machine with the load "
            "generator: on 2 cores they all share the same CPUs, so this measures what a replica "
            "costs (following, round robin over connections), not scaling"
        ),
        "concurrency": concurrency,
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
        "cells": {name: median_cell(cells) for name, cells in runs.items()},
        "replicas_vs_one_daemon_throughput": paired(runs["replicas"], runs["one_daemon"], "throughput_rps"),
    }
    out = REPLICA_RESULTS if args.out == RESULTS else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Training through tesserad beside a plain torch loop, and LogMetrics ingest over gRPC, in one run.

1. samples/s of a cnn4d job run by the daemon (spawned worker, events, checkpoints) beside the
   same model, data, batch size, optimiser and thread count in a bare in-process torch loop.
   Goal: daemon >= 95% of the plain loop. Steady state: the first logging window (warm-up,
   allocator growth) is left out of both. Single runs of this tiny model swing +-15% on 2
   shared cores, so the two run in adjacent pairs over many rounds (which goes first
   alternates, so drift favours neither) and the figure to read is the median of the
   per-round ratios; the ratio of the medians and of the best runs are reported beside it. The worker gets tesserad.runtime_env's environment
   (glibc malloc tunables) as every daemon job does; the plain loop runs with this process's.
2. LogMetrics ingest in points/s over gRPC: client-streamed batches, unary batches, and one
   point per call. Goal: >= 100,000 points/s.

3. With --backend ray: the same cnn4d job through the Ray backend (a one-node Ray cluster
   started here, `ray start --head`, with one CPU) beside it through the local backend, in
   alternating pairs (--rounds of them). Goal: Ray >= 0.9 of local samples/s. The figures to
   read are medians of the per-round ratios (Ray over local): samples/s (wall), CPU ms per
   step, and the time from SubmitJob to the first step event. CPU per step is counted over
   the steady steps for the worker process, the daemon (this process: the daemon runs in it)
   and, for Ray, the rest of the Ray cluster (raylet, GCS and their helpers: every process
   of the cluster's process group but the worker); its sum is the job's whole CPU cost per step.

Run: .venv/bin/python bench/train_bench.py  ->  bench/results/train_bench.json
     .venv/bin/python bench/train_bench.py --backend ray  ->  bench/results/train_bench_ray.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import torch
import torch.nn.functional as F
from ray_process import start_ray, stop_ray

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.config import load_settings
from tesserad.nn import build_model, spec_from_dict
from tesserad.server import create_server

RESULTS = Path(__file__).parent / "results" / "train_bench.json"
RAY_RESULTS = Path(__file__).parent / "results" / "train_bench_ray.json"
RAY_ROUNDS = 8
THREADS = 2
BATCH = 16
STEPS = 300
ROUNDS = 10
LOG_EVERY = 20
SAMPLES = 256
INPUT_SHAPE = [1, 4, 8, 8, 8]  # (C, T, D, H, W)
CHANNELS = [4, 8]


class Daemon:
    """tesserad on its own event-loop thread, on 127.0.0.1:0 with a temporary data directory."""

    def __init__(self, data_dir: Path, **extra: Any) -> None:
        settings = load_settings(
            env={},
            overrides={
                "listen": "127.0.0.1:0",
                "metrics_listen": "off",
                "http_listen": "off",
                "data_dir": str(data_dir),
                "store.map_size": "2GiB",
                "training.cpu_slots": 1,
                "training.threads_per_slot": THREADS,
                **extra,
            },
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = create_server(settings)
        self.run(self.daemon.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.daemon.port}")

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(300)

    def stop(self) -> None:
        self.channel.close()
        self.run(self.daemon.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, *INPUT_SHAPE)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3, 4, 5)) > 0).astype(np.int64)
    return x, y


def architecture() -> dict[str, Any]:
    return {"family": "cnn4d", "input_shape": INPUT_SHAPE, "output_size": 2, "channels": CHANNELS}


def plain_loop(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The same training, written as anyone would in a script: no daemon, no events."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model(spec_from_dict(architecture()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)
    windows: list[tuple[int, float]] = []
    step, window_start, window_samples = 0, time.perf_counter(), 0
    while step < STEPS:
        order = torch.randperm(SAMPLES, generator=generator)
        for first in range(0, SAMPLES, BATCH):
            if step >= STEPS:
                break
            index = order[first : first + BATCH]
            loss = F.cross_entropy(model(inputs[index]), targets[index])
            loss.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
            step += 1
            window_samples += len(index)
            if step % LOG_EVERY == 0:
                now = time.perf_counter()
                windows.append((window_samples, now - window_start))
                window_start, window_samples = now, 0
    return _steady(windows)


def _steady(windows: list[tuple[int, float]]) -> dict[str, float]:
    steady = windows[1:]
    samples = sum(n for n, _ in steady)
    seconds = sum(s for _, s in steady)
    return {"samples_per_s": samples / seconds, "windows": len(steady)}


def upload(daemon: Daemon, x: np.ndarray, y: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    header = datasets_pb2.UploadDatasetHeader(name="bench-clips", format=datasets_pb2.DATASET_FORMAT_NPZ)
    data = buffer.getvalue()
    chunks = [
        datasets_pb2.UploadDatasetRequest(chunk=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)
    ]
    datasets_pb2_grpc.DatasetsStub(daemon.channel).UploadDataset(
        iter([datasets_pb2.UploadDatasetRequest(header=header), *chunks])
    )


def group_cpu_s(group: int, but: int) -> float:
    """CPU seconds of the processes of a process group (the Ray cluster's) except `but`."""
    total = 0.0
    for process in psutil.process_iter():
        try:
            if process.pid == but or os.getpgid(process.pid) != group:
                continue
            times = process.cpu_times()
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def daemon_job(daemon: Daemon, ray_group: int | None = None) -> dict[str, float]:
    arch = architecture_pb2.Architecture(
        input_shape=INPUT_SHAPE, output_size=2, cnn4d=architecture_pb2.Cnn4dSpec(channels=CHANNELS)
    )
    spec = job_spec_pb2.JobSpec(
        experiment="bench",
        architecture=arch,
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="bench-clips")),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=1e-3),
        max_steps=STEPS,
        batch_size=BATCH,
        seed=0,
        log_every_n_steps=LOG_EVERY,
    )
    training = training_pb2_grpc.TrainingStub(daemon.channel)
    started = time.perf_counter()
    job = training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
    windows = []
    previous = None
    final_state = None
    first_step_s = 0.0
    worker: psutil.Process | None = None
    # CPU seconds (worker, daemon, the rest of the Ray cluster) at the first step event and the
    # one before the last: the steady steps between, while the worker surely still runs (it may
    # have exited by the time the last event arrives).
    cpu_at: list[tuple[float, float, float]] = []
    for event in training.WatchJob(training_pb2.WatchJobRequest(job_id=job.job_id), timeout=600):
        kind = event.WhichOneof("event")
        if kind == "log" and (placed := re.search(r"^placed on Ray node .* pid (\d+)$", event.log.message)):
            worker = psutil.Process(int(placed.group(1)))
        elif kind == "step":
            if previous is None:
                first_step_s = time.perf_counter() - started
                worker = worker or _local_worker()
            # samples_per_s covers the window since the previous step event.
            windows.append((LOG_EVERY * BATCH, LOG_EVERY * BATCH / event.step.samples_per_s))
            previous = event.step.step
            if previous in (LOG_EVERY, STEPS - LOG_EVERY) and worker is not None:
                times = worker.cpu_times()
                cluster = group_cpu_s(ray_group, worker.pid) if ray_group is not None else 0.0
                cpu_at.append((times.user + times.system, time.process_time(), cluster))
        elif kind == "state":
            final_state = training_pb2.JobState.Name(event.state.state)
    wall = time.perf_counter() - started
    assert final_state == "JOB_STATE_SUCCEEDED", training.GetJob(
        training_pb2.GetJobRequest(job_id=job.job_id)
    ).error
    assert previous == STEPS
    steps = STEPS - 2 * LOG_EVERY
    first, last = cpu_at
    worker_ms, daemon_ms, cluster_ms = (1000 * (b - a) / steps for a, b in zip(first, last, strict=True))
    return {
        **_steady(windows),
        "job_wall_s": wall,
        "submit_to_first_step_s": first_step_s,
        "worker_cpu_ms_per_step": worker_ms,
        "daemon_cpu_ms_per_step": daemon_ms,
        "ray_cluster_cpu_ms_per_step": cluster_ms,
        "total_cpu_ms_per_step": worker_ms + daemon_ms + cluster_ms,
    }


def _local_worker() -> psutil.Process:
    """The local backend's worker: forked by the fork server of this process (the daemon runs in
    it), or under training.worker_start = spawn its spawned child."""

    def is_worker(process: psutil.Process) -> bool:
        parent = process.parent()
        return "spawn_main" in " ".join(process.cmdline()) or (
            parent is not None and parent.pid != os.getpid() and "forkserver" in " ".join(parent.cmdline())
        )

    workers = [p for p in psutil.Process().children(recursive=True) if is_worker(p)]
    assert len(workers) == 1, workers
    return workers[0]


def ingest(daemon: Daemon) -> dict[str, float]:
    training = training_pb2_grpc.TrainingStub(daemon.channel)
    out: dict[str, float] = {}

    def batches(
        run_id: str, count: int, size: int, key: str = "loss"
    ) -> list[training_pb2.LogMetricsRequest]:
        return [
            training_pb2.LogMetricsRequest(
                run_id=run_id,
                points=[
                    training_pb2.MetricPoint(key=key, value=float(i), step=b * size + i) for i in range(size)
                ],
            )
            for b in range(count)
        ]

    run = training.CreateRun(training_pb2.CreateRunRequest(experiment="ingest")).run_id
    requests = batches(run, 200, 1000)
    started = time.perf_counter()
    accepted = training.LogMetricsStream(iter(requests)).accepted
    out["stream_1000_per_batch_points_per_s"] = accepted / (time.perf_counter() - started)

    run = training.CreateRun(training_pb2.CreateRunRequest(experiment="ingest")).run_id
    requests = batches(run, 100, 1000)
    started = time.perf_counter()
    futures = [training.LogMetrics.future(r) for r in requests]
    accepted = sum(f.result().accepted for f in futures)
    out["unary_1000_per_call_concurrent_points_per_s"] = accepted / (time.perf_counter() - started)

    run = training.CreateRun(training_pb2.CreateRunRequest(experiment="ingest")).run_id
    requests = batches(run, 50, 1000)
    started = time.perf_counter()
    accepted = sum(training.LogMetrics(r).accepted for r in requests)
    out["unary_1000_per_call_sequential_points_per_s"] = accepted / (time.perf_counter() - started)

    run = training.CreateRun(training_pb2.CreateRunRequest(experiment="ingest")).run_id
    requests = batches(run, 300, 1)
    started = time.perf_counter()
    accepted = sum(training.LogMetrics(r).accepted for r in requests)
    out["unary_1_per_call_sequential_points_per_s"] = accepted / (time.perf_counter() - started)
    return out


def ray_main(rounds: int) -> None:
    """The same job through the Ray backend and the local one, in alternating pairs."""
    x, y = make_data()
    # A SIGTERM (a timeout) still stops the Ray cluster started below.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(1))
    temp = Path(tempfile.mkdtemp(prefix="tbray"))
    address, group = start_ray(temp)
    load_at_start = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Daemon(Path(tmp) / "local")
            ray = Daemon(Path(tmp) / "ray", **{"training.backend": "ray", "training.ray_address": address})
            try:
                for daemon in (local, ray):
                    upload(daemon, x, y)
                local_runs, ray_runs = [], []
                for round_index in range(rounds):
                    if round_index % 2:
                        ray_runs.append(daemon_job(ray, group))
                        local_runs.append(daemon_job(local))
                    else:
                        local_runs.append(daemon_job(local))
                        ray_runs.append(daemon_job(ray, group))
            finally:
                ray.stop()
                local.stop()
    finally:
        stop_ray(group)
        shutil.rmtree(temp, ignore_errors=True)

    keys = (
        "samples_per_s",
        "submit_to_first_step_s",
        "worker_cpu_ms_per_step",
        "daemon_cpu_ms_per_step",
        "ray_cluster_cpu_ms_per_step",
        "total_cpu_ms_per_step",
        "job_wall_s",
    )

    def figures(runs: list[dict[str, float]]) -> dict[str, Any]:
        return {key: [round(r[key], 3) for r in runs] for key in keys} | {
            f"median_{key}": round(statistics.median(r[key] for r in runs), 3) for key in keys
        }

    def ratios(key: str) -> dict[str, Any]:
        per_round = [r[key] / o[key] for r, o in zip(ray_runs, local_runs, strict=True)]
        return {
            "per_round": [round(r, 3) for r in per_round],
            "median": round(statistics.median(per_round), 3),
        }

    result = {
        "machine": {
            "cpu_cores": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
        "job": {
            "model": architecture(),
            "batch_size": BATCH,
            "steps": STEPS,
            "threads": THREADS,
            "rounds": rounds,
        },
        "local": figures(local_runs),
        "ray": figures(ray_runs),
        "ray_over_local": {
            "samples_per_s": ratios("samples_per_s"),
            "worker_cpu_ms_per_step": ratios("worker_cpu_ms_per_step"),
            "total_cpu_ms_per_step": ratios("total_cpu_ms_per_step"),
            "submit_to_first_step_s": ratios("submit_to_first_step_s"),
        },
        "goal_ray_over_local_samples_per_s": 0.9,
    }
    RAY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RAY_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    x, y = make_data()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp) / "data")
        try:
            upload(daemon, x, y)
            plain_runs, daemon_runs = [], []
            for round_index in range(ROUNDS):
                if round_index % 2:
                    daemon_runs.append(daemon_job(daemon))
                    plain_runs.append(plain_loop(x, y))
                else:
                    plain_runs.append(plain_loop(x, y))
                    daemon_runs.append(daemon_job(daemon))
            metrics = ingest(daemon)
        finally:
            daemon.stop()
    plain_rates = [r["samples_per_s"] for r in plain_runs]
    daemon_rates = [r["samples_per_s"] for r in daemon_runs]
    round_ratios = [d / p for d, p in zip(daemon_rates, plain_rates, strict=True)]
    result = {
        "machine": {
            "cpu_cores": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "cnn4d_training": {
            "model": architecture(),
            "batch_size": BATCH,
            "steps": STEPS,
            "rounds": ROUNDS,
            "threads": THREADS,
            "plain_loop_runs_samples_per_s": [round(r, 1) for r in plain_rates],
            "daemon_runs_samples_per_s": [round(r, 1) for r in daemon_rates],
            "daemon_over_plain_per_round": [round(r, 3) for r in round_ratios],
            "daemon_over_plain_median_of_rounds": round(statistics.median(round_ratios), 3),
            "daemon_over_plain_of_medians": round(
                statistics.median(daemon_rates) / statistics.median(plain_rates), 3
            ),
            "daemon_over_plain_best_runs": round(max(daemon_rates) / max(plain_rates), 3),
            "goal_daemon_over_plain": 0.95,
            "daemon_job_wall_s_including_spawn": [round(r["job_wall_s"], 2) for r in daemon_runs],
        },
        "log_metrics_ingest": {
            **{k: round(v) for k, v in metrics.items()},
            "goal_points_per_s": 100_000,
            "reference_mlflow_sqlite_batched_points_per_s": 10_800,
            "reference_mlflow_sqlite_one_per_call_points_per_s": 289,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: the daemon's job beside a plain torch loop, and metric ingest; "
        "ray: the Ray backend's job beside the local backend's",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=RAY_ROUNDS,
        help=f"with --backend ray: pairs of jobs, one per backend (default {RAY_ROUNDS})",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.backend == "ray":
        ray_main(args.rounds)
    else:
        main()

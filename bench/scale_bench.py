"""Reads and writes as the data grows: metric history, ingest and job-event replay, in one run.

Starts `tesserad serve` in a temp data directory and measures, over real gRPC:

- metrics: for each size (10k, 100k, 1M points of one key in one run) the ingest rate through
  LogMetricsStream (batches of 1,000 points), then GetMetricHistory with max_points=1000
  (`--repeats` calls) and a full read of every point through the SDK, which reassembles the
  pages (`--full-repeats` calls);
- events: for each size (10k, 100k, 1M events of one job) a WatchJob replay from the start,
  with the daemon's RSS before, at its peak (sampled every 20 ms) and after, split into
  anonymous memory (the heap) and file-backed pages (the store's memory map). The events are
  written through the daemon's event log API into the store of a stopped daemon (a job that
  ran a million steps would take hours), then the daemon is started again on that store.

Every figure is wall time beside the daemon's CPU time (user + system, from /proc; its clock
ticks are 10 ms, so CPU is given per call as the total over the repeats divided by their
number). Reads of the different sizes run in turns, so that a slow spell of the shared machine
moves them alike; the downsampled ratio is also given as the median of per-turn ratios.
Latencies are p50/p99 of the repeats (nearest rank: with fewer than 100 repeats p99 is the
slowest). Each section is one function in `SECTIONS` with its own daemon and JSON key; the
registry rows of issue 21 are to be added as another.
Writes bench/results/scale_bench.json.

    .venv/bin/python bench/scale_bench.py [--sizes 10000 100000 1000000] [--sections metrics events]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from daemon_process import start_daemon as start_process

import tessera
from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    training_pb2,
    training_pb2_grpc,
)

RESULTS = Path(__file__).parent / "results" / "scale_bench.json"
BATCH = 1000  # points per LogMetricsRequest
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process: all, anonymous (heap) and file-backed (the store's mapped pages)."""
    fields = {"VmRSS:": "total", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(maxsplit=1)[0] if line else ""
        if name in fields:
            out[fields[name]] = int(line.split()[1]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class RssPeak:
    """Samples a process's RSS (each kind's peak on its own) while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> RssPeak:
        self.start = rss(self.pid)
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._update(rss(self.pid))

    def _update(self, sample: dict[str, int]) -> None:
        self.peak = {kind: max(self.peak[kind], sample[kind]) for kind in self.peak}

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss(self.pid)
        self._update(self.end)

    def report(self) -> dict[str, dict[str, float]]:
        """MB before, at the peak and after, per kind."""
        return {
            kind: {
                "before": round(self.start[kind] / 2**20, 1),
                "peak": round(self.peak[kind] / 2**20, 1),
                "after": round(self.end[kind] / 2**20, 1),
                "peak_growth": round((self.peak[kind] - self.start[kind]) / 2**20, 1),
            }
            for kind in self.start
        }


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def start_daemon(data_dir: Path) -> Daemon:
    return Daemon(*start_process(data_dir))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def interleaved(
    daemon: Daemon, calls: dict[int, Callable[[], Any]], repeats: int
) -> dict[int, dict[str, Any]]:
    """Each call `repeats` times (after one warm-up each), in turns, so that a slow spell of the
    shared machine moves every size alike: p50/p99 wall ms and the daemon's CPU ms per call, and
    each repeat's wall time for the paired ratios."""
    for call in calls.values():
        call()
    walls: dict[int, list[float]] = {size: [] for size in calls}
    cpu = dict.fromkeys(calls, 0.0)
    for _ in range(repeats):
        for size, call in calls.items():
            before, started = cpu_seconds(daemon.pid), time.perf_counter()
            call()
            walls[size].append(time.perf_counter() - started)
            cpu[size] += cpu_seconds(daemon.pid) - before
    return {
        size: {
            "p50_ms": round(percentile(walls[size], 50) * 1e3, 2),
            "p99_ms": round(percentile(walls[size], 99) * 1e3, 2),
            "daemon_cpu_ms_per_call": round(cpu[size] / repeats * 1e3, 2),
            "repeats": repeats,
            "walls": walls[size],
        }
        for size in calls
    }


def paired_ratio(large: list[float], small: list[float]) -> dict[str, Any]:
    """Per-repeat ratios of two interleaved series (neighbours in time) and their median."""
    each = [a / b for a, b in zip(large, small, strict=True)]
    return {"median": round(statistics.median(each), 2), "p99": round(percentile(each, 99), 2)}


# -- metrics


def metric_batches(run_id: str, points: int) -> Iterator[training_pb2.LogMetricsRequest]:
    """A noisy falling loss curve, one point per step, BATCH points per request."""
    rng = np.random.default_rng(0)
    for first in range(0, points, BATCH):
        steps = np.arange(first, min(first + BATCH, points))
        values = 1.0 / (1.0 + steps / 1000.0) + rng.normal(0, 0.01, len(steps))
        yield training_pb2.LogMetricsRequest(
            run_id=run_id,
            points=[
                training_pb2.MetricPoint(key="loss", value=float(v), step=int(s))
                for s, v in zip(steps, values, strict=True)
            ],
        )


def bench_metrics(daemon: Daemon, args: argparse.Namespace) -> dict[str, Any]:
    channel = grpc.insecure_channel(daemon.address, options=[("grpc.max_receive_message_length", 2**31 - 1)])
    stub = training_pb2_grpc.TrainingStub(channel)
    client = tessera.Client(daemon.address)
    rows: dict[int, dict[str, Any]] = {}
    downsampled: dict[int, Callable[[], Any]] = {}
    full: dict[int, Callable[[], Any]] = {}
    for points in args.sizes:
        run_id = stub.CreateRun(training_pb2.CreateRunRequest(experiment="scale-bench")).run_id
        # Requests are built before the clock starts: the figure is the daemon's, not protobuf's.
        requests = list(metric_batches(run_id, points))
        cpu = cpu_seconds(daemon.pid)
        started = time.perf_counter()
        accepted = stub.LogMetricsStream(iter(requests), timeout=3600).accepted
        ingest_s = time.perf_counter() - started
        cpu = cpu_seconds(daemon.pid) - cpu
        assert accepted == points, (accepted, points)
        del requests
        rows[points] = {
            "points": points,
            "ingest": {
                "points_per_s": round(points / ingest_s),
                "daemon_cpu_us_per_point": round(cpu / points * 1e6, 2),
                "batch_points": BATCH,
            },
        }

        def read_downsampled(run_id: str = run_id, stored: int = points) -> None:
            history = stub.GetMetricHistory(
                training_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=1000)
            )
            assert history.total_points == stored and len(history.points) <= 1000

        def read_every_point(run_id: str = run_id, stored: int = points) -> None:
            assert len(client.training.metric_history(run_id, "loss").points) == stored

        downsampled[points], full[points] = read_downsampled, read_every_point
    for name, calls, repeats in (
        ("history_max_points_1000", downsampled, args.repeats),
        ("history_every_point", full, args.full_repeats),
    ):
        for points, figures in interleaved(daemon, calls, repeats).items():
            rows[points][name] = figures
    client.close()
    channel.close()
    small, large = rows[min(rows)], rows[max(rows)]
    ratio = paired_ratio(large["history_max_points_1000"]["walls"], small["history_max_points_1000"]["walls"])
    for row in rows.values():
        for name in ("history_max_points_1000", "history_every_point"):
            del row[name]["walls"]
        print(json.dumps(row), flush=True)
    return {
        "rows": list(rows.values()),
        "downsampled_ratio_largest_vs_smallest": {
            "of_p50s": round(
                large["history_max_points_1000"]["p50_ms"] / small["history_max_points_1000"]["p50_ms"], 2
            ),
            "paired_by_repeat": ratio,
        },
        "goals": {"downsampled_p50_ms_at_1m": 50, "downsampled_ratio_1m_vs_10k": 2},
    }


# -- events


def submit_ended_job(channel: grpc.Channel) -> str:
    """A job that ends at once (cancelled while queued), to carry the written events."""
    stub = training_pb2_grpc.TrainingStub(channel)
    spec = job_spec_pb2.JobSpec(
        experiment="scale-bench",
        architecture=architecture_pb2.Architecture(
            input_shape=[4], output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=[8])
        ),
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="scale-bench")),
        epochs=1,
        batch_size=8,
    )
    job = stub.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
    stub.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
    for _ in stub.WatchJob(training_pb2.WatchJobRequest(job_id=job.job_id), timeout=120):
        pass
    return job.job_id


def upload_tiny_dataset(channel: grpc.Channel) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((16, 4), np.float32), y=np.zeros(16, np.int64))
    header = datasets_pb2.UploadDatasetHeader(name="scale-bench", format=datasets_pb2.DATASET_FORMAT_NPZ)
    requests = [
        datasets_pb2.UploadDatasetRequest(header=header),
        datasets_pb2.UploadDatasetRequest(chunk=buffer.getvalue()),
    ]
    datasets_pb2_grpc.DatasetsStub(channel).UploadDataset(iter(requests))


def write_step_events(data_dir: Path, job_id: str, count: int) -> None:
    """Append `count` step events to a stopped daemon's job through the event log."""
    from tesserad.config import load_settings
    from tesserad.server import STORE_TABLES
    from tesserad.store import Store, decode_record, encode_record
    from tesserad.training.events import EventLog

    settings = load_settings(env={}, overrides={"data_dir": str(data_dir)})
    store = Store.open(data_dir / "store", map_size=settings.store.map_size, tables=STORE_TABLES)
    try:
        with store.read() as txn:
            raw = txn.get("jobs", (job_id,))
            assert raw is not None
            job = decode_record(raw, "job", 1)[1]
        log = EventLog(store, settings.training.watch_buffer_events)
        log.open_job(job_id, job["last_seq"], True)

        def record_last_seq(txn: Any, event: Any) -> None:
            txn.put("jobs", (job_id,), encode_record("job", 1, {**job, "last_seq": event.seq}))

        for step in range(1, count + 1):
            data = {"epoch": 1, "step": step, "loss": 1.0 / step, "lr": 0.01, "samples_per_s": 5000.0}
            log.append(job_id, 1, "step", data, also=record_last_seq if step == count else None)
        store.flush()
    finally:
        store.close()


def bench_events(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    daemon = start_daemon(data_dir)
    channel = grpc.insecure_channel(daemon.address)
    upload_tiny_dataset(channel)
    jobs = {count: submit_ended_job(channel) for count in args.sizes}
    channel.close()
    daemon.stop()
    written = {}
    for count, job_id in jobs.items():
        started = time.perf_counter()
        write_step_events(data_dir, job_id, count)
        written[count] = round(count / (time.perf_counter() - started))

    daemon = start_daemon(data_dir)
    channel = grpc.insecure_channel(daemon.address)
    stub = training_pb2_grpc.TrainingStub(channel)
    rows = []
    try:
        for count, job_id in jobs.items():
            cpu = cpu_seconds(daemon.pid)
            with RssPeak(daemon.pid) as memory:
                started = time.perf_counter()
                received = sum(
                    1 for _ in stub.WatchJob(training_pb2.WatchJobRequest(job_id=job_id), timeout=3600)
                )
                replay_s = time.perf_counter() - started
            cpu = cpu_seconds(daemon.pid) - cpu
            assert received >= count, (received, count)
            row = {
                "events": received,
                "replay_s": round(replay_s, 2),
                "events_per_s": round(received / replay_s),
                "daemon_cpu_s": round(cpu, 2),
                "daemon_rss_mb": memory.report(),
                "written_per_s": written[count],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        channel.close()
        daemon.stop()
    return {"rows": rows}


# Each section measures one part on its own daemon and returns its JSON.
SECTIONS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "metrics": lambda data_dir, args: _with_daemon(data_dir, args, bench_metrics),
    "events": bench_events,
}


def _with_daemon(
    data_dir: Path, args: argparse.Namespace, section: Callable[[Daemon, argparse.Namespace], dict[str, Any]]
) -> dict[str, Any]:
    daemon = start_daemon(data_dir)
    try:
        return section(daemon, args)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=100, help="downsampled reads per size")
    parser.add_argument("--full-repeats", type=int, default=5, help="full reads per size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "scale_bench",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {k: v for k, v in vars(args).items() if k != "out"},
    }
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for name in args.sections:
            result[name] = SECTIONS[name](Path(tmp) / name, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

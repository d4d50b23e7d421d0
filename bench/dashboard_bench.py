"""The dashboard: time to first render of the Job page, and training throughput while watched.

1. Time to first render of the Job page in headless Chromium (Debian's, via Playwright) for a
   job whose run holds 10k, 100k and 1M loss points, written through LogMetricsStream in
   batches while the job runs. Measured from navigation start to the page's "rendered"
   performance mark (the job fetched, the run's histories fetched downsampled by the store,
   both charts drawn). Goal: < 1 s at 1M. Median of REPEATS fresh page loads each.
2. Training throughput of one job with 20 Job-page event streams (server-sent events, each
   following the job live) against none. Goal: >= 0.98. The daemon runs as its own process
   and the 20 streams are read by threads of this one, so the daemon's CPU time is its own.
   Single jobs swing on 2 shared cores, so the two run in adjacent pairs (which goes first
   alternates) and each figure is the median of the per-pair ratios. Over the steady state
   (all but the first third of the steps) each run reports:
   - wall clock: the worker's own samples/s (median over its logging windows), and the rate
     from the daemon's time stamps of step events beside it; ratio = watched / none.
   - cost: CPU time per training sample of the worker process and of the daemon process, and
     their total; cpu_ratio = none / watched of the total (with worker and daemon ratios
     beside it). Where training is CPU-bound this is the throughput ratio, and unlike wall
     clock it holds steady while other work shares the machine.
   Every watched run asserts that each stream received events. Run with the spec's default
   logging (every 10 steps) and with every step logged, the most events a job can send.

Run: .venv/bin/python bench/dashboard_bench.py [render | throughput]  ->  bench/results/dashboard.json
With a part named, only that part runs; the other part's figures are kept from the file and
listed under "from_an_earlier_run".
"""

from __future__ import annotations

import http.client
import json
import platform
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
from daemon_process import start_daemon_logged

import tessera
from tessera.v1 import training_pb2, training_pb2_grpc
from tesserad.config import load_settings

RESULTS = Path(__file__).parent / "results" / "dashboard.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIZES = (10_000, 100_000, 1_000_000)
BATCH_POINTS = 10_000
REPEATS = 5
WATCHERS = 20
PAIRS = 5
EPOCHS = 30  # about 1750 steps of BATCH rows
BATCH = 32
# The spec's default (a step event every 10 steps), and every step: the most events a job sends.
LOG_EVERY = (10, 1)


def in_process_daemon(data_dir: Path) -> Any:
    """tesserad with its dashboard on its own event-loop thread (the tests' InProcessDaemon), on
    free ports, in `data_dir`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import InProcessDaemon

    settings = load_settings(
        env={},
        overrides={
            "listen": "127.0.0.1:0",
            "metrics_listen": "off",
            "http_listen": "127.0.0.1:0",
            "data_dir": str(data_dir),
            "store.map_size": "4GiB",
            "training.cpu_slots": 1,
            "training.threads_per_slot": 1,
        },
    )
    return InProcessDaemon(settings).start()


def spec(dataset: str, epochs: int, hidden: list[int], log_every: int = 1) -> dict[str, Any]:
    return {
        "experiment": "dashboard-bench",
        "architecture": {"input_shape": [32], "output_size": 2, "mlp": {"hidden_sizes": hidden}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "optimizer": {"name": "adam", "lr": 0.001},
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": 0,
        "log_every_n_steps": log_every,
    }


def wait_running(client: tessera.Client, job_id: str) -> None:
    while client.training.job(job_id).info.step < 1:
        time.sleep(0.05)


def log_points(stub: training_pb2_grpc.TrainingStub, run_id: str, count: int) -> float:
    """`count` loss points at steps 1..count, in batches; returns points/s."""
    rng = np.random.default_rng(0)
    values = np.exp(-np.arange(count) / (count / 5)) + rng.normal(scale=0.05, size=count)

    def batches() -> Any:
        for first in range(0, count, BATCH_POINTS):
            yield training_pb2.LogMetricsRequest(
                run_id=run_id,
                points=[
                    training_pb2.MetricPoint(key="loss", value=float(values[i]), step=i + 1)
                    for i in range(first, min(count, first + BATCH_POINTS))
                ],
            )

    started = time.perf_counter()
    stub.LogMetricsStream(batches(), timeout=600)
    return count / (time.perf_counter() - started)


def first_render(browser: Any, url: str) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-rendered]", timeout=60_000)
        mark = page.evaluate("performance.getEntriesByName('rendered')[0].startTime")
        drawn = int(page.get_attribute("#loss-chart", "data-points") or 0)
        return {"ms": float(mark), "points_drawn": drawn}
    finally:
        context.close()


def render_times(daemon: Any, client: tessera.Client, dataset: str) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    channel = grpc.insecure_channel(daemon.target)
    stub = training_pb2_grpc.TrainingStub(channel)
    jobs: list[tuple[int, str, float]] = []
    for size in SIZES:
        # A job that would train for hours: its run stays RUNNING while the points are logged,
        # then it is cancelled so that no training competes with the page loads.
        job = client.training.submit(spec(dataset, epochs=100_000, hidden=[8], log_every=1000))
        wait_running(client, job.id)
        rate = log_points(stub, job.info.run_id, size)
        client.training.cancel(job.id)
        client.training.job(job.id).wait(check=False)
        jobs.append((size, job.id, rate))
    channel.close()
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for size, job_id, rate in jobs:
            url = f"http://127.0.0.1:{daemon.daemon.http_port}/jobs/{job_id}"
            first_render(browser, url)  # warm: the browser's caches and the store's pages
            runs = [first_render(browser, url) for _ in range(REPEATS)]
            times = [r["ms"] for r in runs]
            results.append(
                {
                    "points": size,
                    "log_points_per_s": round(rate),
                    "first_render_ms_median": round(statistics.median(times), 1),
                    "first_render_ms_max": round(max(times), 1),
                    "first_render_ms_all": [round(t, 1) for t in times],
                    "points_drawn": runs[0]["points_drawn"],
                    "goal_met": size != 1_000_000 or statistics.median(times) < 1000,
                }
            )
            print(json.dumps(results[-1]), flush=True)
        browser.close()
    return results


def follow(port: int, job_id: str, stop: threading.Event, counts: list[int]) -> None:
    """One Job page's event stream: read every event until the job ends."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("GET", f"/api/v1/jobs/{job_id}/events")
    response = connection.getresponse()
    events = 0
    for line in response:
        if line.startswith(b"event: "):
            events += 1
            if line.startswith(b"event: end"):
                break
        if stop.is_set():
            break
    counts.append(events)
    connection.close()


class DaemonProcess:
    """`tesserad serve` as its own process (dashboard on), so its CPU time is its alone."""

    def __init__(self, data_dir: Path) -> None:
        config = data_dir.parent / "tesserad.toml"
        config.write_text('[store]\nmap_size = "4GiB"\n[training]\ncpu_slots = 1\nthreads_per_slot = 1\n')
        self.popen, serving = start_daemon_logged(
            data_dir, "--config", str(config), "--http-listen", "127.0.0.1:0"
        )
        self.process = psutil.Process(self.popen.pid)
        self.target = serving["address"]
        self.http_port = int(serving["dashboard"].rsplit(":", 1)[1])

    def worker(self) -> psutil.Process | None:
        """The running job's worker: the daemon's spawned child (not its resource tracker)."""
        for child in self.process.children():
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(60)


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def train_once(
    daemon: DaemonProcess, client: tessera.Client, dataset: str, watchers: int, log_every: int
) -> dict[str, float]:
    job = client.training.submit(spec(dataset, epochs=EPOCHS, hidden=[512, 512], log_every=log_every))
    stop = threading.Event()
    counts: list[int] = []
    threads = [
        threading.Thread(target=follow, args=(daemon.http_port, job.id, stop, counts), daemon=True)
        for _ in range(watchers)
    ]
    for thread in threads:
        thread.start()
    # (daemon time stamp, step, worker's samples/s, worker CPU s, daemon CPU s) at each step
    # event as it arrives here; the CPU readings lag the step by the event's delivery alike in
    # both arms of a pair.
    steps: list[tuple[float, int, float, float, float]] = []
    worker: psutil.Process | None = None
    for event in job.watch():
        if isinstance(event, tessera.StepMetrics) and event.time is not None:
            worker = worker or daemon.worker()
            if worker is None:
                continue
            try:
                worker_cpu = cpu_s(worker)
            except psutil.NoSuchProcess:  # the last steps can arrive after the worker exits
                continue
            steps.append(
                (event.time.timestamp(), event.step, event.samples_per_s, worker_cpu, cpu_s(daemon.process))
            )
    job.wait()
    if worker is not None:
        worker.wait(60)  # so the next run cannot take this worker for its own
    for thread in threads:
        thread.join(60)
    stop.set()
    if watchers:
        # A watched run must have had its pages fed, or it measured nothing.
        assert len(counts) == watchers and min(counts) > 0, f"watchers saw events {counts}"
    # Steady state: the first third of the steps (worker start, allocator growth) is left out.
    steady = steps[len(steps) // 3 :]
    first, last = steady[0], steady[-1]
    samples = (last[1] - first[1]) * BATCH
    worker_us = (last[3] - first[3]) * 1e6 / samples
    daemon_us = (last[4] - first[4]) * 1e6 / samples
    return {
        # As the worker measures it over each logging window: the wall-clock figure compared.
        "samples_per_s": statistics.median(rate for _, _, rate, _, _ in steady),
        # From the daemon's time stamps of the step events: includes any lag in taking them in.
        "daemon_stamped_samples_per_s": samples / (last[0] - first[0]),
        # CPU time per training sample over the same steady steps: the cost, steady when the
        # shared machine is not.
        "worker_cpu_us_per_sample": worker_us,
        "daemon_cpu_us_per_sample": daemon_us,
        "total_cpu_us_per_sample": worker_us + daemon_us,
        "events_per_watcher": statistics.median(counts) if counts else 0,
    }


def throughput(daemon: DaemonProcess, client: tessera.Client, dataset: str, log_every: int) -> dict[str, Any]:
    pairs: list[dict[str, Any]] = []
    for i in range(PAIRS):
        order = (0, WATCHERS) if i % 2 == 0 else (WATCHERS, 0)
        measured = {watchers: train_once(daemon, client, dataset, watchers, log_every) for watchers in order}
        none, watched = measured[0], measured[WATCHERS]
        pair = {
            "none": none,
            "watched": watched,
            # watched / none of samples per wall second, and none / watched of CPU per sample:
            # both read as "watched throughput relative to unwatched" (1.0: no cost).
            "ratio": watched["samples_per_s"] / none["samples_per_s"],
            "cpu_ratio": none["total_cpu_us_per_sample"] / watched["total_cpu_us_per_sample"],
            "worker_cpu_ratio": none["worker_cpu_us_per_sample"] / watched["worker_cpu_us_per_sample"],
            "daemon_cpu_ratio": none["daemon_cpu_us_per_sample"] / watched["daemon_cpu_us_per_sample"],
        }
        pairs.append(pair)
        print(json.dumps(pair), flush=True)

    def median(key: str) -> float:
        return float(statistics.median(p[key] for p in pairs))

    return {
        "watchers": WATCHERS,
        "log_every_n_steps": log_every,
        "pairs": pairs,
        "ratio_median": round(median("ratio"), 4),
        "cpu_ratio_median": round(median("cpu_ratio"), 4),
        "worker_cpu_ratio_median": round(median("worker_cpu_ratio"), 4),
        "daemon_cpu_ratio_median": round(median("daemon_cpu_ratio"), 4),
        "goal_met": median("ratio") >= 0.98,
        "cpu_goal_met": median("cpu_ratio") >= 0.98,
    }


def push_dataset(client: tessera.Client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 32)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    version = client.datasets.push("bench", x=x, y=y, splits={"train": 0.9, "val": 0.1})
    return f"bench:{version.version}"


def measure_render(tmp: Path) -> list[dict[str, Any]]:
    daemon = in_process_daemon(tmp / "render")
    try:
        with tessera.Client(daemon.target, timeout=600) as client:
            return render_times(daemon, client, push_dataset(client))
    finally:
        daemon.stop()


def measure_throughput(tmp: Path) -> list[dict[str, Any]]:
    daemon = DaemonProcess(tmp / "throughput")
    try:
        with tessera.Client(daemon.target, timeout=600) as client:
            dataset = push_dataset(client)
            return [throughput(daemon, client, dataset, log_every) for log_every in LOG_EVERY]
    finally:
        daemon.stop()


PARTS = {
    "render": ("job_page_first_render", measure_render),
    "throughput": ("training_throughput_watched", measure_throughput),
}


def main() -> None:
    only = sys.argv[1:]
    if len(only) > 1 or (only and only[0] not in PARTS):
        sys.exit(f"usage: dashboard_bench.py [{' | '.join(PARTS)}]  (no argument: both parts)")
    parts = only or list(PARTS)
    earlier: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpu": platform.processor()}}
    from_earlier: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for part, (key, measure) in PARTS.items():
            if part in parts:
                result[key] = measure(Path(tmp))
            elif key in earlier:
                result[key] = earlier[key]
                from_earlier.append(key)
    if from_earlier:
        result["from_an_earlier_run"] = from_earlier
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

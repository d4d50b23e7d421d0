"""Metric logging from a user's training loop, three ways side by side on one daemon: a
`log_metrics` call per step, `log_batch` of --batch steps at a time, and the background
`MetricLogger` (`synchronous=False`, flushed at the end). Each repeat logs --steps steps of
--keys keys to a run of its own, the ways in turn; reported are the medians over repeats of
points per second (wall clock, flush included) and of the client process's CPU microseconds per
point, and the microseconds per point the loop itself spent in the logging calls (the
background logger's flush at the end left out), with each way's ratios to the per-step calls.
The daemon runs as `tesserad serve` does by default (store.durability full: a commit per call
is a disk flush, which is most of a per-step call's time).

    .venv/bin/python bench/metric_batch_bench.py --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon_process import start_daemon

import tessera

RESULTS = Path(__file__).parent / "results" / "metric_batch_bench.json"


def per_step(client: tessera.Client, run_id: str, steps: int, keys: int, batch: int) -> float:
    """Each way returns the seconds its loop spent logging, before any final flush."""
    started = time.perf_counter()
    for step in range(steps):
        client.training.log_metrics(run_id, {f"m{k}": step * 0.5 + k for k in range(keys)}, step)
    return time.perf_counter() - started


def batched(client: tessera.Client, run_id: str, steps: int, keys: int, batch: int) -> float:
    started = time.perf_counter()
    points: list[tuple[str, float, int]] = []
    for step in range(steps):
        points += [(f"m{k}", step * 0.5 + k, step) for k in range(keys)]
        if len(points) >= batch * keys:
            client.training.log_batch(run_id, points)
            points = []
    if points:
        client.training.log_batch(run_id, points)
    return time.perf_counter() - started


def background(client: tessera.Client, run_id: str, steps: int, keys: int, batch: int) -> float:
    with client.training.metric_logger(run_id, flush_points=batch * keys) as logger:
        started = time.perf_counter()
        for step in range(steps):
            logger.log({f"m{k}": step * 0.5 + k for k in range(keys)}, step)
        return time.perf_counter() - started


WAYS: dict[str, Callable[[tessera.Client, str, int, int, int], float]] = {
    "per_step_calls": per_step,
    "log_batch": batched,
    "background_logger": background,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--batch", type=int, default=100, help="steps per log_batch call / logger batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {
        way: {"points_per_s": [], "cpu_us_per_point": [], "loop_us_per_point": []} for way in WAYS
    }
    points = args.steps * args.keys
    with tempfile.TemporaryDirectory() as tmp:
        daemon, target = start_daemon(Path(tmp) / "data")
        try:
            with tessera.Client(target) as client:
                for repeat in range(args.repeats):
                    for way, log in WAYS.items():
                        run_id = client.training.create_run(
                            "bench", name=f"{way}-{repeat}", create_experiment=True
                        ).id
                        cpu_before, started = time.process_time(), time.perf_counter()
                        loop = log(client, run_id, args.steps, args.keys, args.batch)
                        wall = time.perf_counter() - started
                        cpu = time.process_time() - cpu_before
                        assert client.training.run(run_id).metrics.summary("m0").count == args.steps
                        samples[way]["points_per_s"].append(points / wall)
                        samples[way]["cpu_us_per_point"].append(cpu / points * 1e6)
                        samples[way]["loop_us_per_point"].append(loop / points * 1e6)
        finally:
            daemon.terminate()
            daemon.wait()
    medians = {
        way: {name: statistics.median(values) for name, values in s.items()} for way, s in samples.items()
    }
    base = medians["per_step_calls"]
    result: dict[str, Any] = {
        "bench": "metric_batch_bench",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": vars(args),
        "medians": medians,
        "ratios_to_per_step_calls": {
            way: {name: value / base[name] for name, value in m.items()} for way, m in medians.items()
        },
        "samples": samples,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": medians, "ratios": result["ratios_to_per_step_calls"]}, indent=2))


if __name__ == "__main__":
    main()

"""One Predict of N rows on a version loaded with max_batch_size=1 runs as N slices: the seconds
the batcher takes to answer it (an in-process DynamicBatcher over a runtime that doubles its
input, so what is timed is the batcher's own work), per slice count and instance count, and how
many queue entries the request took. Run it on the tree before a change and after:

    PYTHONPATH=/path/to/old/src .venv/bin/python bench/batcher_slices_bench.py --label before --out X.json
    PYTHONPATH=src .venv/bin/python bench/batcher_slices_bench.py --label after --before bench/results/X.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from results_file import add_arguments, finish, out_path

from tesserad.serving.batcher import DynamicBatcher
from tesserad.serving.stats import ServingStats


class DoublingRuntime:
    """Doubles `x` at once; `gate`, while clear, holds its runs (to read the queue meanwhile)."""

    device = "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        self.started.release()
        self.gate.wait(60)
        return {"y": inputs["x"] * 2}

    def helper_cpu_ns(self) -> int:
        return 0

    def close(self) -> None:
        pass


def make_batcher(runtimes: list[DoublingRuntime], max_queue_size: int) -> DynamicBatcher:
    return DynamicBatcher(
        "bench",
        runtimes,  # type: ignore[arg-type]
        ServingStats("bench", 1, None),
        max_batch_size=1,
        max_queue_delay_us=0,
        max_queue_size=max_queue_size,
        batchable=True,
        inline_max_compute_us=0.0,
        initial_compute_us=1000.0,
        output_names=["y"],
    )


def answer_seconds(slices: int, instances: int) -> float:
    """Seconds from submitting one request of `slices` rows to its answer."""
    batcher = make_batcher([DoublingRuntime() for _ in range(instances)], 16)
    x = np.ones((slices, 2), dtype=np.float32)
    try:
        started = time.perf_counter()
        batcher.submit({"x": x}, ["y"], slices).result(600)
        return time.perf_counter() - started
    finally:
        batcher.close(5)


def queue_entries(slices: int) -> int:
    """Queue entries one request of `slices` rows takes while the model is busy."""
    runtime = DoublingRuntime()
    runtime.gate.clear()
    batcher = make_batcher([runtime], 16)
    first = batcher.submit({"x": np.ones((1, 2), dtype=np.float32)}, ["y"], 1)
    runtime.started.acquire(timeout=10)
    big = batcher.submit({"x": np.ones((slices, 2), dtype=np.float32)}, ["y"], slices)
    entries = batcher.queued
    runtime.gate.set()
    first.result(60)
    big.result(600)
    batcher.close(5)
    return entries


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    old = {(r["slices"], r["instances"]): r["median_s"] for r in before["results"]}
    return [
        {
            "slices": r["slices"],
            "instances": r["instances"],
            "before_over_after": round(old[(r["slices"], r["instances"])] / r["median_s"], 2),
        }
        for r in after["results"]
        if (r["slices"], r["instances"]) in old
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="1000,5000,20000", help="slice counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args()
    path = out_path(parser, args)
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    for slices in (int(n) for n in args.slices.split(",")):
        entries = queue_entries(slices)
        for instances in (1, 2):
            times = [answer_seconds(slices, instances) for _ in range(args.repeats)]
            median = statistics.median(times)
            results.append(
                {
                    "slices": slices,
                    "instances": instances,
                    "queue_entries": entries,
                    "median_s": round(median, 4),
                    "us_per_slice": round(median / slices * 1e6, 1),
                    "times_s": [round(t, 4) for t in times],
                }
            )
            print(results[-1])
    finish("batcher_slices_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()

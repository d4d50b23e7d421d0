"""ListRuns ordered by a metric as an experiment grows: first page and a walk through every page.

At each size (--sizes runs, one experiment, 95% of them with a `val_loss` whose values repeat
so ties occur, the rest without it) the store is written through the tracking domain API (runs in
transactions of 500, their metrics through log_metrics, relaxed durability) and then read through `list_runs`
ordered by val_loss (ascending, its own direction): the first page of 100, in the experiment
and across all experiments, and a walk through every page of --walk-page runs. Each timing is
the median of --repeats, wall time beside this process's CPU time; the peak of memory the
first page allocates (tracemalloc, in an untimed call) shows what one page holds. The build
time per run, and --ingest-batches LogMetrics batches of a job's loss and lr into one run,
show what keeping the order costs ingest.

--mode board builds the same experiment and times what reads every run of an experiment
without an index: Leaderboard (top 10 by val_loss, in its own direction and reversed on the
last value) and the first ListExperiments page (each experiment's run count); the answers go
beside the timings, so the runs before and after a change can be compared. One run in 50 is
deleted after the build: leaderboards skip those, run counts leave them out.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/tracking_list_bench.py \
        [--mode list|board] [--sizes 1000,10000,50000] [--repeats 5] [--label after]

Run it against the tree before a change (PYTHONPATH pointing at that tree's src) with another
--label to compare: results go to bench/results/tracking_list_bench_<label>.json, or
tracking_list_bench_board_<label>.json with --mode board.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training.tracking import MetricPoint, Run, RunOrder, Tracking

RESULTS = Path(__file__).parent / "results"
EXPERIMENT = "bench"
PAGE = 100
BATCH = 500


def build(tracking: Tracking, store: Store, count: int) -> None:
    """Runs in transactions of BATCH, their metrics through log_metrics (one group commit a batch)."""
    for start in range(0, count, BATCH):
        batch = range(start, min(start + BATCH, count))
        with store.write() as txn:
            tracking.ensure_experiment(txn, EXPERIMENT)
            for i in batch:
                run = Run(
                    f"run-{i:012d}", EXPERIMENT, f"r{i}", "running", {"lr": str(i % 7)}, {}, 0.0, None, 0, ""
                )
                tracking.put_new_run(txn, run)
        # 997 distinct values: ties at every size; one run in 20 has no val_loss.
        logged = [
            tracking.log_metrics(
                f"run-{i:012d}",
                [MetricPoint("val_loss", (i * 7919 % 997) / 997, 0), MetricPoint("lr", 0.1, 0)],
            )
            for i in batch
            if i % 20
        ]
        for future in logged:
            future.result()


def timed(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": median(walls), "cpu_s": median(cpus)}


def walk(tracking: Tracking, experiment: str, order: RunOrder, page: int) -> int:
    seen, token = 0, ""
    while True:
        runs, token = tracking.list_runs(experiment, size=page, token=token, order=order)
        seen += len(runs)
        if not token:
            return seen


def check_walk(tracking: Tracking, order: RunOrder, page: int, count: int) -> None:
    assert walk(tracking, EXPERIMENT, order, page) == count


def ingest(batches: int, repeats: int) -> dict[str, float]:
    """A job's step metrics: `batches` LogMetrics batches of loss and lr (loss falling, so its
    last and min change every batch), queued together so group commit shares the fsyncs."""

    def once() -> None:
        with tempfile.TemporaryDirectory() as root:
            store = Store.open(
                Path(root) / "store", map_size=1 << 30, durability="relaxed", tables=STORE_TABLES
            )
            try:
                tracking = Tracking(store)
                run_id = tracking.create_run("ingest").run_id
                futures = [
                    tracking.log_metrics(
                        run_id, [MetricPoint("loss", 1 / (step + 1), step), MetricPoint("lr", 0.1, step)]
                    )
                    for step in range(batches)
                ]
                for future in futures:
                    future.result()
            finally:
                store.close()

    result = timed(once, repeats)
    return {
        "batches": batches,
        "wall_s_per_batch": result["wall_s"] / batches,
        "cpu_s_per_batch": result["cpu_s"] / batches,
    }


def peak_bytes(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(count: int, repeats: int, walk_page: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        store = Store.open(Path(root) / "store", map_size=8 << 30, durability="relaxed", tables=STORE_TABLES)
        try:
            tracking = Tracking(store)
            wall, cpu = time.perf_counter(), time.process_time()
            build(tracking, store, count)
            built = {
                "wall_s_per_run": (time.perf_counter() - wall) / count,
                "cpu_s_per_run": (time.process_time() - cpu) / count,
            }
            order = RunOrder("val_loss", "last", None)
            first = tracking.list_runs(EXPERIMENT, size=PAGE, order=order)[0]
            assert len(first) == min(PAGE, count)
            return {
                "runs": count,
                "build": built,
                "first_page": timed(lambda: tracking.list_runs(EXPERIMENT, size=PAGE, order=order), repeats),
                "first_page_all_experiments": timed(
                    lambda: tracking.list_runs(size=PAGE, order=order), repeats
                ),
                "first_page_peak_bytes": peak_bytes(
                    lambda: tracking.list_runs(EXPERIMENT, size=PAGE, order=order)
                ),
                "walk": {
                    "page_size": walk_page,
                    **timed(lambda: check_walk(tracking, order, walk_page, count), repeats),
                },
            }
        finally:
            store.close()


def measure_board(count: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        store = Store.open(Path(root) / "store", map_size=8 << 30, durability="relaxed", tables=STORE_TABLES)
        try:
            tracking = Tracking(store)
            wall, cpu = time.perf_counter(), time.process_time()
            build(tracking, store, count)
            built = {
                "wall_s_per_run": (time.perf_counter() - wall) / count,
                "cpu_s_per_run": (time.process_time() - cpu) / count,
            }
            for i in range(0, count, 50):
                tracking.delete_run(f"run-{i:012d}")
            calls: dict[str, Callable[[], Any]] = {
                "leaderboard_own_direction": lambda: tracking.leaderboard(
                    EXPERIMENT, "val_loss", None, None, 10
                ),
                "leaderboard_reversed_last": lambda: tracking.leaderboard(
                    EXPERIMENT, "val_loss", "max", "last", 10
                ),
                "list_experiments": lambda: tracking.list_experiments(size=PAGE),
            }
            answers = {
                "leaderboard_own_direction": [
                    (run.run_id, value) for run, value in calls["leaderboard_own_direction"]()
                ],
                "leaderboard_reversed_last": [
                    (run.run_id, value) for run, value in calls["leaderboard_reversed_last"]()
                ],
                "list_experiments": [(e.name, e.run_count) for e in calls["list_experiments"]()[0]],
            }
            return {
                "runs": count,
                "build": built,
                **{name: timed(call, repeats) for name, call in calls.items()},
                "answers": answers,
            }
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("list", "board"), default="list")
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--walk-page", type=int, default=1000)
    parser.add_argument("--ingest-batches", type=int, default=5000)
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    load_before = os.getloadavg()
    out: dict[str, Any] = {"bench": "tracking_list_bench", "label": args.label, "repeats": args.repeats}
    name = f"tracking_list_bench_{args.label}.json"
    if args.mode == "board":
        out["mode"] = "board"
        name = f"tracking_list_bench_board_{args.label}.json"
    else:
        out["ingest"] = ingest(args.ingest_batches, args.repeats)
        print(json.dumps({"ingest": out["ingest"]}), flush=True)
    results = []
    for count in (int(s) for s in args.sizes.split(",")):
        if args.mode == "board":
            result = measure_board(count, args.repeats)
        else:
            result = measure(count, args.repeats, args.walk_page)
        print(json.dumps({k: v for k, v in result.items() if k != "answers"}), flush=True)
        results.append(result)
    out.update(
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
        load_average={"start": load_before, "end": os.getloadavg()},
        results=results,
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

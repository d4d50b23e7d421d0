"""Durable metric-point ingest: the store's group commit vs one LMDB transaction per point.

Both sides write the same shape of data the tracking service writes (`run | key | step ->
value, timestamp` plus the per-(run, key) summary, updated in the same transaction) with
full durability (fsync per commit), in one run, into fresh stores in a temp directory.
Group-committed writers are several threads each submitting a client's batch of points
(as LogMetrics does); the baseline commits every point on its own.

    python bench/store_bench.py [--points N] [--writers W] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from tesserad.store import Store, WriteTxn, encode_metric_point

RESULTS = Path(__file__).parent / "results" / "store_bench.json"


def _write_points(txn: WriteTxn, run: str, key: str, steps: range, now: float) -> None:
    last = 0.0
    for step in steps:
        last = float(step) * 0.5
        txn.put("metrics", (run, key, step), encode_metric_point(last, now))
    txn.put("summaries", (run, key), encode_metric_point(last, now))


def one_txn_per_point(root: Path, points: int) -> float:
    store = Store.open(root / "single", map_size=2**30, tables=["metrics", "summaries"])
    try:
        start = time.perf_counter()
        for step in range(points):
            with store.write() as txn:
                _write_points(txn, "run", "loss", range(step, step + 1), time.time())
        return points / (time.perf_counter() - start)
    finally:
        store.close()


def group_committed(root: Path, points: int, writers: int, batch: int) -> tuple[float, int]:
    store = Store.open(root / "group", map_size=2**30, tables=["metrics", "summaries"])
    per_writer = points // writers

    def writer(n: int) -> None:
        futures: list[Future[None]] = []
        for first in range(0, per_writer, batch):
            steps = range(first, min(first + batch, per_writer))

            def write(txn: WriteTxn, s: range = steps) -> None:
                _write_points(txn, f"run-{n}", "loss", s, time.time())

            futures.append(store.submit(write))
            # A client waits for its acknowledgement before its buffer fills up again.
            if len(futures) >= 8:
                futures.pop(0).result()
        for future in futures:
            future.result()

    try:
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        with store.read() as txn:
            assert txn.count("metrics") == per_writer * writers
        return per_writer * writers / elapsed, store.group_commits
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=400_000, help="points written group-committed")
    parser.add_argument(
        "--baseline-points", type=int, default=2_000, help="points written one per transaction"
    )
    parser.add_argument(
        "--writers", type=int, default=4, help="concurrent writers (clients) for group commit"
    )
    parser.add_argument(
        "--batch", type=int, default=500, help="points per submitted write (one LogMetrics call)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = one_txn_per_point(Path(tmp), args.baseline_points)
        grouped, commits = group_committed(Path(tmp), args.points, args.writers, args.batch)
    result = {
        "benchmark": "store_bench",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "durability": "full (fsync per commit)",
        "one_txn_per_point_points_per_s": round(single),
        "group_commit_points_per_s": round(grouped),
        "group_commits": commits,
        "ratio_group_vs_single": round(grouped / single, 1),
        "goal_points_per_s": 200_000,
        "goal_met": grouped >= 200_000,
        "params": vars(args),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

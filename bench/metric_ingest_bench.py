"""LogMetrics ingest through Tracking.log_metrics, this tree's src against another's
(--baseline-src, a src of the change before), alternating in child processes: wall and CPU
seconds per repeat and the medians of the per-repeat ratios this/baseline.

Each repeat logs --batches batches of --keys keys times --steps steps into a fresh store with
full durability, --writers batches in flight at once, so every batch pays the per-key checks.

    .venv/bin/python bench/metric_ingest_bench.py --baseline-src /path/to/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "metric_ingest_bench.json"
HERE = Path(__file__).resolve().parent.parent / "src"

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from tesserad.store import Store
from tesserad.training.tracking import TABLES, MetricPoint, Tracking

batches, keys, steps, writers = (int(a) for a in sys.argv[1:5])
with tempfile.TemporaryDirectory() as tmp:
    store = Store.open(Path(tmp), map_size=2**31, tables=["meta", *TABLES])
    tracking = Tracking(store)
    run_id = tracking.create_run("bench").run_id
    wall, cpu = time.perf_counter(), time.process_time()
    pending = []
    for b in range(batches):
        points = [MetricPoint(f"layer{k}/grad_norm", float(s), b * steps + s) for k in range(keys) for s in range(steps)]
        pending.append(tracking.log_metrics(run_id, points))
        if len(pending) >= writers:
            pending.pop(0).result()
    for future in pending:
        future.result()
    print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}))
    store.close()
"""


def _repeat(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.batches), str(args.keys), str(args.steps), str(args.writers)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--keys", type=int, default=50, help="distinct keys per batch")
    parser.add_argument("--steps", type=int, default=10, help="points per key per batch")
    parser.add_argument("--writers", type=int, default=4, help="batches in flight")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go (JSON)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for _ in range(args.repeats):
        base = _repeat(args.baseline_src, args)
        this = _repeat(HERE, args)
        rows.append({"baseline": base, "this": this})
    result = {
        "benchmark": "metric_ingest_bench",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "points_per_repeat": args.batches * args.keys * args.steps,
        "median_wall_ratio_this_vs_baseline": round(
            statistics.median(r["this"]["wall_s"] / r["baseline"]["wall_s"] for r in rows), 3
        ),
        "median_cpu_ratio_this_vs_baseline": round(
            statistics.median(r["this"]["cpu_s"] / r["baseline"]["cpu_s"] for r in rows), 3
        ),
        "median_wall_s": {
            "baseline": round(statistics.median(r["baseline"]["wall_s"] for r in rows), 3),
            "this": round(statistics.median(r["this"]["wall_s"] for r in rows), 3),
        },
        "median_cpu_s": {
            "baseline": round(statistics.median(r["baseline"]["cpu_s"] for r in rows), 3),
            "this": round(statistics.median(r["this"]["cpu_s"] for r in rows), 3),
        },
        "repeats": rows,
        "params": {k: v for k, v in vars(args).items() if k not in ("baseline_src", "out")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "repeats"}, indent=2))


if __name__ == "__main__":
    main()

"""A streamed backup (`tessera admin backup -o - > FILE`) of a store of --size-mb of blobs, this
tree's CLI against another's (--baseline-src, a clients/python/src of the change before), in
alternating order. Reports each one's wall and CPU time (the CLI process's user + system), and
the medians of the per-repeat ratios this/baseline.

    .venv/bin/python bench/backup_stream_bench.py --baseline-src /path/to/old/clients/python/src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from daemon_process import start_daemon

import tessera

HERE_SRC = Path(__file__).resolve().parent.parent / "clients" / "python" / "src"
RESULTS = Path(__file__).parent / "results" / "backup_stream_bench.json"


def timed_backup(src: Path, target: str, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one `tessera admin backup -o -` into `out`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with out.open("wb") as stdout:
        subprocess.run(
            [sys.executable, "-m", "tessera.cli", "--target", target, "admin", "backup", "-o", "-"],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env=env,
            check=True,
        )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        daemon, target = start_daemon(Path(tmp) / "data")
        try:
            rng = np.random.default_rng(0)
            with tessera.Client(target) as client:
                for index in range(args.size_mb // 50):
                    client.datasets.push(f"d{index}", x=rng.normal(size=(50, 1 << 18)).astype(np.float32))
            runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
            for repeat in range(args.repeats):
                order = ("baseline", "this") if repeat % 2 == 0 else ("this", "baseline")
                for name in order:
                    src = args.baseline_src if name == "baseline" else HERE_SRC
                    runs[name].append(timed_backup(src, target, Path(tmp) / "backup.tar"))
            size = (Path(tmp) / "backup.tar").stat().st_size
        finally:
            daemon.terminate()
            daemon.wait(30)
    pairs = list(zip(runs["baseline"], runs["this"], strict=True))
    result = {
        "archive_bytes": size,
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "baseline": [{"wall_s": w, "cpu_s": c} for w, c in runs["baseline"]],
        "this": [{"wall_s": w, "cpu_s": c} for w, c in runs["this"]],
        "median_wall_s": {k: statistics.median(w for w, _ in v) for k, v in runs.items()},
        "median_cpu_s": {k: statistics.median(c for _, c in v) for k, v in runs.items()},
        "median_wall_ratio": statistics.median(t[0] / b[0] for b, t in pairs),
        "median_cpu_ratio": statistics.median(t[1] / b[1] for b, t in pairs),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

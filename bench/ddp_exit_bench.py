"""Local DDP jobs one after another: how many leave a rank running after its outcome.

A rank sends its outcome and then tears down its process group; a rank still running
training.jobs._EXIT_GRACE_S (15 s) later is killed, and the daemon logs "a worker did not exit
after it finished; stopped it". Freeing the gloo group once deadlocked now and then
(pytorch/pytorch#56297: its destructor joins gloo's threads holding the GIL while one drops its
last allreduce, which takes the GIL): 6 jobs of 200 here, each waiting out the grace. This bench
counts those warnings and times each job from submit to its final state against a daemon run as
a child process, so it shows a regression of training.worker's exit path without tracing.

Run: .venv/bin/python bench/ddp_exit_bench.py [--jobs 100]  ->  bench/results/ddp_exit.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from daemon_process import start_daemon_logged

import tessera

RESULTS = Path(__file__).parent / "results" / "ddp_exit.json"
LINGERING = "a worker did not exit after it finished; stopped it"
# training.jobs._EXIT_GRACE_S: after it, a lingering rank is killed and logged.
GRACE_S = 15.0
# A job that took this long waited for a rank to be killed (they take ~0.2 s otherwise).
SLOW_JOB_S = 10.0


def spec(epochs: int) -> dict[str, Any]:
    return {
        "experiment": "ddp-exit-bench",
        "architecture": {"input_shape": [6], "output_size": 2, "mlp": {"hidden_sizes": [16]}},
        "task": "classification",
        "data": {"dataset": "flat", "train_split": "train", "val_split": "val"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 16,
        "seed": 0,
        "devices": {"cpu": True, "cpu_processes": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # Two training slots of one thread: a 2-process job takes the whole 2-core dev box.
    os.environ.setdefault("TESSERA_TRAINING_CPU_SLOTS", "2")
    os.environ.setdefault("TESSERA_TRAINING_THREADS_PER_SLOT", "1")
    lingering: list[dict[str, Any]] = []

    def on_log(entry: dict[str, Any]) -> None:
        if entry.get("msg") == LINGERING:
            lingering.append({"job_id": entry.get("job_id"), "rank": entry.get("rank")})

    with tempfile.TemporaryDirectory(prefix="ddp-exit-bench-") as work:
        process, serving = start_daemon_logged(Path(work), on_log=on_log)
        try:
            rng = np.random.default_rng(0)
            x = rng.normal(size=(96, 6)).astype(np.float32)
            y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
            load_before = os.getloadavg()
            started = time.monotonic()
            jobs: list[dict[str, Any]] = []
            with tessera.Client(serving["address"]) as client:
                client.datasets.push("flat", x=x, y=y, splits={"train": 0.75, "val": 0.25})
                for _ in range(args.jobs):
                    begun = time.monotonic()
                    job = client.training.submit(spec(args.epochs)).wait(check=False)
                    jobs.append({"job_id": job.id, "state": job.state.name, "s": time.monotonic() - begun})
                    print(f"{job.id} {job.state.name} {jobs[-1]['s']:.2f} s", flush=True)
                # The last job's ranks get the grace to exit before the daemon stops.
                time.sleep(GRACE_S + 2)
            wall_s = time.monotonic() - started
            load_after = os.getloadavg()
        finally:
            process.terminate()
            process.wait(60)
    seconds = sorted(j["s"] for j in jobs)
    result = {
        "jobs": args.jobs,
        "epochs": args.epochs,
        "processes_per_job": 2,
        "succeeded": sum(j["state"] == "SUCCEEDED" for j in jobs),
        "ranks_killed_after_outcome": len({(k["job_id"], k["rank"]) for k in lingering}),
        "lingering": lingering,
        "jobs_over_slow_s": sum(s > SLOW_JOB_S for s in seconds),
        "slow_s": SLOW_JOB_S,
        "job_s_median": round(statistics.median(seconds), 3),
        "job_s_p99": round(seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))], 3),
        "job_s_max": round(seconds[-1], 3),
        "wall_s": round(wall_s, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "torch": torch.__version__,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "lingering"}, indent=2))


if __name__ == "__main__":
    main()

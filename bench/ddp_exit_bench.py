"""DDP jobs one after another: how many leave a rank running after its outcome.

Local backend: a rank sends its outcome and then tears down its process group; a rank still
running training.jobs._EXIT_GRACE_S (15 s) later is killed, and the daemon logs "a worker did not
exit after it finished; stopped it". Freeing the gloo group once deadlocked now and then
(pytorch/pytorch#56297: its destructor joins gloo's threads holding the GIL while one drops its
last allreduce, which takes the GIL): 6 jobs of 200 here, each waiting out the grace. This bench
counts those warnings and times each job from submit to its final state against a daemon run as
a child process, so it shows a regression of training.worker's exit path without tracing.

--backend ray: the same 2-process jobs through training.backend = "ray" on a one-node Ray cluster
started here (two CPUs: one per rank). There the ranks return from Ray Train's train loop and
Ray Train's controller tears the group down: each worker runs destroy_process_group
(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, 30 s, then a warning), gets 5 s more, and is killed.
The daemon stores the job's end only once the fit has returned, so a hung teardown shows as a
job whose end comes 30 s or more after its last training event. Per job: submit to final
state, RUNNING to final state, and last training event to final state; the Ray Train worker
processes still alive when the next job is submitted; and, from the cluster's logs, Ray's
warnings about a timed-out or failed teardown. A job still RUNNING --dump-after-s after it
started gets a py-spy dump of every Ray Train worker and controller (in the JSON).

Run: .venv/bin/python bench/ddp_exit_bench.py [--jobs 100]  ->  bench/results/ddp_exit.json
     .venv/bin/python bench/ddp_exit_bench.py --backend ray [--jobs 50]
         ->  bench/results/ddp_exit_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from daemon_process import start_daemon_logged
from ray_process import start_ray, stop_ray

import tessera
from tessera.events import StateChanged

RESULTS = Path(__file__).parent / "results" / "ddp_exit.json"
RAY_RESULTS = Path(__file__).parent / "results" / "ddp_exit_ray.json"
LINGERING = "a worker did not exit after it finished; stopped it"
# training.jobs._EXIT_GRACE_S: after it, a lingering rank is killed and logged.
GRACE_S = 15.0
# A job that took this long waited for a rank to be killed (they take ~0.2 s otherwise).
SLOW_JOB_S = 10.0
# Ray Train's TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S is 30 s: a job whose end came this long
# after its last training event waited out (most of) a hung teardown.
RAY_SLOW_TEARDOWN_S = 20.0
# What Ray Train logs (in the controller's log file) when the teardown hangs or fails.
RAY_WARNINGS = ("Torch process group shutdown timed out", "Graceful shutdown of backend failed")
# Process titles of Ray Train's actors: "ray::RayTrainWorker...", "ray::TrainController...".
RAY_TRAIN_WORKER = "RayTrainWorker"
RAY_TRAIN_CONTROLLER = "TrainController"


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


def ray_processes(title: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(title in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def py_spy_dump(pid: int) -> str:
    py_spy = Path(sys.executable).parent / "py-spy"
    done = subprocess.run(
        [str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout + done.stderr


def wait_ray_connected(client: tessera.Client, timeout_s: float = 120.0) -> None:
    """The daemon connects to the Ray cluster in the background; jobs are refused until it has."""
    deadline = time.monotonic() + timeout_s
    while not client.system.info().training_cluster.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not connect to the Ray cluster")
        time.sleep(0.5)


def run_ray_job(client: tessera.Client, epochs: int, dump_after_s: float) -> dict[str, Any]:
    """One job to its end, polled; its figures, with py-spy dumps if it ran past `dump_after_s`."""
    leftover = [p.pid for p in ray_processes(RAY_TRAIN_WORKER)]
    begun = time.monotonic()
    job = client.training.submit(spec(epochs))
    running_since: float | None = None
    dumps: dict[str, str] = {}
    while True:
        job.refresh()
        now = time.monotonic()
        if job.state.name == "RUNNING" and running_since is None:
            running_since = now
        if job.state.name not in ("QUEUED", "RUNNING"):
            break
        if running_since is not None and now - running_since > dump_after_s and not dumps:
            for title in (RAY_TRAIN_WORKER, RAY_TRAIN_CONTROLLER):
                for process in ray_processes(title):
                    dumps[f"{title} {process.pid}"] = py_spy_dump(process.pid)
        time.sleep(0.2)
    submit_to_end_s = time.monotonic() - begun
    events = list(job.watch(timeout=30))
    states = [e for e in events if isinstance(e, StateChanged) and e.time is not None]
    running = next((e.time for e in states if e.state.name == "RUNNING"), None)
    final = states[-1].time if states else None
    trained = [e.time for e in events if not isinstance(e, StateChanged) and e.time is not None]
    last_training = max(trained) if trained else None
    return {
        "job_id": job.id,
        "state": job.state.name,
        "s": submit_to_end_s,
        "running_to_end_s": (final - running).total_seconds() if final and running else None,
        "last_event_to_end_s": (final - last_training).total_seconds() if final and last_training else None,
        "ray_train_workers_at_submit": leftover,
        "dumps": dumps,
    }


def ray_warnings(temp: Path) -> list[dict[str, str]]:
    found = []
    for log in sorted(temp.glob("session_*/logs/*")):
        if not log.is_file():
            continue
        for line in log.read_text(errors="replace").splitlines():
            if any(w in line for w in RAY_WARNINGS):
                found.append({"file": log.name, "line": line.strip()[:300]})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--dump-after-s",
        type=float,
        default=60.0,
        help="with --backend ray: py-spy the Ray Train processes of a job RUNNING this long",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or (RAY_RESULTS if args.backend == "ray" else RESULTS)
    # Two training slots of one thread: a 2-process job takes the whole 2-core dev box.
    os.environ.setdefault("TESSERA_TRAINING_CPU_SLOTS", "2")
    os.environ.setdefault("TESSERA_TRAINING_THREADS_PER_SLOT", "1")
    lingering: list[dict[str, Any]] = []

    def on_log(entry: dict[str, Any]) -> None:
        if entry.get("msg") == LINGERING:
            lingering.append({"job_id": entry.get("job_id"), "rank": entry.get("rank")})

    ray_temp: Path | None = None
    ray_group: int | None = None
    warnings: list[dict[str, str]] = []
    if args.backend == "ray":
        # A SIGTERM (a timeout) still stops the Ray cluster started here.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(1))
        # Short: Ray's socket paths under it must fit in 107 bytes.
        ray_temp = Path(tempfile.mkdtemp(prefix="dxray"))
        address, ray_group = start_ray(ray_temp, cpus=2)
        os.environ["TESSERA_TRAINING_BACKEND"] = "ray"
        os.environ["TESSERA_TRAINING_RAY_ADDRESS"] = address
    try:
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
                    if args.backend == "ray":
                        wait_ray_connected(client)
                    for _ in range(args.jobs):
                        if args.backend == "ray":
                            jobs.append(run_ray_job(client, args.epochs, args.dump_after_s))
                        else:
                            begun = time.monotonic()
                            job = client.training.submit(spec(args.epochs)).wait(check=False)
                            jobs.append(
                                {"job_id": job.id, "state": job.state.name, "s": time.monotonic() - begun}
                            )
                        print(" ".join(f"{k}={v}" for k, v in jobs[-1].items() if k != "dumps"), flush=True)
                    # The last job's ranks get the grace to exit before the daemon stops.
                    time.sleep(GRACE_S + 2)
                    leftover = [p.pid for p in ray_processes(RAY_TRAIN_WORKER)]
                wall_s = time.monotonic() - started
                load_after = os.getloadavg()
            finally:
                process.terminate()
                process.wait(60)
        if ray_temp is not None:
            warnings = ray_warnings(ray_temp)
    finally:
        if ray_group is not None:
            stop_ray(ray_group)
        if ray_temp is not None:
            shutil.rmtree(ray_temp, ignore_errors=True)
    seconds = sorted(j["s"] for j in jobs)
    result: dict[str, Any] = {
        "backend": args.backend,
        "jobs": args.jobs,
        "epochs": args.epochs,
        "processes_per_job": 2,
        "succeeded": sum(j["state"] == "SUCCEEDED" for j in jobs),
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
    if args.backend == "ray":
        import ray

        teardown = sorted(j["last_event_to_end_s"] for j in jobs if j["last_event_to_end_s"] is not None)
        result |= {
            "ray": ray.__version__,
            "slow_teardown_s": RAY_SLOW_TEARDOWN_S,
            "jobs_over_slow_teardown_s": sum(s > RAY_SLOW_TEARDOWN_S for s in teardown),
            "last_event_to_end_s_median": round(statistics.median(teardown), 3) if teardown else None,
            "last_event_to_end_s_max": round(teardown[-1], 3) if teardown else None,
            "running_to_end_s_median": round(
                statistics.median(j["running_to_end_s"] for j in jobs if j["running_to_end_s"] is not None), 3
            ),
            "jobs_with_ray_train_workers_left_at_submit": sum(
                bool(j["ray_train_workers_at_submit"]) for j in jobs
            ),
            "ray_train_workers_left_at_end": leftover,
            "ray_teardown_warnings": warnings,
            "jobs_dumped": [j["job_id"] for j in jobs if j["dumps"]],
            "per_job": jobs,
        }
    else:
        result |= {
            "ranks_killed_after_outcome": len({(k["job_id"], k["rank"]) for k in lingering}),
            "lingering": lingering,
            "jobs_over_slow_s": sum(s > SLOW_JOB_S for s in seconds),
            "slow_s": SLOW_JOB_S,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("lingering", "per_job")}, indent=2))


if __name__ == "__main__":
    main()

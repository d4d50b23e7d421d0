"""A training job's start: workers forked from the fork server (training.worker_start =
forkserver, the default) beside freshly spawned ones (spawn), in one run.

Two daemons, one per start method, take the same small job (an MLP 8-64-1, 9 epochs of 3072
samples: bench/search_bench.py's trial until its problem changed, kept here so the figures
stay comparable) in alternating rounds. Per job: SubmitJob to the first step event (log_every_n_steps = 1), to
the job's end state, and the CPU seconds the daemon and every process under it spent on the
job (workers are counted through their parent's reaped-children times). The first job of
each daemon is reported apart: it also starts the fork server (which imports torch once).
Figures to read: the medians of the per-round ratios spawn / forkserver.

Run: .venv/bin/python bench/job_start_bench.py [--rounds 10]  ->  bench/results/job_start.json
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

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from daemon_process import start_daemon, tree_cpu_s
from search_bench import upload

from tessera.v1 import (
    architecture_pb2,
    common_pb2,
    job_spec_pb2,
    training_pb2,
    training_pb2_grpc,
)

RESULTS = Path(__file__).parent / "results" / "job_start.json"
METHODS = ("forkserver", "spawn")
SAMPLES = 4096


def upload_problem(channel: grpc.Channel) -> None:
    """A fixed nonlinear function of 8 inputs (seeded): 3072 samples to train, 1024 to validate."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2 + 0.1 * rng.normal(size=SAMPLES)
    upload(channel, "search", x, y.astype(np.float32))


def base_spec() -> job_spec_pb2.JobSpec:
    return job_spec_pb2.JobSpec(
        experiment="search-bench",
        architecture=architecture_pb2.Architecture(
            input_shape=[8], output_size=1, mlp=architecture_pb2.MlpSpec(hidden_sizes=[64])
        ),
        task=job_spec_pb2.TASK_REGRESSION,
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="search"), val_split="val"),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=0.01),
        lr_schedule=job_spec_pb2.LrSchedule(cosine=job_spec_pb2.CosineLr()),
        epochs=9,
        batch_size=32,
        seed=0,
        log_every_n_steps=1000,
    )


def one_job(training: training_pb2_grpc.TrainingStub, daemon_pid: int) -> dict[str, float]:
    spec = base_spec()
    spec.log_every_n_steps = 1
    cpu_before = tree_cpu_s(daemon_pid)
    started = time.monotonic()
    job = training.SubmitJob(training_pb2.SubmitJobRequest(spec=spec))
    first_step = None
    for event in training.WatchJob(training_pb2.WatchJobRequest(job_id=job.job_id), timeout=120):
        if first_step is None and event.WhichOneof("event") == "step":
            first_step = time.monotonic() - started
    ended = time.monotonic() - started
    final = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
    if final.state != training_pb2.JOB_STATE_SUCCEEDED or first_step is None:
        raise RuntimeError(f"job {job.job_id} ended {training_pb2.JobState.Name(final.state)}: {final.error}")
    # The worker has exited once its job ended; its parent reaps it within a moment.
    time.sleep(0.2)
    return {
        "submit_to_first_step_s": first_step,
        "submit_to_end_s": ended,
        "cpu_s": tree_cpu_s(daemon_pid) - cpu_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ["TESSERA_TRAINING_CPU_SLOTS"] = "1"
    os.environ["TESSERA_TRAINING_THREADS_PER_SLOT"] = "1"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        daemons: dict[str, Any] = {}
        try:
            for method in METHODS:
                os.environ["TESSERA_TRAINING_WORKER_START"] = method
                process, address = start_daemon(Path(root) / method)
                channel = grpc.insecure_channel(address)
                upload_problem(channel)
                daemons[method] = (process, training_pb2_grpc.TrainingStub(channel))
            first = {m: one_job(daemons[m][1], daemons[m][0].pid) for m in METHODS}
            rounds: list[dict[str, dict[str, float]]] = []
            for i in range(args.rounds):
                order = METHODS if i % 2 == 0 else METHODS[::-1]  # drift favours neither
                rounds.append({m: one_job(daemons[m][1], daemons[m][0].pid) for m in order})
        finally:
            for process, _ in daemons.values():
                process.terminate()
                process.wait(30)

    def median(method: str, key: str) -> float:
        return round(statistics.median(r[method][key] for r in rounds), 4)

    def ratio(key: str) -> float:
        return round(statistics.median(r["spawn"][key] / r["forkserver"][key] for r in rounds), 2)

    keys = ("submit_to_first_step_s", "submit_to_end_s", "cpu_s")
    result = {
        "job": "mlp 8-64-1, 9 epochs of 3072 samples, batch 32, 1 thread (search_bench's trial until its problem changed)",
        "rounds": args.rounds,
        "first_job": {m: {k: round(v, 4) for k, v in first[m].items()} for m in METHODS},
        "median": {m: {k: median(m, k) for k in keys} for m in METHODS},
        "median_ratio_spawn_over_forkserver": {k: ratio(k) for k in keys},
        "runs": [{m: {k: round(v, 4) for k, v in r[m].items()} for m in METHODS} for r in rounds],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("first_job", "median", "median_ratio_spawn_over_forkserver")}, indent=2
        )
    )


if __name__ == "__main__":
    main()

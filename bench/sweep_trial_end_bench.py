"""A sweep's trial ends as its trials grow: the daemon's CPU time per trial end.

At each size (--sizes planned trials) one daemon is started (1 CPU slot), and --repeats times a
grid sweep of that many trials is submitted with max_concurrent as large, so that every trial's
job exists at once (one running, the others queued). Then each queued trial's job is cancelled
with CancelJob, one call at a time, newest first: each is one trial's end outside a sweep
cancel, the sweep taking it into its record as it would a trial that ran (no worker runs, so
the sweep's bookkeeping dominates). Timed: the daemon process's own CPU time (user and system,
not its workers') over those ends, in all and per end, and the SubmitSweep call's. The running
trial is cancelled last and the sweep waited on until it ended. Each figure is the median of
the repeats; the answers (the sweep's state and its trials' states) go beside them so that
runs before and after a change can be compared.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/sweep_trial_end_bench.py \
        [--sizes 100,300,1000] [--repeats 3] [--label after] [--out NAME.json] [--before OLD.json]

Run it against the tree before a change (PYTHONPATH pointing at that tree's src) and after;
--out writes the result to bench/results/NAME.json (never over an existing file), and
--before adds the ratios of an earlier result's figures to this run's (old / new).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

import grpc
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
import results_file
from daemon_process import start_daemon
from search_bench import upload
from sweep_cancel_bench import own_cpu_s, sweep_spec, wait_ended

from tessera.v1 import training_pb2, training_pb2_grpc

S = training_pb2


def endless_sweep_spec(trials: int) -> S.SweepSpec:
    """sweep_cancel_bench's sweep, its trials trained by steps that outlast any run of this bench
    (the running trial must still run when it is cancelled, after the others' ends)."""
    spec = sweep_spec(trials)
    spec.base.epochs, spec.base.max_steps = 0, 10**9
    return spec


def queued_trials(training: training_pb2_grpc.TrainingStub, sweep_id: str, trials: int) -> list[str]:
    """The job ids of the sweep's queued trials, once one trial runs and the others wait."""
    deadline = time.monotonic() + 300
    while True:
        sweep = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))
        queued = [t.job_id for t in sweep.trials if t.state == S.JOB_STATE_QUEUED]
        if len(queued) == trials - 1:
            return queued
        if time.monotonic() > deadline:
            raise RuntimeError(f"sweep {sweep_id}: {len(queued)} of {trials - 1} trials queued after 300 s")
        time.sleep(0.2)


def measure(trials: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sweep-trial-end-bench-") as tmp:
        process, address = start_daemon(Path(tmp))
        try:
            daemon = psutil.Process(process.pid)
            channel = grpc.insecure_channel(address)
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 4)).astype(np.float32)
            upload(channel, "tiny", x, x.sum(1).astype(np.float32))
            training = training_pb2_grpc.TrainingStub(channel)
            submit_cpus, end_cpus, end_walls = [], [], []
            answer: dict[str, Any] = {}
            for _ in range(repeats):
                cpu = own_cpu_s(daemon)
                sweep_id = training.SubmitSweep(
                    S.SubmitSweepRequest(spec=endless_sweep_spec(trials))
                ).sweep_id
                submit_cpus.append(own_cpu_s(daemon) - cpu)
                queued = queued_trials(training, sweep_id, trials)
                wall, cpu = time.perf_counter(), own_cpu_s(daemon)
                for job_id in reversed(queued):
                    training.CancelJob(S.CancelJobRequest(job_id=job_id))
                end_cpus.append(own_cpu_s(daemon) - cpu)
                end_walls.append(time.perf_counter() - wall)
                running = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id)).trials[0].job_id
                training.CancelJob(S.CancelJobRequest(job_id=running))
                ended = wait_ended(training, sweep_id)
                answer = {
                    "sweep": S.SweepState.Name(ended.state),
                    "trials": dict(Counter(training_pb2.JobState.Name(t.state) for t in ended.trials)),
                }
            channel.close()
        finally:
            process.terminate()
            process.wait(60)
    ends = trials - 1
    return {
        "trials": trials,
        "trial_ends": ends,
        "submit_cpu_s": median(submit_cpus),
        "ends": {
            "cpu_s": median(end_cpus),
            "cpu_ms_per_end": median(end_cpus) / ends * 1000,
            "wall_s": median(end_walls),
        },
        "ends_runs": {"cpu_s": end_cpus, "wall_s": end_walls},
        "answers": answer,
    }


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of the trial ends' figures, at each size both runs measured."""
    old = {r["trials"]: r for r in before["results"]}
    return [
        {
            "trials": result["trials"],
            "ends": {
                k: round(old[result["trials"]]["ends"][k] / max(result["ends"][k], 1e-9), 2)
                for k in ("cpu_s", "cpu_ms_per_end", "wall_s")
            },
            "same_answers": old[result["trials"]]["answers"] == result["answers"],
        }
        for result in after["results"]
        if result["trials"] in old
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="planned trials to time the ends at")
    parser.add_argument(
        "--repeats", type=int, default=3, help="sweeps whose trials end at each size (medians reported)"
    )
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    os.environ["TESSERA_TRAINING_CPU_SLOTS"] = "1"
    os.environ["TESSERA_TRAINING_THREADS_PER_SLOT"] = "1"
    load_before = os.getloadavg()
    results = []
    for trials in (int(s) for s in args.sizes.split(",")):
        result = measure(trials, args.repeats)
        print(json.dumps(result), flush=True)
        results.append(result)
    results_file.finish("sweep_trial_end_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()

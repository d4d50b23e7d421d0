"""CancelSweep as a sweep's planned trials grow: the daemon's CPU time for one cancel.

At each size (--sizes planned trials) one daemon is started (1 CPU slot), and --repeats times a
grid sweep of that many trials is submitted with max_concurrent as large, so that every trial's
job exists (one running, the others queued), then cancelled with CancelSweep. Timed: the
CancelSweep call's wall time and the daemon process's own CPU time over it (its user and
system time, not its workers'). Before the next repeat the sweep is waited on until it ended
(its running trial stopped). Each figure is the median of the repeats; the answers (the
sweep's state and its trials' states) go beside them so that runs before and after a change
can be compared.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/sweep_cancel_bench.py \
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

from tessera.v1 import architecture_pb2, common_pb2, job_spec_pb2, training_pb2, training_pb2_grpc

S = training_pb2


def sweep_spec(trials: int) -> S.SweepSpec:
    """`trials` planned trials (seeds) of a small MLP, every one submitted at once; long enough
    (many steps) that the trial that starts still runs when the sweep is cancelled."""
    base = job_spec_pb2.JobSpec(
        experiment="sweep-cancel-bench",
        architecture=architecture_pb2.Architecture(
            input_shape=[4], output_size=1, mlp=architecture_pb2.MlpSpec(hidden_sizes=[8])
        ),
        task=job_spec_pb2.TASK_REGRESSION,
        data=job_spec_pb2.DataSpec(dataset=common_pb2.DatasetRef(name="tiny"), val_split="val"),
        optimizer=job_spec_pb2.Optimizer(name="adam", lr=0.01),
        epochs=1000,
        batch_size=1,
        log_every_n_steps=1000,
    )
    return S.SweepSpec(
        base=base,
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[
            S.SweepParameter(path="seed", values=S.SweepValues(values=[str(i) for i in range(trials)]))
        ],
        max_concurrent=trials,
        metric="val_loss",
    )


def own_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def wait_ended(training: training_pb2_grpc.TrainingStub, sweep_id: str) -> S.Sweep:
    deadline = time.monotonic() + 300
    while True:
        sweep = training.GetSweep(S.GetSweepRequest(sweep_id=sweep_id))
        if sweep.state != S.SWEEP_STATE_RUNNING and all(
            t.state not in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING) for t in sweep.trials
        ):
            return sweep
        if time.monotonic() > deadline:
            raise RuntimeError(f"sweep {sweep_id} did not end within 300 s of its cancel")
        time.sleep(0.2)


def measure(trials: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sweep-cancel-bench-") as tmp:
        process, address = start_daemon(Path(tmp))
        try:
            daemon = psutil.Process(process.pid)
            channel = grpc.insecure_channel(address)
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 4)).astype(np.float32)
            upload(channel, "tiny", x, x.sum(1).astype(np.float32))
            training = training_pb2_grpc.TrainingStub(channel)
            walls, cpus, submits = [], [], []
            answer: dict[str, Any] = {}
            for _ in range(repeats):
                began = time.perf_counter()
                sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=sweep_spec(trials))).sweep_id
                submits.append(time.perf_counter() - began)
                wall, cpu = time.perf_counter(), own_cpu_s(daemon)
                training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id), timeout=1800)
                cpus.append(own_cpu_s(daemon) - cpu)
                walls.append(time.perf_counter() - wall)
                ended = wait_ended(training, sweep_id)
                answer = {
                    "sweep": S.SweepState.Name(ended.state),
                    "trials": dict(Counter(training_pb2.JobState.Name(t.state) for t in ended.trials)),
                }
            channel.close()
        finally:
            process.terminate()
            process.wait(60)
    return {
        "trials": trials,
        "submit_wall_s": median(submits),
        "cancel": {"wall_s": median(walls), "cpu_s": median(cpus)},
        "cancel_runs": {"wall_s": walls, "cpu_s": cpus},
        "answers": answer,
    }


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of the cancel's figures, at each size both runs measured."""
    old = {r["trials"]: r for r in before["results"]}
    return [
        {
            "trials": result["trials"],
            "cancel": {
                k: round(old[result["trials"]]["cancel"][k] / max(result["cancel"][k], 1e-9), 2)
                for k in ("wall_s", "cpu_s")
            },
            "same_answers": old[result["trials"]]["answers"] == result["answers"],
        }
        for result in after["results"]
        if result["trials"] in old
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="planned trials to time the cancel at")
    parser.add_argument(
        "--repeats", type=int, default=3, help="sweeps cancelled at each size (medians reported)"
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
    results_file.finish("sweep_cancel_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()

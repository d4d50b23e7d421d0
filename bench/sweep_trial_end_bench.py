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

--rungs times an ASHA sweep's rungs instead: every trial of an ASHA sweep of that many trials
submitted at once (one CPU slot: one runs, the others wait), each trial's job reports its first
epoch, ASHA's first rung, to the sweep, one at a time, each better than all before (so none is
pruned, whatever the running trial reports). No worker runs to
report it: the daemon runs in this process and the epoch is handed to the sweep as the job's
worker event hands it, in this thread, where the sweep's bookkeeping runs. Timed: this thread's
CPU time over each report; counted: the bytes each writes to the sweeps' tables.

--cancel times CancelSweep instead: a grid sweep of that many trials submitted at once (one CPU
slot: one runs, the others wait queued), then cancelled. The daemon runs in this process, so
that its commits can be counted: the store's group commits and its direct writes, over the
CancelSweep call, and the bytes those write (every table, the running trial's own events
included). Timed: the call's wall time and this process's CPU time over it (the daemon's
threads; its workers are processes of their own). The sweep is waited on until it ended (its
running trial stopped) before the next repeat.

    PYTHONPATH=src:clients/python/src .venv/bin/python bench/sweep_trial_end_bench.py \
        [--sizes 100,300,1000] [--repeats 3] [--rungs | --cancel] [--label after] [--out NAME.json] \
        [--before OLD.json]

Run it against the tree before a change (PYTHONPATH pointing at that tree's src) and after;
--out writes the result to bench/results/NAME.json (never over an existing file), and
--before adds the ratios of an earlier result's figures to this run's (old / new).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
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
from tesserad.config import load_settings
from tesserad.server import create_server
from tesserad.store import Store, WriteTxn
from tesserad.training import sweeps

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


def asha_sweep_spec(trials: int) -> S.SweepSpec:
    """sweep_cancel_bench's base as an ASHA sweep of `trials` trials, its first rung at epoch 1."""
    spec = endless_sweep_spec(trials)
    del spec.parameters[:]
    spec.parameters.add(path="optimizer.lr", range=S.SweepRange(min=0.001, max=0.1))
    spec.strategy, spec.max_trials = S.SWEEP_STRATEGY_ASHA, trials
    spec.asha.min_epochs, spec.asha.reduction_factor = 1, 3
    return spec


def in_process_daemon(data_dir: str) -> tuple[Any, asyncio.AbstractEventLoop]:
    """A daemon of one CPU slot serving on a loop of its own thread, in this process."""
    overrides = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "off",
        "http_listen": "off",
        "data_dir": data_dir,
        "training.cpu_slots": "1",
        "training.threads_per_slot": "1",
    }
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    daemon = create_server(load_settings(env={}, overrides=overrides))
    asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(120)
    return daemon, loop


def measure_rungs(trials: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sweep-rung-bench-") as tmp:
        daemon, loop = in_process_daemon(tmp)
        written: list[int] = []
        put = WriteTxn.put
        this_thread = threading.get_ident()

        def counted(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
            if table in sweeps.TABLES and threading.get_ident() == this_thread:
                written.append(len(value))
            return put(txn, table, key, value, **kwargs)

        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 4)).astype(np.float32)
            upload(channel, "tiny", x, x.sum(1).astype(np.float32))
            training = training_pb2_grpc.TrainingStub(channel)
            jobs = daemon.training
            assert jobs is not None
            rung_cpus, last_cpus, first_bytes, last_bytes = [], [], [], []
            answer: dict[str, Any] = {}
            for _ in range(repeats):
                sweep = training.SubmitSweep(S.SubmitSweepRequest(spec=asha_sweep_spec(trials)))
                cpus, sizes = [], []
                WriteTxn.put = counted  # type: ignore[assignment]
                try:
                    for i, trial in enumerate(sweep.trials):
                        written.clear()
                        job = jobs.get(trial.job_id)
                        cpu = time.thread_time()
                        jobs._notify(
                            job, "epoch", {"epoch": 1, "step": 64, "metrics": {"val_loss": -1e6 - i}}
                        )
                        cpus.append(time.thread_time() - cpu)
                        sizes.append(sum(written))
                finally:
                    WriteTxn.put = put  # type: ignore[method-assign]
                rung_cpus.append(sum(cpus))
                last_cpus.append(median(cpus[-max(1, trials // 10) :]))
                first_bytes.append(sizes[0])
                last_bytes.append(sizes[-1])
                shown = training.GetSweep(S.GetSweepRequest(sweep_id=sweep.sweep_id))
                # Of the queued trials: the running one's own epochs may reach its rung after ours.
                pruned = sum(t.pruned for t in shown.trials[1:])
                ended = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep.sweep_id))
                answer = {"sweep": S.SweepState.Name(ended.state), "pruned": pruned}
            channel.close()
        finally:
            asyncio.run_coroutine_threadsafe(daemon.stop(0), loop).result(120)
            loop.call_soon_threadsafe(loop.stop)
    return {
        "trials": trials,
        "rungs_reached": trials,
        "rungs": {
            "cpu_s": median(rung_cpus),
            "cpu_ms_per_rung": median(rung_cpus) / trials * 1000,
            "cpu_ms_last_tenth": median(last_cpus) * 1000,
            "bytes_first": median(first_bytes),
            "bytes_last": median(last_bytes),
        },
        "rungs_runs": {"cpu_s": rung_cpus},
        "answers": answer,
    }


def measure_cancel(trials: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sweep-cancel-commits-bench-") as tmp:
        daemon, loop = in_process_daemon(tmp)
        store = daemon._store
        written: list[int] = []
        direct_writes: list[int] = []
        put, write = WriteTxn.put, Store.write

        def counted_put(txn: WriteTxn, table: str, key: Any, value: bytes, **kwargs: Any) -> bool:
            written.append(len(value))
            return put(txn, table, key, value, **kwargs)

        def counted_write(self: Store, **kwargs: Any) -> Any:
            direct_writes.append(1)
            return write(self, **kwargs)

        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 4)).astype(np.float32)
            upload(channel, "tiny", x, x.sum(1).astype(np.float32))
            training = training_pb2_grpc.TrainingStub(channel)
            commits, sizes, cpus, walls = [], [], [], []
            answer: dict[str, Any] = {}
            for _ in range(repeats):
                sweep_id = training.SubmitSweep(
                    S.SubmitSweepRequest(spec=endless_sweep_spec(trials))
                ).sweep_id
                queued_trials(training, sweep_id, trials)
                written.clear()
                direct_writes.clear()
                WriteTxn.put = counted_put  # type: ignore[assignment]
                Store.write = counted_write  # type: ignore[method-assign]
                try:
                    group_commits = store.group_commits
                    wall, cpu = time.perf_counter(), time.process_time()
                    shown = training.CancelSweep(S.CancelSweepRequest(sweep_id=sweep_id), timeout=1800)
                    cpus.append(time.process_time() - cpu)
                    walls.append(time.perf_counter() - wall)
                    commits.append(store.group_commits - group_commits + len(direct_writes))
                    sizes.append(sum(written))
                finally:
                    WriteTxn.put = put  # type: ignore[method-assign]
                    Store.write = write  # type: ignore[method-assign]
                cancelled = sum(t.state == S.JOB_STATE_CANCELLED for t in shown.trials)
                ended = wait_ended(training, sweep_id)
                answer = {
                    "sweep": S.SweepState.Name(ended.state),
                    "cancelled_in_answer": cancelled,
                    "trials": dict(Counter(training_pb2.JobState.Name(t.state) for t in ended.trials)),
                }
            channel.close()
        finally:
            asyncio.run_coroutine_threadsafe(daemon.stop(0), loop).result(120)
            loop.call_soon_threadsafe(loop.stop)
    return {
        "trials": trials,
        "queued_trials": trials - 1,
        "cancel": {
            "commits": median(commits),
            "bytes": median(sizes),
            "cpu_s": median(cpus),
            "wall_s": median(walls),
        },
        "cancel_runs": {"commits": commits, "bytes": sizes, "cpu_s": cpus, "wall_s": walls},
        "answers": answer,
    }


def ratios(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Before / after of the trial ends' (or rungs') figures, at each size both runs measured."""
    old = {r["trials"]: r for r in before["results"]}
    part = next(p for p in ("rungs", "cancel", "ends") if p in after["results"][0])
    return [
        {
            "trials": result["trials"],
            part: {
                k: round(old[result["trials"]][part][k] / max(result[part][k], 1e-9), 2) for k in result[part]
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
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--rungs", action="store_true", help="time an ASHA sweep's trials reaching a rung, not trial ends"
    )
    which.add_argument(
        "--cancel",
        action="store_true",
        help="count CancelSweep's commits and bytes and time it, not trial ends",
    )
    results_file.add_arguments(parser)
    args = parser.parse_args()
    path = results_file.out_path(parser, args)
    os.environ["TESSERA_TRAINING_CPU_SLOTS"] = "1"
    os.environ["TESSERA_TRAINING_THREADS_PER_SLOT"] = "1"
    load_before = os.getloadavg()
    results = []
    for trials in (int(s) for s in args.sizes.split(",")):
        measured = measure_rungs if args.rungs else measure_cancel if args.cancel else measure
        result = measured(trials, args.repeats)
        print(json.dumps(result), flush=True)
        results.append(result)
    results_file.finish("sweep_trial_end_bench", args, path, results, load_before, ratios)


if __name__ == "__main__":
    main()

"""How the daemon starts training worker processes: spawned fresh, or forked from a server
process that has already imported torch (multiprocessing's "forkserver" start method).

A spawned worker starts a new interpreter and imports torch before its first step: about
1.5 s of CPU on this 2-core machine, more than all nine epochs of a small sweep trial
(bench/train_bench.py, ``job_start``). The fork server imports torch and the worker's modules
once, at the first job, and forks each worker from itself, so a job starts in milliseconds.

Isolation is the same as with spawn: every job (every DDP rank) is its own process, and a
worker that crashes or is killed takes nothing else with it. The server only imports modules:
it runs no torch op (so no thread pool exists to be broken by the fork) and never touches
CUDA, which each worker initialises for itself after the fork. The server starts lazily, at the
first worker's start, inside the daemon's worker environment (tesserad.runtime_env: glibc
reads its malloc tunables at process start), and it exits when the daemon does. If it dies,
multiprocessing starts a new one at the next job.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import subprocess
from multiprocessing.context import ForkServerContext, SpawnContext

from tesserad.security.users import described_user

# What a worker imports before its first step (tesserad.training.worker._run); imported once
# in the fork server, they cost a job nothing. torch._dynamo is imported lazily by the first
# optimiser a process builds: 1.1 s of a job's start once torch itself is preloaded.
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "tesserad.training.worker",
    "tesserad.training.loop",
    "tesserad.datasets.arrays",
]


def worker_context(start_method: str) -> ForkServerContext | SpawnContext:
    """The multiprocessing context that starts workers (training.worker_start: forkserver or spawn)."""
    if start_method == "spawn":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def worker_interpreter() -> str:
    """The interpreter workers run in (the fork server's and spawn's): the daemon's own path."""
    return os.fsdecode(multiprocessing.spawn.get_executable())


def unrunnable_interpreter() -> str | None:
    """Why this process cannot run the workers' interpreter, or None when it can. A failed exec
    in the child multiprocessing forks is silent: a fork server's start then reads as its socket
    refusing the connection, a spawned worker's as an exit with code 255. Run once to find out,
    only after a start failed (a few tens of ms)."""
    interpreter = worker_interpreter()
    try:
        subprocess.run(
            [interpreter, "-I", "-S", "-c", ""],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    except OSError as exc:
        return f"the worker interpreter {interpreter} cannot be run by {described_user(os.geteuid())} ({exc.strerror})"
    return None

"""The worker process: one per job (one per rank under DDP), started by tesserad.training.launcher.

It talks to the daemon over a pipe and nothing else: it never opens the store or the blob
directory. Messages to the daemon are the classes below (EventMessage, CheckpointMessage,
DoneMessage, ErrorMessage), pickled by the pipe; the daemon stores checkpoints and final
weights as blobs. A resumed job's worker first receives its checkpoint's bytes, a fine-tuning
job's first attempt the weights it starts from; a CancelMessage asks it to stop at the next step boundary.

The daemon sets the worker's environment (tesserad.runtime_env) around the spawn, because
malloc tunables act only at process start. Torch is imported inside the process only (or
once in the fork server the process is forked from).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_CPU_ALLOCATION_REFUSED = re.compile(
    r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes"
)


@dataclass
class DataSource:
    """Where a worker reads its arrays: the dataset file (npy or npz) and which arrays to use."""

    path: str
    format: str  # npy or npz
    array_name: str  # the name of an npy file's single array
    input_array: str
    target_array: str


@dataclass(frozen=True)
class EventMessage:
    """A job event (tesserad.training.events.KINDS) with its payload."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class CheckpointInfo:
    epoch: int
    step: int
    reason: str  # periodic, best or final
    periodic: bool
    best: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointMessage:
    data: bytes  # the checkpoint file (tesserad.training.checkpoints)
    info: CheckpointInfo


@dataclass(frozen=True)
class DoneMessage:
    """Training stopped on its own terms: finished ("succeeded") or at a cancel ("cancelled")."""

    status: str
    epoch: int
    step: int
    metrics: dict[str, float]
    weights: bytes | None  # the leader's trained weights (safetensors); None on other ranks


@dataclass(frozen=True)
class ErrorMessage:
    kind: str
    message: str


@dataclass(frozen=True)
class CancelMessage:
    """From the daemon: stop at the next step boundary."""


WorkerMessage = EventMessage | CheckpointMessage | DoneMessage | ErrorMessage


@dataclass
class WorkerPayload:
    job_id: str
    config: dict[str, Any]
    data: DataSource
    train_indices: Any  # numpy int64 array
    val_indices: Any  # numpy int64 array or None
    rank: int = 0
    world: int = 1
    device_kind: str = "cpu"  # cpu or cuda
    cuda_indices: list[int] = field(default_factory=list)
    master_port: int = 0
    threads: int = 1
    resume: bool = False
    weights_only: bool = False  # the checkpoint received gives the starting weights alone
    # A fine-tuning job's first attempt: the parent's weights (safetensors) follow on the pipe.
    initial_weights: bool = False
    resource_interval_s: float = 5.0
    compile: str = "off"  # training.compile: auto, on or off
    max_workspace: int = 0  # nn.max_workspace in bytes; 0: no limit
    module_paths: tuple[Path, ...] = ()  # training.module_paths: where user modules come from


def worker_main(conn: Connection, payload: WorkerPayload) -> None:
    """Entry point of the spawned process."""
    try:
        _run(conn, payload)
    except BaseException as exc:
        kind, message = _classify(exc)
        with contextlib.suppress(OSError):
            conn.send(ErrorMessage(kind, message))
        os._exit(1)
    conn.close()


def _classify(exc: BaseException) -> tuple[str, str]:
    from tesserad.training.loop import NonFiniteLoss

    if isinstance(exc, NonFiniteLoss):
        return "nonfinite_loss", str(exc)
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return "out_of_memory", f"the worker ran out of memory: {exc}; use a smaller batch_size or model"
    # torch's CPU allocator refuses with a plain RuntimeError that names its C++ source.
    if isinstance(exc, RuntimeError) and (refused := _CPU_ALLOCATION_REFUSED.search(str(exc))):
        from tesserad.config import format_size

        return (
            "out_of_memory",
            f"the worker ran out of memory: it asked for {format_size(int(refused.group(1)))} at once; "
            "use a smaller batch_size or model",
        )
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return "exception", f"{name}: {exc}{where}"


def _run(conn: Connection, payload: WorkerPayload) -> None:
    import torch

    from tesserad.datasets.arrays import open_arrays
    from tesserad.nn import set_max_workspace
    from tesserad.nn.user_modules import allow_module_paths
    from tesserad.training.loop import Distributed, Trainer, TrainingData, device_for

    torch.set_num_threads(max(payload.threads, 1))
    set_max_workspace(payload.max_workspace)
    allow_module_paths(payload.module_paths)
    dist = Distributed(payload.rank, payload.world)
    device = device_for(payload.device_kind, payload.cuda_indices, payload.rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Under Ray Train (training.ray_trainer) the process group is set up before this runs.
    own_group = payload.world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{payload.master_port}",
            rank=payload.rank,
            world_size=payload.world,
        )
    checkpoint = conn.recv_bytes() if payload.resume else b""
    initial_weights = conn.recv_bytes() if payload.initial_weights else b""
    cancelled = False

    def should_stop() -> bool:
        nonlocal cancelled
        try:
            while not cancelled and conn.poll():
                if isinstance(conn.recv(), CancelMessage):
                    cancelled = True
        except (EOFError, OSError):
            # The supervisor's end closed: the daemon died (not merely the fork server that
            # started this worker). Stop rather than train unsupervised.
            return True
        return cancelled

    def emit(kind: str, data: dict[str, Any]) -> None:
        conn.send(EventMessage(kind, data))

    def save_checkpoint(data: bytes, info: dict[str, Any]) -> None:
        conn.send(CheckpointMessage(data, CheckpointInfo(**info)))

    arrays = open_arrays(Path(payload.data.path), payload.data.format, payload.data.array_name)
    data = TrainingData(
        arrays[payload.data.input_array],
        arrays[payload.data.target_array],
        payload.train_indices,
        payload.val_indices,
    )
    trainer = Trainer(
        payload.config,
        data,
        device,
        dist,
        emit,
        save_checkpoint,
        should_stop,
        payload.resource_interval_s,
        initial_weights,
        compile_setting=payload.compile,
    )
    threads = f"{payload.threads} thread{'s' if payload.threads != 1 else ''}"
    where = f"{device}" + (f", rank {payload.rank} of {payload.world}" if payload.world > 1 else "")
    precision = payload.config.get("precision", "fp32")
    compiled = ", compiled" if trainer.compiled else ""
    if dist.leader:
        emit(
            "log", {"level": "info", "message": f"training on {where} with {threads}, {precision}{compiled}"}
        )
    if checkpoint and payload.weights_only:
        trainer.start_from_weights(checkpoint)
    elif checkpoint:
        trainer.resume_from(checkpoint)
    outcome = trainer.run()
    # The outcome first: the daemon stops a rank that still lingers after its outcome
    # (training.jobs._EXIT_GRACE_S), whatever keeps it.
    conn.send(DoneMessage(outcome.status, outcome.epoch, outcome.step, outcome.metrics, outcome.weights))
    if own_group:
        torch.distributed.destroy_process_group()
        # The DDP model still holds the gloo backend. Freeing it (as _run returns) runs the
        # backend's destructor, which joins gloo's threads with the GIL held while one of them may
        # still be dropping its last allreduce, which takes the GIL: a deadlock
        # (pytorch/pytorch#56297), 6 jobs in 200 here. So the process ends without freeing it.
        # Nothing may stop it: a rank exiting non-zero makes the daemon kill its peers, the
        # leader among them perhaps before its outcome (with the weights) has arrived.
        try:
            for close in (conn.close, sys.stdout.flush, sys.stderr.flush):
                with contextlib.suppress(Exception):
                    close()
        finally:
            os._exit(0)

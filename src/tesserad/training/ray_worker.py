"""The worker side of training.backend = "ray", on whichever node Ray places it.

A single-process job runs as one TrainingActor; each rank of a DDP job runs the same
`train_here` inside a Ray Train worker (training.ray_trainer). The worker receives the job's
payload (spec, split indices, the bytes it starts from), fetches the dataset from the daemon by
content hash (training.ray_worker_client, cached per node) and trains with the same code as a
local worker (training.worker). What a local worker sends on its pipe (events, checkpoints, the
final weights, its error) the actor keeps for the daemon's next `take`, a long poll the daemon
reads into the job's event path (plain actor calls, so a `ray://` client address works too:
Ray Client cannot stream a generator's results); `cancel` asks it to stop at the next step
boundary. Nothing here reads the daemon's data directory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesserad.training.worker import (
    CancelMessage,
    DataSource,
    ErrorMessage,
    WorkerMessage,
    WorkerPayload,
    _classify,
    _run,
)


@dataclass(frozen=True)
class WorkerTls:
    """How the worker reaches a daemon serving TLS. It travels in the job's Ray task arguments,
    never on a command line; the key is left out of the repr, so a logged payload does not show it."""

    root_certificates: bytes  # PEM the daemon's certificate is checked against: the daemon's own
    certificate_chain: bytes  # PEM client certificate under mutual TLS, else b""
    private_key: bytes = field(repr=False)  # of certificate_chain, else b""


@dataclass(frozen=True)
class DatasetFetch:
    """Where the worker gets the job's dataset: the daemon's gRPC target and the version's content."""

    target: str
    tls: WorkerTls | None  # None: the daemon serves plaintext
    # Presented as a bearer token; "" when the daemon asks for none. Out of the repr, which logs show.
    token: str = field(repr=False)
    name: str
    version: int
    sha256: str
    format: str  # npy or npz
    array_name: str
    input_array: str
    target_array: str
    cache_size: int  # bytes of datasets the node keeps (training.ray_dataset_cache_size)


@dataclass(frozen=True)
class RayPayload:
    job_id: str
    config: dict[str, Any]
    dataset: DatasetFetch
    train_indices: Any  # numpy int64 array
    val_indices: Any  # numpy int64 array or None
    threads: int
    weights_only: bool  # the start bytes are a checkpoint's model weights only (a PBT trial's start)
    resource_interval_s: float
    compile: str
    max_workspace: int
    world: int  # processes of the job: 1 on a TrainingActor, the DDP ranks under Ray Train
    device_kind: str  # cpu or cuda
    # training.module_paths: each Ray node must hold the same directories (the same modules).
    module_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where Ray placed a job's actor."""

    node_id: str
    node_ip: str
    pid: int
    resources: dict[str, float]  # the node's total resources

    def describe(self) -> str:
        custom = ", ".join(
            f"{k} {v:g}"
            for k, v in sorted(self.resources.items())
            if not k.startswith(("node:", "memory", "object"))
        )
        return f"Ray node {self.node_id[:12]} at {self.node_ip} ({custom}), pid {self.pid}"


# How long `take` gathers messages after the first before it answers.
_GATHER_S = 0.05


class _ActorChannel:
    """The pipe end training.worker._run expects, over the actor's outbox and cancel flag."""

    def __init__(
        self, out: Callable[[WorkerMessage], None], start: list[bytes], cancel: threading.Event
    ) -> None:
        self._out = out
        self._start = start
        self._cancel = cancel
        self._cancel_delivered = False
        # The actor's parent, the raylet: when it dies the actor is re-parented and must stop,
        # as a local worker does when the daemon's end of its pipe closes.
        self._raylet_pid = os.getppid()

    def send(self, message: WorkerMessage) -> None:
        self._out(message)

    def recv_bytes(self) -> bytes:
        return self._start.pop(0)

    def poll(self) -> bool:
        if os.getppid() != self._raylet_pid:
            raise EOFError("the raylet that ran this actor has died")
        return self._cancel.is_set() and not self._cancel_delivered

    def recv(self) -> CancelMessage:
        self._cancel_delivered = True
        return CancelMessage()


def placement_here() -> Placement:
    """Where this Ray worker process runs."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node: dict[str, Any] = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    return Placement(
        node_id, str(node.get("NodeManagerAddress", "")), os.getpid(), dict(node.get("Resources", {}))
    )


def train_here(
    payload: RayPayload, start: bytes, initial: bytes, channel: Any, rank: int = 0, cuda_index: int = 0
) -> None:
    """Fetch the dataset (cached per node) and train as a local worker would, talking over `channel`."""
    from tesserad.training.ray_worker_client import cached_dataset

    fetch = payload.dataset
    path = cached_dataset(
        fetch.target,
        fetch.token,
        fetch.name,
        fetch.version,
        fetch.sha256,
        fetch.format,
        fetch.cache_size,
        fetch.tls,
    )
    worker_payload = WorkerPayload(
        job_id=payload.job_id,
        config=payload.config,
        data=DataSource(str(path), fetch.format, fetch.array_name, fetch.input_array, fetch.target_array),
        train_indices=payload.train_indices,
        val_indices=payload.val_indices,
        rank=rank,
        world=payload.world,
        device_kind=payload.device_kind,
        cuda_indices=[cuda_index] * payload.world if payload.device_kind == "cuda" else [],
        threads=payload.threads,
        resume=bool(start),
        weights_only=payload.weights_only,
        initial_weights=bool(initial),
        resource_interval_s=payload.resource_interval_s,
        compile=payload.compile,
        max_workspace=payload.max_workspace,
        module_paths=payload.module_paths,
    )
    _run(channel, worker_payload)


class TrainingActor:
    """A single-process job on Ray. Made a Ray actor (with the job's resources) by
    training.ray_jobs; max_concurrency 2, so that `cancel` runs beside a waiting `take`."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._changed = threading.Condition()
        self._outbox: list[WorkerMessage] = []
        self._ended = False

    def placement(self) -> Placement:
        return placement_here()

    def cancel(self) -> None:
        self._cancel.set()

    def start(self, payload: RayPayload, start: bytes, initial: bytes) -> None:
        """Begin training in a thread of this actor; its messages wait for `take`."""
        threading.Thread(target=self._train, args=(payload, start, initial), daemon=True).start()

    def take(self, timeout: float) -> tuple[list[WorkerMessage], bool]:
        """What the job sent since the last take (waiting up to `timeout` seconds for
        something), and whether it has ended: no message follows an end."""
        with self._changed:
            if not self._outbox and not self._ended:
                self._changed.wait(timeout)
                if self._outbox:
                    # Gather what follows the first message for a moment: a step event every
                    # few milliseconds would otherwise cost an actor call each.
                    self._changed.wait_for(lambda: self._ended, _GATHER_S)
            messages, self._outbox = self._outbox, []
            return messages, self._ended

    def _send(self, message: WorkerMessage) -> None:
        with self._changed:
            self._outbox.append(message)
            self._changed.notify_all()

    def _train(self, payload: RayPayload, start: bytes, initial: bytes) -> None:
        try:
            channel = _ActorChannel(self._send, [b for b in (start, initial) if b], self._cancel)
            # Ray shows the actor only the GPU it was given, as cuda:0.
            train_here(payload, start, initial, channel)
        except BaseException as exc:
            self._send(ErrorMessage(*_classify(exc)))
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

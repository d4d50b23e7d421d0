"""A job of several processes (DDP) on Ray: a Ray Train `TorchTrainer` and its driver.

Imported only where ray is installed: by training.ray_jobs when it runs such a job, and by the
Ray processes that unpickle what it sends.

Per attempt the daemon starts a `TrainDriver` actor (no resources of its own). It runs
`TorchTrainer.fit()` in a thread, so that nothing in the daemon blocks on it, and relays between
the trainer's workers and the daemon:

- Ray Train places one worker per rank (ScalingConfig: the job's processes, each with the
  resources of training.ray_jobs.ray_resources) across whichever nodes have room, and sets up
  torch.distributed between them (gloo on CPU, NCCL on GPUs). Each rank reports where it runs
  and waits: the daemon moves the job to RUNNING once all are placed and hands them, through
  the driver, the payload and the bytes they start from (checkpoint, parent weights).
- Each rank fetches the dataset from the daemon by content hash (cached per node) and trains
  with the local worker's code; what a local worker sends on its pipe (events, checkpoints,
  the final weights, its error) it puts to the driver in order, and the daemon takes it from
  there into the job's event path. The answer to each put says whether the job is cancelled,
  so the ranks stop together at a step boundary.
- Stopping without a step boundary (cancel past training.cancel_grace_s, the daemon's
  shutdown) is Ray Train's own abort, what its driver does on Ctrl-C: the controller removes
  the workers and their placement group. Abort needs the controller's handle, which a
  controller callback sends to the driver (ray is pinned: the callback interface is a Ray
  Train developer API). While the controller waits for room for the workers its control loop
  does not yield, so an abort would wait until they are placed: training.ray_jobs therefore
  starts a trainer only once a placement group of the same bundles was ready, and a trainer
  cancelled while still waiting (another job took the room first) is told to let its ranks
  return as soon as they are placed, and ends then.

Ray Train does not retry (FailureConfig(max_failures=0)): its retries resume from checkpoints
reported to RunConfig.storage_path, which across nodes must be shared storage, while the
daemon keeps the job's checkpoints itself. A rank that dies ends the fit with Ray's reason and
the daemon applies the spec's restart policy (training.ray_jobs), starting a new trainer from
the checkpoint it holds. Ray Train still writes a marker file into storage_path when a run
starts; it goes to this node's temp directory and is removed when the fit ends. Ray Train's
datasets callback is left out (a trainer is given no Ray Dataset): it would start an idle actor
process per trainer (another Ray Train developer API, the trainer's default callbacks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback

from tesserad.training.ray_worker import Placement, RayPayload, placement_here, train_here
from tesserad.training.worker import CancelMessage, ErrorMessage, WorkerMessage, _classify

# Where Ray Train writes its marker files, on the driver's node; nothing is kept there.
STORAGE_DIR = Path(tempfile.gettempdir()) / "tessera-ray-train"
# How often a rank with nothing to send asks whether the job is cancelled.
_RELAY_POLL_S = 0.25


@dataclass(frozen=True)
class TrainerSpec:
    """How the driver sets up a job's TorchTrainer."""

    run_name: str
    world: int  # workers, one per rank
    resources: dict[str, float]  # per worker, in Ray's names (CPU, GPU, custom resources)
    use_gpu: bool
    env_vars: dict[str, str]  # the workers' environment (tesserad.runtime_env)


@dataclass(frozen=True)
class Begin:
    """What every rank starts from once all are placed."""

    payload: RayPayload
    start: bytes  # a checkpoint or another trial's weights; b"" for none
    initial: bytes  # a fine-tuning parent's weights; b"" for none


@dataclass(frozen=True)
class TrainerEnd:
    """How the fit ended: returned (both empty), a rank's process died, or Ray Train failed."""

    died: str  # Ray's reason a rank's worker process died
    failed: str  # Ray Train's reason it failed otherwise


@dataclass(frozen=True)
class Relayed:
    """What the daemon takes from the driver at one poll."""

    placed: dict[int, Placement]  # every rank that has reported where it runs
    messages: list[WorkerMessage]  # in each rank's order
    end: TrainerEnd | None  # set once fit() has returned; no message follows it


def driver_env(worker_env: dict[str, str]) -> dict[str, str]:
    """The driver actor's environment: Ray Train V2, whatever the node's default."""
    return {**worker_env, "RAY_TRAIN_V2_ENABLED": "1"}


class TrainDriver:
    """Made a Ray actor by training.ray_jobs with max_concurrency for every rank's calls beside
    the daemon's (see `concurrency`)."""

    @staticmethod
    def concurrency(world: int) -> int:
        # Each rank blocks in `placed` and calls `put`; the daemon's take, begin, cancel and
        # abort, and the controller's callback, run beside them.
        return 2 * world + 5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._placed: dict[int, Placement] = {}
        self._inbox: list[WorkerMessage] = []
        self._begin: Begin | None = None
        self._cancelled = False
        self._aborting = False
        self._controller: Any = None
        self._end: TrainerEnd | None = None

    # -- from the daemon

    def fit(self, spec: TrainerSpec) -> None:
        """Start the trainer; returns at once (the fit runs in a thread of this actor)."""
        threading.Thread(target=self._fit, args=(spec,), name="fit", daemon=True).start()

    def take(self, timeout: float) -> Relayed:
        """What arrived since the last take, waiting up to `timeout` seconds for something."""
        with self._changed:
            if not self._inbox and self._end is None:
                self._changed.wait(timeout)
            messages, self._inbox = self._inbox, []
            return Relayed(dict(self._placed), messages, self._end)

    def begin(self, begin: Begin) -> None:
        with self._changed:
            self._begin = begin
            self._changed.notify_all()

    def cancel(self) -> None:
        """Ask the ranks to stop at the next step boundary (ranks not yet begun: not to start)."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def abort(self) -> None:
        """Stop the trainer now: Ray Train's abort removes its workers and placement group."""
        with self._changed:
            self._cancelled = True
            self._aborting = True
            controller = self._controller
            self._changed.notify_all()
        if controller is not None:
            controller.abort.remote()

    # -- from the controller and the ranks

    def controller_started(self, controller: Any) -> None:
        with self._lock:
            self._controller = controller
            aborting = self._aborting
        if aborting:
            controller.abort.remote()

    def placed(self, rank: int, placement: Placement) -> Begin | None:
        """A rank is placed: wait for what it starts from; None if the job was cancelled first."""
        with self._changed:
            self._placed[rank] = placement
            self._changed.notify_all()
            while self._begin is None and not self._cancelled:
                self._changed.wait()
            return None if self._cancelled and self._begin is None else self._begin

    def put(self, messages: list[WorkerMessage]) -> bool:
        """A rank's messages, in its order; answers whether the job is cancelled."""
        with self._changed:
            if messages:
                self._inbox.extend(messages)
                self._changed.notify_all()
            return self._cancelled

    # -- the fit

    def _fit(self, spec: TrainerSpec) -> None:
        from ray.exceptions import RayActorError
        from ray.train import FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

        class Trainer(TorchTrainer):  # type: ignore[misc]  # ray is read as Any
            # Without Ray Train's datasets callback: for the Ray Datasets a trainer is given, it
            # starts an actor (a process importing ray.data) per trainer even when given none, and
            # the ranks fetch their data from the daemon instead.
            def _create_default_callbacks(self) -> list[Any]:
                defaults = super()._create_default_callbacks()
                return [c for c in defaults if not isinstance(c, DatasetsCallback)]

        me = ray.get_runtime_context().current_actor
        end = TrainerEnd("", "")
        try:
            trainer = Trainer(
                _rank_main,
                train_loop_config={"driver": me},
                torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=spec.world, use_gpu=spec.use_gpu, resources_per_worker=spec.resources
                ),
                run_config=RunConfig(
                    name=spec.run_name,
                    storage_path=str(STORAGE_DIR),
                    failure_config=FailureConfig(max_failures=0),
                    callbacks=[_HandToDriver(me)],
                    worker_runtime_env={"env_vars": spec.env_vars},
                ),
            )
            trainer.fit()
        except WorkerGroupError as exc:
            # A rank whose process died shows as its failed health check; its peers' errors
            # (a collective that lost its peer) are what followed from that.
            failures = [getattr(e, "health_check_failure", e) for e in exc.worker_failures.values()]
            deaths = [e for e in failures if isinstance(e, RayActorError)]
            end = TrainerEnd(_first_line(deaths[0]), "") if deaths else TrainerEnd("", _first_line(exc))
        except Exception as exc:
            end = TrainerEnd("", _first_line(exc))
        finally:
            shutil.rmtree(STORAGE_DIR / spec.run_name, ignore_errors=True)
        with self._changed:
            self._end = end
            self._changed.notify_all()


class _HandToDriver(ControllerCallback):  # type: ignore[misc]  # ray is read as Any
    """Runs in the trainer's controller: hands the driver the controller's handle (for abort)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    def after_controller_start(self, train_run_context: Any) -> None:
        self._driver.controller_started.remote(ray.get_runtime_context().current_actor)


class _RelayChannel:
    """The pipe end training.worker._run expects, over the driver: messages go out in order from
    a thread of their own (batched while a put is in flight); each put's answer is the cancel flag."""

    def __init__(self, driver: Any, start: list[bytes]) -> None:
        self._driver = driver
        self._start = start
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[WorkerMessage] = []
        self._closing = False
        self._cancel = threading.Event()
        self._cancel_delivered = False
        # Set when the driver is gone, and with it the daemon's interest.
        self._driver_gone = threading.Event()
        # As a TrainingActor's channel: the raylet's death re-parents this process.
        self._raylet_pid = os.getppid()
        self._pump = threading.Thread(target=self._send_loop, name="relay", daemon=True)
        self._pump.start()

    def send(self, message: WorkerMessage) -> None:
        with self._lock:
            self._pending.append(message)
        self._wake.set()

    def recv_bytes(self) -> bytes:
        return self._start.pop(0)

    def poll(self) -> bool:
        # Raised as a local worker's pipe does when the daemon's end closes: training stops.
        if os.getppid() != self._raylet_pid:
            raise EOFError("the raylet that ran this rank has died")
        if self._driver_gone.is_set():
            raise EOFError("the job's Ray Train driver is gone")
        return self._cancel.is_set() and not self._cancel_delivered

    def recv(self) -> CancelMessage:
        self._cancel_delivered = True
        return CancelMessage()

    def close(self) -> None:
        """Deliver what is pending, then stop."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._pump.join()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(_RELAY_POLL_S)
            with self._lock:
                self._wake.clear()
                batch, self._pending = self._pending, []
                closing = self._closing
            try:
                cancelled = ray.get(self._driver.put.remote(batch))
            except ray.exceptions.RayError:
                self._driver_gone.set()
                return
            if cancelled:
                self._cancel.set()
            if closing:
                return


def _rank_main(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: one DDP rank."""
    import ray.train
    import ray.train.torch

    driver = config["driver"]
    rank = ray.train.get_context().get_world_rank()
    begin: Begin | None = ray.get(driver.placed.remote(rank, placement_here()))
    if begin is None:
        return
    channel = _RelayChannel(driver, [b for b in (begin.start, begin.initial) if b])
    try:
        device = ray.train.torch.get_device()
        train_here(begin.payload, begin.start, begin.initial, channel, rank, device.index or 0)
    except BaseException as exc:
        channel.send(ErrorMessage(*_classify(exc)))
        # Raised on, so that Ray Train ends the other ranks (blocked in a collective) too.
        raise
    finally:
        channel.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def wait_ended(driver: Any, timeout_s: float | None) -> TrainerEnd | None:
    """Drain the driver until its fit has ended (or `timeout_s` passed, or the driver is gone):
    its end, or None."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        try:
            relayed: Relayed = ray.get(driver.take.remote(_RELAY_POLL_S))
        except ray.exceptions.RayError:
            return None
        if relayed.end is not None:
            return relayed.end
    return None

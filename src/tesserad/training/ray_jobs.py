"""Training jobs on a Ray cluster (training.backend = "ray").

The same jobs as training.jobs (store, queue order, events, checkpoints, registration), but
each attempt runs on Ray, placed by Ray with the job's resources: per process one CPU, one GPU
for a CUDA job, and any custom resources of spec.devices.ray_resources.

- A single-process job runs as one Ray actor (training.ray_worker.TrainingActor). What it
  sends (events, checkpoints, final weights), taken by long polls, enters the daemon's event
  path as a local worker's pipe messages. Cancel asks it to stop at a step boundary and kills it after
  training.cancel_grace_s; it is killed whenever its job ends, so Ray frees its resources at
  once.
- A job of several processes (DDP) runs as a Ray Train TorchTrainer (training.ray_trainer):
  Ray Train reserves every rank's resources at once, across whichever nodes have room, and
  sets up torch.distributed (gloo on CPU, NCCL on GPUs). Its ranks' messages reach the same
  event path through the trainer's driver actor. Cancel stops the ranks together at a step
  boundary; past training.cancel_grace_s (or before the ranks began) Ray Train aborts the
  run, removing its workers and their placement group. So does a failure in the daemon once the
  trainer's driver is launched (its attempt's begin, the store), before the job ends FAILED.

The job stays QUEUED until Ray has placed every process; it is RUNNING from then (a job whose
dataset version was force-deleted meanwhile fails from QUEUED, as a local one). Ray, not the
daemon's queue, decides which of the waiting jobs starts next. A worker that dies (killed, its
node lost) fails the job with Ray's reason, unless spec.max_restarts allows another attempt from
the last checkpoint (not while the job's cancel waits: it ends CANCELLED); the restarts a job
has used are stored with it, so the budget holds across daemon restarts. When the daemon stops
or dies, Ray ends its actors (and trainers) with its driver; the next daemon finds the jobs
RUNNING in the store, marks them INTERRUPTED and resumes them from their last checkpoint, as for
local jobs (it does not reattach), without counting a restart.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from tesserad.errors import InvalidArgument
from tesserad.training.job_records import ENDED, Checkpoint, JobRecord
from tesserad.training.jobs import DatasetGone, Jobs, WorkerData, _Running, cancelled_in_queue
from tesserad.training.ray_cluster import RAY_CLOSED, ConnectionGone, RayCluster
from tesserad.training.ray_worker import DatasetFetch, Placement, RayPayload, TrainingActor, WorkerTls
from tesserad.training.resume import resumes_fully
from tesserad.training.scheduler import DeviceInventory
from tesserad.training.spec import DeviceFacts
from tesserad.training.worker import (
    CheckpointMessage,
    DoneMessage,
    ErrorMessage,
    EventMessage,
    WorkerMessage,
)

log = logging.getLogger(__name__)

_POLL_S = 0.25
# How long an aborted trainer may take to remove its workers before its driver is killed.
_ABORT_WAIT_S = 30.0
# Ray decides what fits; submit-time checks against the daemon's own slots do not apply.
_UNBOUNDED = 1_000_000


class _AdmitAll(DeviceInventory):
    """Ray places the jobs: the scheduler hands every queued job to it at once, in queue order."""

    def __init__(self) -> None:
        super().__init__(0, 0)

    def allocate(self, request: dict[str, Any]) -> builtins.list[str] | None:
        return []

    def release(self, devices: builtins.list[str]) -> None:
        return None


def ray_resources(devices: dict[str, Any]) -> dict[str, float]:
    """The Ray resources each process of a job (one actor per DDP rank) asks for."""
    request = {"CPU": 1.0}
    if devices["kind"] == "cuda":
        request["GPU"] = 1.0
    request.update(devices.get("ray_resources", {}))
    return request


class RayJobs(Jobs):
    restarts_dead_workers = True
    places_by_ray_resources = True

    def __init__(
        self,
        *args: Any,
        cluster: RayCluster,
        daemon_target: Callable[[], str],
        worker_tls: Callable[[], WorkerTls | None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cluster = cluster
        self._daemon_target = daemon_target
        # Read at each job, as the token: a rotated certificate reaches the jobs that follow.
        self._worker_tls = worker_tls
        self._inventory = _AdmitAll()
        self._device_facts = DeviceFacts(_UNBOUNDED, _UNBOUNDED)
        self._ray_threads = self._settings.threads_per_slot or 1
        # Each actor class as registered with Ray, by the connection (RayCluster.generation) it was
        # registered on: one of a lost connection is not known to the next.
        self._remote_classes: dict[type, tuple[int, Any]] = {}

    def start(self) -> None:
        self._cluster.start()
        super().start()

    def close(self) -> None:
        super().close()
        self._cluster.close()

    def check(self, raw_spec: dict[str, Any]) -> dict[str, Any]:
        self._cluster.require()
        config = super().check(raw_spec)
        devices = config["devices"]
        if devices["kind"] == "cuda" and devices["indices"]:
            raise InvalidArgument(
                "spec.devices.cuda: on Ray (training.backend = ray) Ray picks the GPUs; ask for gpu_count"
            )
        self._cluster.check_feasible(ray_resources(devices), devices["count"])
        return config

    # -- running one job

    def _worker_token(self) -> str:
        path = self._settings.ray_worker_token_file
        return path.read_text().strip() if path is not None else ""

    def _supervise(self, job_id: str, devices: builtins.list[str]) -> None:
        with self._lock:
            job = self._active[job_id]
            running = _Running([], [])
            self._running[job_id] = running
            if self._closing:
                running.stopping_for_shutdown = True
            elif (
                job_id in self._cancel_pending
                # A cancel that landed between a dead worker's attempt and this one went to that
                # attempt's `_Running`, still registered then.
                or self._cancel_requested.get(job_id, job.cancel_requested_at) is not None
            ):
                self._cancel_pending.discard(job_id)
                self._request_stop(running)
        try:
            self._run_on_ray(job, running)
        except DatasetGone as gone:
            self._fail_dataset_gone(job_id, gone)
        except Exception as exc:
            if running.settled:
                # Its end is stored (or it is queued again): only the clean-up after it failed.
                log.warning("a Ray job's clean-up failed", extra={"job_id": job_id}, exc_info=True)
            else:
                log.exception("a Ray job failed", extra={"job_id": job_id})
                self._fail(self.get(job_id), "exception", f"the job could not run on Ray: {exc}")
        finally:
            with self._lock:
                # A job queued again (a restart) may already have its next supervisor.
                if self._running.get(job_id) is running:
                    del self._running[job_id]
                self._wake.notify_all()

    def _run_on_ray(self, job: JobRecord, running: _Running) -> None:
        final = self._final_checkpoint(job)
        if final is not None:
            self._finish_trained(job, final)
            return
        while True:
            while not self._cluster.wait_connected(_POLL_S):
                if running.stopping_for_shutdown:
                    return
                if running.cancel_deadline is not None:
                    self._finish(job, "cancelled", cancelled_in_queue(job))
                    return
            try:
                # A reconnect waits until the job's calls on this connection have failed or ended.
                with self._cluster.calls() as generation:
                    self._run_on(job, running, generation)
                return
            except ConnectionGone:
                # Lost again before the job made a call: it waits for the next connection.
                continue

    def _run_on(self, job: JobRecord, running: _Running, generation: int) -> None:
        """Run the job's attempt on connection `generation`."""
        from ray.exceptions import RayError

        try:
            if job.config["devices"]["count"] > 1:
                self._run_trainer(job, running)
            else:
                self._run_actor(job, running)
        except Exception as exc:
            # A worker's own error that Ray raises as a ConnectionError too (RayTaskError subclasses
            # the task's exception) is not the connection's.
            if isinstance(exc, ConnectionError) and not isinstance(exc, RayError):
                message = self._cluster.lost(exc, generation)
            elif self._cluster.current(generation) or not _raised_by_ray(exc):
                raise
            else:
                # Lost by another job's call, or closed by Ray itself: Ray Client answers each later
                # call "not connected", in a plain Exception, and Ray "not started" once client mode
                # is off. Dropped here unless it already was.
                log.info(
                    "a Ray job's call failed on a lost connection",
                    extra={"job_id": job.job_id, "cause": str(exc)},
                )
                message = self._cluster.lost(ConnectionError(RAY_CLOSED), generation)
            self._lost_cluster(self.get(job.job_id), running, message)

    def _lost_cluster(self, job: JobRecord, running: _Running, message: str) -> None:
        """The connection to the cluster failed during the job's attempt (`message` says how): its
        workers are out of reach, so it ends as a dead worker's attempt does."""
        if running.settled:
            # Lost as the workers of an attempt whose end was stored (or which was queued again)
            # were released: the job is no longer this attempt's.
            log.warning(
                "lost the Ray cluster after a job's attempt ended",
                extra={"job_id": job.job_id, "cause": message},
            )
            return
        if job.state in ENDED:
            # Lost as its workers were released, after its end was stored.
            log.warning(
                "lost the Ray cluster after a job ended", extra={"job_id": job.job_id, "cause": message}
            )
        elif running.stopping_for_shutdown:
            if job.state == "running":
                self._interrupted_by_shutdown(job)
        elif running.cancel_deadline is not None:
            self._finish(job, "cancelled", f"cancelled, though {message}")
        elif job.state == "queued":
            # Ray had not placed it: nothing of it ran, so it spends no restart and waits again.
            job = self._append(
                job,
                "log",
                {
                    "level": "warning",
                    "message": f"{message}; the job waits for Ray to place it once connected again",
                },
            )
            with self._lock:
                self._queue[job.job_id] = self._queued(job)
                self._wake.notify_all()
        else:
            self._attempt_lost(job, message)
        running.settled = True

    def _payload(self, job: JobRecord, checkpoint: Checkpoint | None, data: WorkerData) -> RayPayload:
        """What a Ray worker needs of the attempt that has just begun (`_begin_attempt`) on `data`
        (`_worker_data`, asked before the begin: a job whose dataset is gone never runs)."""
        config = job.config
        source = data.source
        return RayPayload(
            job_id=job.job_id,
            config=config,
            dataset=DatasetFetch(
                target=self._daemon_target(),
                tls=self._worker_tls(),
                token=self._worker_token(),
                name=config["data"]["dataset"],
                version=config["data"]["version"],
                sha256=config["dataset_sha256"],
                format=source.format,
                array_name=source.array_name,
                input_array=source.input_array,
                target_array=source.target_array,
                cache_size=self._settings.ray_dataset_cache_size,
            ),
            train_indices=data.train_indices,
            val_indices=data.val_indices,
            threads=self._ray_threads,
            weights_only=checkpoint is None and not resumes_fully(config),
            resource_interval_s=self._settings.resource_interval_s,
            compile=self._settings.compile,
            max_workspace=self._nn_max_workspace,
            world=config["devices"]["count"],
            device_kind=config["devices"]["kind"],
            module_paths=self._settings.module_paths,
        )

    def _stopped_while_waiting(self, job: JobRecord, running: _Running, release: Callable[[], None]) -> bool:
        """While Ray places the job: True when the job is to stop (cancelled: it ends here)."""
        if running.stopping_for_shutdown:
            return True
        if running.cancel_deadline is not None:
            release()
            self._finish(job, "cancelled", "cancelled before Ray placed it")
            running.settled = True
            return True
        return False

    def _settle(
        self,
        job: JobRecord,
        running: _Running,
        done: DoneMessage | None,
        error: ErrorMessage | None,
        died: str | None,
    ) -> None:
        """Store how an attempt ended, once its Ray resources are released."""
        if running.stopping_for_shutdown:
            self._interrupted_by_shutdown(job)
        elif died is None and error is not None:
            self._fail(job, error.kind, error.message)
        elif died is None and done is not None and done.status == "succeeded":
            self._succeed(job, done)
        elif died is None and (done is not None or running.cancel_deadline is not None):
            self._cancelled(job, at_step_boundary=done is not None)
        elif running.cancel_deadline is not None:
            # Not restarted under spec.max_restarts: the job was to end.
            self._finish(job, "cancelled", f"cancelled, though the Ray worker died before it stopped: {died}")
        else:
            self._worker_died(job, died or "it ended without reporting a result")
        running.settled = True

    def _handle(self, job: JobRecord, message: WorkerMessage, ended: _Ended) -> JobRecord:
        if isinstance(message, EventMessage):
            return self._on_event(job, message)
        if isinstance(message, CheckpointMessage):
            return self._on_checkpoint(job, message)
        if isinstance(message, DoneMessage):
            # Every rank's says how training stopped; the leader's carries the weights.
            if ended.done is None or message.weights is not None:
                ended.done = message
        elif isinstance(message, ErrorMessage) and ended.error is None:
            ended.error = message
        return job

    def _log_placements(self, job: JobRecord, placements: list[Placement]) -> JobRecord:
        world = len(placements)
        for rank, placement in enumerate(placements):
            prefix = f"rank {rank} of {world} " if world > 1 else ""
            job = self._append(
                job, "log", {"level": "info", "message": f"{prefix}placed on {placement.describe()}"}
            )
        return job

    def _remote(self, cls: type) -> Any:
        """`cls` as a Ray actor class of the current connection to the cluster."""
        import ray

        generation = self._cluster.generation
        known = self._remote_classes.get(cls)
        if known is None or known[0] != generation:
            known = (generation, ray.remote(cls))
            self._remote_classes[cls] = known
        return known[1]

    # -- a single-process job: one actor

    def _run_actor(self, job: JobRecord, running: _Running) -> None:
        import ray

        request = ray_resources(job.config["devices"])
        placing = self._remote(TrainingActor).options(
            num_cpus=request.pop("CPU"),
            num_gpus=request.pop("GPU", 0.0),
            resources=request,
            max_concurrency=2,
            # As a local worker's (tesserad.runtime_env): glibc reads them at process start, and
            # Ray starts a process of its own for an actor with its own variables.
            runtime_env={"env_vars": dict(self._worker_env)},
            name=f"tessera-{job.job_id}",
        )
        actor = placing.remote()
        released = False

        def release() -> None:
            """Kill the actor: Ray frees its resources."""
            nonlocal released
            if not released:
                released = True
                # On a lost connection there is nothing to kill: a lost Ray Client session takes
                # its actors along, and the error that lost it is the one to report.
                try:
                    ray.kill(actor)
                except Exception:
                    if self._cluster.intact():
                        raise

        try:
            placed = actor.placement.remote()
            while not ray.wait([placed], timeout=_POLL_S)[0]:
                if self._stopped_while_waiting(job, running, release):
                    break
            else:
                self._placed(job, running, actor, placed, release)
        except BaseException:
            # The error on its way says what happened, not one of the clean-up after it.
            with contextlib.suppress(Exception):
                release()
            raise
        release()

    def _placed(
        self, job: JobRecord, running: _Running, actor: Any, placed: Any, release: Callable[[], None]
    ) -> None:
        """Run the attempt of the actor Ray has placed (or say why Ray could not)."""
        import ray
        from ray.exceptions import RayError

        try:
            placement: Placement = ray.get(placed)
        except RayError as exc:
            if not self._cluster.intact():
                raise
            self._worker_died(job, _first_line(exc))
            running.settled = True
            return
        self._attempt(job, running, actor, placement, release)

    def _attempt(
        self, job: JobRecord, running: _Running, actor: Any, placement: Placement, release: Callable[[], None]
    ) -> None:
        import ray
        from ray.exceptions import RayError

        data = self._worker_data(job)
        job, checkpoint, start, initial = self._begin_attempt(job, [f"ray:{placement.node_id}"])
        job = self._log_placements(job, [placement])
        actor.start.remote(self._payload(job, checkpoint, data), start, initial)
        ended = _Ended()
        killed = False
        cancel_sent = False
        try:
            while not (running.stopping_for_shutdown or killed):
                messages, finished = ray.get(actor.take.remote(_POLL_S))
                for message in messages:
                    job = self._handle(job, message, ended)
                if finished:
                    break
                if running.cancel_deadline is not None:
                    if not cancel_sent:
                        actor.cancel.remote()
                        cancel_sent = True
                    if time.monotonic() > running.cancel_deadline:
                        killed = True
        except RayError as exc:
            if not self._cluster.intact():
                raise
            ended.died = _first_line(exc)
        # Before the job's end is stored: whoever sees it ended finds its resources released.
        release()
        self._settle(job, running, ended.done, ended.error, ended.died)

    # -- a job of several processes (DDP): a Ray Train TorchTrainer

    def _run_trainer(self, job: JobRecord, running: _Running) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        from tesserad.training.ray_trainer import TrainDriver, driver_env

        devices = job.config["devices"]
        world = devices["count"]
        # Ray Train's controller cannot be aborted while it waits for room (its control loop
        # does not yield then): the daemon waits for room itself, with a placement group of the
        # trainer's bundles and strategy, and starts the trainer once Ray could place it.
        probe = placement_group([ray_resources(devices)] * world, strategy="PACK")
        removed = False

        def remove_probe() -> None:
            nonlocal removed
            if not removed:
                removed = True
                try:
                    remove_placement_group(probe)
                except Exception:
                    # A lost session takes its placement groups along.
                    if self._cluster.intact():
                        raise

        try:
            waiting = False
            while not ray.wait([probe.ready()], timeout=_POLL_S)[0]:
                if self._stopped_while_waiting(job, running, remove_probe):
                    return
                if not waiting:
                    # Said once: a job QUEUED for minutes otherwise gives no reason.
                    waiting = True
                    each = ", ".join(f"{amount:g} {name}" for name, amount in ray_resources(devices).items())
                    note = (
                        f"waiting for room on the Ray cluster: {world} processes of {each} each; "
                        "the job starts once Ray can place them all"
                    )
                    job = self._append(job, "log", {"level": "info", "message": note})
        except BaseException:
            # The error on its way says what happened, not one of the clean-up after it.
            with contextlib.suppress(Exception):
                remove_probe()
            raise
        remove_probe()
        driver = (
            self._remote(TrainDriver)
            .options(
                num_cpus=0,
                max_concurrency=TrainDriver.concurrency(world),
                runtime_env={"env_vars": driver_env(self._worker_env)},
            )
            .remote()
        )
        try:
            self._follow_trainer(job, running, driver)
        except BaseException:
            # Whatever failed once the driver was launched (the dataset, the attempt's begin, the
            # store): left running, its trainer holds every rank's resources until the daemon stops.
            # A lost session has taken it along, and the error that lost it is the one to report.
            if self._cluster.intact():
                log.warning(
                    "stopping the Ray Train trainer of a job that failed", extra={"job_id": job.job_id}
                )
                with contextlib.suppress(Exception):
                    _stop_trainer(driver)
            raise

    def _follow_trainer(self, job: JobRecord, running: _Running, driver: Any) -> None:
        """Start the trainer on `driver`, begin the attempt once Ray placed every rank, relay
        until the fit ends, and store how it ended."""
        import ray
        from ray.exceptions import RayError

        from tesserad.training.ray_trainer import Begin, Relayed, TrainerSpec

        devices = job.config["devices"]
        world = devices["count"]
        driver.fit.remote(
            TrainerSpec(
                run_name=f"tessera-{job.job_id}-{job.attempt + 1}",
                world=world,
                resources=ray_resources(devices),
                use_gpu=devices["kind"] == "cuda",
                env_vars=dict(self._worker_env),
            )
        )
        ended = _Ended()
        begun = False
        cancel_sent = False
        abort_deadline: float | None = None
        try:
            while abort_deadline is None or time.monotonic() < abort_deadline:
                if not begun and (running.stopping_for_shutdown or running.cancel_deadline is not None):
                    break
                # Abort (no step boundary to wait for): at shutdown, or a cancel past
                # training.cancel_grace_s.
                if abort_deadline is None and (
                    running.stopping_for_shutdown
                    or (running.cancel_deadline is not None and time.monotonic() > running.cancel_deadline)
                ):
                    driver.abort.remote()
                    abort_deadline = time.monotonic() + _ABORT_WAIT_S
                elif running.cancel_deadline is not None and not cancel_sent:
                    driver.cancel.remote()
                    cancel_sent = True
                relayed: Relayed = ray.get(driver.take.remote(_POLL_S))
                if not begun and len(relayed.placed) == world:
                    placements = [relayed.placed[rank] for rank in range(world)]
                    data = self._worker_data(job)
                    job, checkpoint, start, initial = self._begin_attempt(
                        job, [f"ray:{p.node_id}" for p in placements]
                    )
                    job = self._log_placements(job, placements)
                    driver.begin.remote(Begin(self._payload(job, checkpoint, data), start, initial))
                    begun = True
                for message in relayed.messages:
                    job = self._handle(job, message, ended)
                if relayed.end is not None:
                    ended.died = relayed.end.died or None
                    ended.failed = relayed.end.failed
                    break
        except RayError as exc:
            if not self._cluster.intact():
                raise
            # The driver itself is gone (its node was lost), and with it the trainer it ran.
            ended.died = f"the Ray Train driver died: {_first_line(exc)}"
        if not begun and running.cancel_deadline is not None and not running.stopping_for_shutdown:
            # Ray took the resources back from the probe and has not placed the trainer yet:
            # its ranks are told not to start, and it ends (its driver with it) once placed.
            driver.cancel.remote()
            threading.Thread(target=_end_when_placed, args=(self._cluster, driver), daemon=True).start()
            self._finish(job, "cancelled", "cancelled before Ray placed it")
            running.settled = True
            return
        # Before the job's end is stored: the trainer has removed its workers (or the driver's
        # end takes them along: at shutdown, with the daemon's Ray job).
        ray.kill(driver)
        if not begun:
            # Still QUEUED: at shutdown it stays so, for the next daemon.
            if not running.stopping_for_shutdown:
                self._worker_died(
                    job, ended.died or ended.failed or "the trainer ended before its ranks began"
                )
                running.settled = True
            return
        if abort_deadline is not None:
            # What the ranks said as they were torn down follows from the abort.
            ended.error = None
        if ended.failed and not (ended.died or ended.error or ended.done or running.cancel_deadline):
            ended.died = f"Ray Train failed: {ended.failed}"
        self._settle(job, running, ended.done, ended.error, ended.died)

    def _worker_died(self, job: JobRecord, why: str) -> None:
        """Fail the job with Ray's reason, or queue it again per spec.max_restarts; a job whose
        training had finished (its final checkpoint is stored) ends from that checkpoint."""
        self._attempt_lost(job, f"the Ray worker died: {why}")

    def _attempt_lost(self, job: JobRecord, message: str) -> None:
        """The attempt's workers are gone (`message` says why): as `_worker_died`."""
        final = self._final_checkpoint(job)
        if final is not None:
            self._finish_trained(job, final)
            return
        restarts = job.restarts
        allowed = job.config.get("max_restarts", 0)
        if restarts >= allowed:
            self._fail(job, "crash", message + (f" (after {restarts} restarts)" if restarts else ""))
            return
        # Stored with the job's next event: a daemon restart does not reset the budget.
        job = replace(job, restarts=restarts + 1)
        checkpoint = self._resume_checkpoint(job)
        where = (
            f"from the epoch {checkpoint.epoch} checkpoint"
            if checkpoint
            else "from the start (no checkpoint yet)"
        )
        job = self._append(job, "log", {"level": "warning", "message": message})
        job = self._set_state(
            job,
            "queued",
            f"{message}; restarting {where} (restart {restarts + 1} of spec.max_restarts {allowed})",
            also=self._run_status(job, "running"),
        )
        with self._lock:
            self._queue[job.job_id] = self._queued(job)
            self._wake.notify_all()


@dataclass
class _Ended:
    """What an attempt's workers said about how it ended, and what Ray said."""

    done: DoneMessage | None = None
    error: ErrorMessage | None = None
    died: str | None = None  # a worker process died: Ray's reason
    failed: str = ""  # Ray Train failed otherwise: its reason


def _stop_trainer(driver: Any) -> None:
    """Abort a trainer and kill its driver: Ray Train's abort removes the ranks and their
    placement group (ranks not yet begun return at once), and the driver's end the rest."""
    import ray

    from tesserad.training.ray_trainer import wait_ended

    driver.abort.remote()
    wait_ended(driver, _ABORT_WAIT_S)
    ray.kill(driver)


def _end_when_placed(cluster: RayCluster, driver: Any) -> None:
    """Kill a cancelled trainer's driver once its fit has ended (or its connection is lost: the
    lost session takes it along)."""
    import ray

    from tesserad.training.ray_trainer import wait_ended

    generation = cluster.generation
    try:
        if wait_ended(driver, None) is not None:
            ray.kill(driver)
    except Exception:
        if cluster.current(generation):
            raise


def _raised_by_ray(exc: BaseException) -> bool:
    """Whether Ray's code raised `exc` (not the daemon's, such as its store's)."""
    tb: TracebackType | None = exc.__traceback__
    module = ""
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return module == "ray" or module.startswith("ray.")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

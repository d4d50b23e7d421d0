"""Training jobs on a Ray cluster (training.backend = "ray").

The same jobs as training.jobs (store, queue order, events, checkpoints, registration), but
each attempt runs as Ray actors (training.ray_worker) placed by Ray with the job's resources:
one actor per process, each with one CPU, one GPU for a CUDA job, and any custom resources of
spec.devices.ray_resources. A job of several processes (DDP) reserves them at once in a
placement group, and its ranks meet for torch.distributed at rank 0's node. The job stays
QUEUED until Ray places its actors; it is RUNNING from then. Ray, not the daemon's queue, decides
which of the waiting jobs starts next. What the actor yields (events,
checkpoints, final weights) enters the daemon's event path as a local worker's pipe messages.

Cancel asks the actor to stop at a step boundary and kills it after training.cancel_grace_s;
an actor is killed whenever its job ends, so Ray frees its resources at once. A worker that
dies (killed, its node lost) fails the job with Ray's reason, unless spec.max_restarts allows
another attempt from the last checkpoint. When the daemon stops or dies, Ray ends its actors
with its driver; the next daemon finds the jobs RUNNING in the store, marks them INTERRUPTED and
resumes them from their last checkpoint, as for local jobs (it does not reattach).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from typing import Any

from tesserad.errors import InvalidArgument
from tesserad.training.job_records import JobRecord
from tesserad.training.jobs import Jobs, _Running
from tesserad.training.ray_cluster import RayCluster
from tesserad.training.ray_worker import DatasetFetch, Placement, RayPayload, TrainingActor
from tesserad.training.scheduler import DeviceInventory
from tesserad.training.spec import DeviceFacts
from tesserad.training.worker import CheckpointMessage, DoneMessage, ErrorMessage, EventMessage

log = logging.getLogger(__name__)

_POLL_S = 0.25
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

    def __init__(
        self, *args: Any, cluster: RayCluster, daemon_target: Callable[[], str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cluster = cluster
        self._daemon_target = daemon_target
        self._inventory = _AdmitAll()
        self._device_facts = DeviceFacts(_UNBOUNDED, _UNBOUNDED)
        self._ray_threads = self._settings.threads_per_slot or 1
        # Restarts after a worker died, per job, in this daemon's life.
        self._restarts: dict[str, int] = {}
        self._actor_class: Any = None

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
            elif job_id in self._cancel_pending:
                self._cancel_pending.discard(job_id)
                self._request_stop(running)
        try:
            self._run_on_ray(job, running)
        except Exception as exc:
            log.exception("a Ray job failed", extra={"job_id": job_id})
            self._fail(self.get(job_id), "exception", f"the job could not run on Ray: {exc}")
        finally:
            with self._lock:
                # A job queued again (a restart) may already have its next supervisor.
                if self._running.get(job_id) is running:
                    del self._running[job_id]
                self._wake.notify_all()

    def _actors(self, job: JobRecord, group: Any) -> list[Any]:
        """One actor per process of the job; several go into the placement group `group`."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._actor_class is None:
            self._actor_class = ray.remote(TrainingActor)
        devices = job.config["devices"]
        request = ray_resources(devices)
        options: dict[str, Any] = {
            "num_cpus": request.pop("CPU"),
            "num_gpus": request.pop("GPU", 0.0),
            "resources": request,
            "max_concurrency": 2,
            # As a local worker's (tesserad.runtime_env): glibc reads them at process start, and
            # Ray starts a process of its own for an actor with its own variables.
            "runtime_env": {"env_vars": dict(self._worker_env)},
        }
        if group is None:
            return [self._actor_class.options(**options, name=f"tessera-{job.job_id}").remote()]
        return [
            self._actor_class.options(
                **options,
                name=f"tessera-{job.job_id}-{rank}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=rank
                ),
            ).remote()
            for rank in range(devices["count"])
        ]

    def _run_on_ray(self, job: JobRecord, running: _Running) -> None:
        import ray
        from ray.exceptions import RayError
        from ray.util.placement_group import placement_group, remove_placement_group

        while not self._cluster.wait_connected(_POLL_S):
            if running.stopping_for_shutdown:
                return
            if running.cancel_deadline is not None:
                self._finish(job, "cancelled", "cancelled before it started")
                return
        world = job.config["devices"]["count"]
        # DDP: Ray reserves every process's resources at once (packed onto as few nodes as
        # fit), so that no rank waits for a peer that cannot be placed.
        group = (
            placement_group([ray_resources(job.config["devices"])] * world, strategy="PACK")
            if world > 1
            else None
        )
        actors: list[Any] = []
        released = False

        def release() -> None:
            """Kill the actors and drop the placement group: Ray frees their resources."""
            nonlocal released
            if not released:
                released = True
                for actor in actors:
                    ray.kill(actor)
                if group is not None:
                    remove_placement_group(group)

        try:
            waiting = [group.ready()] if group is not None else []
            while waiting and not ray.wait(waiting, timeout=_POLL_S)[0]:
                if self._stopped_while_waiting(job, running, release):
                    return
            actors = self._actors(job, group)
            placed = [actor.placement.remote() for actor in actors]
            while len(ray.wait(placed, num_returns=len(placed), timeout=_POLL_S)[0]) < len(placed):
                if self._stopped_while_waiting(job, running, release):
                    return
            try:
                placements: list[Placement] = ray.get(placed)
            except RayError as exc:
                self._worker_died(job, _first_line(exc))
                return
            self._attempt(job, running, actors, placements, release)
        finally:
            release()

    def _stopped_while_waiting(self, job: JobRecord, running: _Running, release: Callable[[], None]) -> bool:
        """While Ray places the job: True when the job is to stop (cancelled: it ends here)."""
        if running.stopping_for_shutdown:
            return True
        if running.cancel_deadline is not None:
            release()
            self._finish(job, "cancelled", "cancelled before Ray placed it")
            return True
        return False

    def _attempt(
        self,
        job: JobRecord,
        running: _Running,
        actors: list[Any],
        placements: list[Placement],
        release: Callable[[], None],
    ) -> None:
        import ray
        from ray.exceptions import RayError

        config = job.config
        world = len(actors)
        data = self._datasets.worker_data(config["data"])
        job, checkpoint, start, initial = self._begin_attempt(job, [f"ray:{p.node_id}" for p in placements])
        for rank, placement in enumerate(placements):
            prefix = f"rank {rank} of {world} " if world > 1 else ""
            job = self._append(
                job, "log", {"level": "info", "message": f"{prefix}placed on {placement.describe()}"}
            )
        source = data.source
        fetch = DatasetFetch(
            target=self._daemon_target(),
            token=self._worker_token(),
            name=config["data"]["dataset"],
            version=config["data"]["version"],
            sha256=config["dataset_sha256"],
            format=source.format,
            array_name=source.array_name,
            input_array=source.input_array,
            target_array=source.target_array,
        )
        master_port = ray.get(actors[0].free_port.remote()) if world > 1 else 0
        streams = [
            actor.run.remote(
                RayPayload(
                    job_id=job.job_id,
                    config=config,
                    dataset=fetch,
                    train_indices=data.train_indices,
                    val_indices=data.val_indices,
                    threads=self._ray_threads,
                    weights_only=checkpoint is None,
                    resource_interval_s=self._settings.resource_interval_s,
                    compile=self._settings.compile,
                    max_workspace=self._nn_max_workspace,
                    rank=rank,
                    world=world,
                    device_kind=config["devices"]["kind"],
                    master_addr=placements[0].node_ip,
                    master_port=master_port,
                ),
                start,
                initial,
            )
            for rank, actor in enumerate(actors)
        ]
        done: DoneMessage | None = None
        error: ErrorMessage | None = None
        died: str | None = None
        killed = False
        cancel_sent = False
        open_streams = list(streams)
        try:
            while open_streams and not (running.stopping_for_shutdown or killed):
                ready, _ = ray.wait(open_streams, num_returns=1, timeout=_POLL_S)
                for stream in ready:
                    try:
                        message = ray.get(next(stream))
                    except StopIteration:
                        open_streams.remove(stream)
                        continue
                    if isinstance(message, EventMessage):
                        job = self._on_event(job, message)
                    elif isinstance(message, CheckpointMessage):
                        job = self._on_checkpoint(job, message)
                    elif isinstance(message, DoneMessage):
                        # The leader's carries the weights.
                        if done is None or message.weights is not None:
                            done = message
                    elif isinstance(message, ErrorMessage) and error is None:
                        error = message
                if running.cancel_deadline is not None:
                    if not cancel_sent:
                        for actor in actors:
                            actor.cancel.remote()
                        cancel_sent = True
                    if time.monotonic() > running.cancel_deadline:
                        killed = True
        except RayError as exc:
            # A rank that died leaves its peers blocked in a collective: all are killed below.
            died = _first_line(exc)
        # Before the job's end is stored: whoever sees it ended finds its resources released.
        release()
        if running.stopping_for_shutdown:
            self._set_state(
                job,
                "interrupted",
                "tesserad is shutting down; the job resumes when it starts again",
                ends=True,
                also=self._run_status(job, "interrupted"),
            )
        elif error is not None:
            self._fail(job, error.kind, error.message)
        elif died is None and done is not None and done.status == "succeeded":
            self._succeed(job, done)
        elif died is None and (done is not None or running.cancel_deadline is not None):
            self._cancelled(job, at_step_boundary=done is not None)
        else:
            self._worker_died(job, died or "it ended without reporting a result")

    def _worker_died(self, job: JobRecord, why: str) -> None:
        """Fail the job with Ray's reason, or queue it again per spec.max_restarts."""
        restarts = self._restarts.get(job.job_id, 0)
        allowed = job.config.get("max_restarts", 0)
        message = f"the Ray worker died: {why}"
        if restarts >= allowed:
            self._restarts.pop(job.job_id, None)
            self._fail(job, "crash", message + (f" (after {restarts} restarts)" if restarts else ""))
            return
        self._restarts[job.job_id] = restarts + 1
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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

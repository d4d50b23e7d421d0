"""Training jobs: submit, queue, run in worker processes, cancel, resume after a daemon crash.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; a daemon that stops (or dies)
while a job runs leaves it INTERRUPTED, and the next daemon re-queues it to resume from its
last checkpoint as a new attempt of the same run; but a job whose cancel the daemon had
acknowledged (the request is stored with the job) ends CANCELLED at the next start instead, and
one whose training had finished (its final checkpoint is stored) ends from that checkpoint,
registered once, without training again.
Each job runs in its own worker process (one per rank under DDP, started by
tesserad.training.launcher), supervised by one thread that stores and fans out what the worker
sends; a worker that dies takes nothing else with it.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import copy
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Protocol

from tesserad.config import TrainingSettings
from tesserad.datasets.references import (
    blob_held,
    delete_unheld_blobs,
    hold_blob,
    init_from_holder,
    job_holder,
    release_blob,
    release_dataset,
    start_weights_holder,
    sweep_holder,
)
from tesserad.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tesserad.host import usable_cpu_count
from tesserad.ids import new_id
from tesserad.names import validate_name
from tesserad.paging import PageFill, answer_bytes, resume_key
from tesserad.run_params import flatten_params
from tesserad.store import BlobRef, BlobStore, Key, ReadTxn, Store, WriteTxn, each_row_once
from tesserad.training.events import EventLog, JobEvent
from tesserad.training.finetune import ParentLookup, tensor_mismatches
from tesserad.training.job_records import (
    ENDED,
    Checkpoint,
    JobError,
    JobRecord,
    Registered,
    decode_job,
    encode_job,
    listed_checkpoints,
    retained_at_end,
)
from tesserad.training.launcher import unrunnable_interpreter, worker_context
from tesserad.training.resume import (
    FULL,
    WEIGHTS,
    ResumeSource,
    full_resume_problems,
    part_way_through_epoch,
    resume_start_step,
    resumes_fully,
)
from tesserad.training.scheduler import DeviceInventory, QueuedJob, pick_runnable, queue_position
from tesserad.training.spec import DatasetFacts, DeviceFacts, normalize_spec
from tesserad.training.submit_requests import JOB_REQUESTS, RequestKept, submit_request
from tesserad.training.tracking import MetricPoint, Run, Tracking, run_text_problem, write_points
from tesserad.training.worker import (
    CancelMessage,
    CheckpointMessage,
    DataSource,
    DoneMessage,
    ErrorMessage,
    EventMessage,
    WorkerMessage,
    WorkerPayload,
    worker_main,
)

if TYPE_CHECKING:
    # What Registration returns, named for the type checker alone: jobs reach the registry
    # through that seam.
    from tesserad.registry import VersionRecord

log = logging.getLogger(__name__)

# The full resumes (spec.resume_from) whose run does not yet hold all of its copy of the source
# run's points: keyed by job id, put by the submit, deleted with the copy's last chunk.
RESUME_COPIES = "resume_copies"
# The metrics a job logs at each step it reports; the others are its epochs'.
STEP_METRICS = ("loss", "lr")
TABLES = ["jobs", RESUME_COPIES, *JOB_REQUESTS.tables]
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
# More events than a job appends after its last epoch (its final checkpoint, a few lines, its
# registration, its end): how far back Jobs looks for the worker's early-stopping line in the
# events of a job whose record does not hold it (`_with_early_stop`).
_AFTER_LAST_EPOCH = 32


def job_models(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (model, version) every stored job fine-tuned from or registered, as stored."""
    for _key, raw in txn.scan("jobs"):
        job = decode_job(raw)
        if "fine_tune" in job.config:
            yield job.config["fine_tune"]["model"], job.config["fine_tune"]["version"]
        if job.registered is not None:
            yield job.registered.model, job.registered.version


def job_datasets(txn: ReadTxn) -> Iterator[tuple[object, object]]:
    """The (dataset, version) every stored job trained on, or was to, as stored."""
    for _key, raw in txn.scan("jobs"):
        job = decode_job(raw)
        if "data" in job.config:
            yield job.config["data"]["dataset"], job.config["data"]["version"]
            continue
        # A record whose config does not carry its data (written by an earlier daemon) still
        # names the dataset in its spec; version 0 there means "the newest", no number.
        named = job.spec.get("data", {}).get("dataset", {})
        if named.get("name") and named.get("version"):
            yield named["name"], named["version"]


_POLL_S = 0.25
# A rank that has sent its outcome gets this long to exit, and the job's result is known by then:
# a backstop (freeing a gloo process group could deadlock; training.worker no longer frees it).
_EXIT_GRACE_S = 15.0
# Steps/s is measured over at least this long: step events can arrive in bursts.
_RATE_WINDOW_S = 1.0
# In the "meta" table once the checkpoint retention policy was applied to the jobs a daemon
# older than it left ended.
CHECKPOINTS_RETAINED = ("checkpoints_retained",)
# In the "meta" table once every ended job with early stopping on has a record that holds why
# early stopping ended it, or that it did not (those an older daemon stored are filled from
# their events once at start).
STOPPED_EARLY_STORED = ("jobs_stopped_early_stored",)
# The start-up markers above, each with the store schema from which every daemon keeps what it
# marks (tesserad.store.schema drops one when an older daemon may have broken it).
# Not a schema of its own: a schema-3 daemon from before this marker may store records without
# it after the pass, and answers read those few from their events (`_with_early_stop`); so are
# the FAILED and CANCELLED records of older daemons in a store whose pass, older than this one,
# filled SUCCEEDED records only.
MARKERS: dict[Key, int] = {CHECKPOINTS_RETAINED: 1, STOPPED_EARLY_STORED: 3}
_RETAIN_BATCH = 256

# Starting a process reads os.environ; the worker's variables are set around the start only.
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _worker_environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` set, for the processes started inside."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@dataclass(frozen=True)
class WorkerData:
    """What a worker needs to read the job's dataset."""

    source: DataSource
    train_indices: Any
    val_indices: Any


class DatasetAccess(Protocol):
    def facts(self, name: str, version: int) -> DatasetFacts: ...

    def hold(self, txn: WriteTxn, data: dict[str, Any], holder: str) -> str:
        """Hold the version `data` names (NotFound if it is gone); its sha256."""
        ...

    def worker_data(self, data: dict[str, Any]) -> WorkerData:
        """The version `data` names, resolved for a worker (NotFound if it is gone)."""
        ...


class DatasetGone(FailedPrecondition):
    """The dataset version a job trains on was deleted (with force) before the job could start
    or resume: it cannot go on, on that version or any other."""


class Registration(Protocol):
    def check_alias_room(self, model: str, alias: str) -> None:
        """ResourceExhausted when register_as.alias would be new to a model at its alias cap."""
        ...

    def register(self, job: JobRecord, weights: BlobRef) -> Registered:
        """Register the weights per job.config["register_as"]."""
        ...

    def register_ended(
        self,
        job: JobRecord,
        weights: Callable[[], BlobRef],
        model: str,
        alias: str,
        description: str,
        actor: str,
        alias_move_denied: str,
    ) -> tuple[VersionRecord, bool]:
        """The ended job's version of `model` (the stored `weights()`), and whether the job had it
        already; PermissionDenied saying `alias_move_denied` where `alias` would move onto it."""
        ...


JobListener = Callable[[JobRecord, str, dict[str, Any]], None]


@dataclass(frozen=True)
class JobThroughput:
    """A running job's speed: samples/s as its worker measures it, steps/s as the daemon sees
    its step events arrive (over at least _RATE_WINDOW_S; None until then)."""

    job_id: str
    samples_per_s: float
    steps_per_s: float | None


@dataclass(frozen=True)
class TrainingFigures:
    """What the daemon's metrics show of training, read at one moment."""

    jobs_by_state: dict[str, int]  # every state, ended ones included
    queue_length: int  # jobs waiting for devices
    throughput: list[JobThroughput]  # one per running job that has reported a step


@dataclass
class _StepClock:
    """Where a running job's steps/s is measured from."""

    step: int
    at: float  # time.monotonic()
    throughput: JobThroughput


@dataclass(frozen=True)
class _QueuedEnd:
    """A job's end whose writes are queued for the store (`Jobs._queue_end`)."""

    ended: JobRecord  # the record as ended, once its writes are committed
    refused: JobRecord  # as ended, when the store refused the commit as a whole
    reason: str
    released: set[str]  # blobs its end released: deleted after the commit unless held elsewhere


@dataclass
class _Running:
    """A running job's worker processes and pipes."""

    processes: list[multiprocessing.process.BaseProcess]
    conns: list[Connection]
    cancel_deadline: float | None = None
    stopping_for_shutdown: bool = False
    # The attempt's end is stored (the Ray backend's): what fails after it, in its clean-up, is no
    # longer the job's.
    settled: bool = False


class Jobs:
    # spec.max_restarts: only the Ray backend (training.ray_jobs) starts a dead worker's job again.
    restarts_dead_workers = False
    # spec.devices.ray_resources: only the Ray backend places a job's processes by them.
    places_by_ray_resources = False

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        events: EventLog,
        tracking: Tracking,
        settings: TrainingSettings,
        gpu_count: int,
        datasets: DatasetAccess,
        registration: Registration,
        worker_env: dict[str, str],
        parents: ParentLookup,
        nn_max_workspace: int = 0,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._events = events
        self._tracking = tracking
        self._settings = settings
        self._datasets = datasets
        self._registration = registration
        self._parents = parents
        self._worker_env = worker_env
        self._nn_max_workspace = nn_max_workspace
        self._device_facts = DeviceFacts(settings.cpu_slots, gpu_count)
        self._inventory = DeviceInventory(settings.cpu_slots, gpu_count)
        self._threads = settings.threads_per_slot or max(1, usable_cpu_count() // max(settings.cpu_slots, 1))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # The newest record of every unfinished job. Each job has one writer at a time: whoever
        # took it off the queue (its supervisor, or a cancel before it started).
        self._active: dict[str, JobRecord] = {}
        self._queue: dict[str, QueuedJob] = {}
        self._running: dict[str, _Running] = {}
        self._cancel_pending: set[str] = set()
        # When CancelJob was accepted, by unended job: every write of the job's record takes it.
        self._cancel_requested: dict[str, float] = {}
        # Jobs that ended but whose end the store refused: shown as ended until the next start.
        self._unstored_ends: dict[str, JobRecord] = {}
        self._state_counts: collections.Counter[str] = collections.Counter()
        self._step_clocks: dict[str, _StepClock] = {}
        self._listeners: list[JobListener] = []
        self._supervisors: list[threading.Thread] = []
        self._closing = False
        self._mp = worker_context(settings.worker_start)
        # Whether a sweep's ended trials must keep every checkpoint (PBT copies them while it runs).
        self._sweep_needs_checkpoints: Callable[[str], bool] = lambda _sweep_id: False
        # Held while a sweep trial's end is stored and its listeners are told (`end_trials_holding`).
        self._trial_end_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="training-scheduler", daemon=True)

    # -- lifecycle

    def start(self) -> None:
        """Load jobs from the store: RUNNING ones were cut off by a crash; re-queue what did not end."""
        self._store_stopped_early_once()
        with self._store.read() as txn:
            records = [decode_job(raw) for _, raw in txn.scan("jobs")]
            copying = {str(key[0]) for key, _ in txn.scan(RESUME_COPIES)}
        self._state_counts.update(job.state for job in records)
        for job in records:
            self._events.open_job(job.job_id, job.last_seq, job.state in ENDED)
            if job.job_id in copying:
                # Stopped mid-copy (the job was never queued to the scheduler): copy it all again.
                self._copy_source_points(job)
            if job.state in ENDED:
                continue
            self._active[job.job_id] = job
            if job.cancel_requested_at is not None:
                # Its cancel was acknowledged before the daemon stopped, and holds.
                self._finish(
                    job,
                    "cancelled",
                    "cancelled: tesserad stopped before the job did, and it was not started again",
                )
                log.info(
                    "cancelled job not started again", extra={"job_id": job.job_id, "attempt": job.attempt}
                )
                continue
            if job.state == "running":
                job = self._set_state(
                    job,
                    "interrupted",
                    "tesserad stopped while the job ran",
                    ends=True,
                    also=self._run_status(job, "interrupted"),
                )
            if job.state == "interrupted":
                final = self._final_checkpoint(job)
                checkpoint = final or self._resume_checkpoint(job)
                why = (
                    f"re-queued to finish from its final (epoch {final.epoch}) checkpoint: its training is done"
                    if final
                    else f"re-queued to resume from the epoch {checkpoint.epoch} checkpoint"
                    if checkpoint
                    else "re-queued to start again (no checkpoint yet)"
                )
                job = self._set_state(job, "queued", why)
                log.info(
                    "interrupted job re-queued",
                    extra={
                        "job_id": job.job_id,
                        "attempt": job.attempt + 1,
                        "from_epoch": checkpoint.epoch if checkpoint else 0,
                        "from_step": checkpoint.step if checkpoint else 0,
                    },
                )
            self._queue[job.job_id] = self._queued(job)
        self._scheduler.start()

    def close(self) -> None:
        """Stop scheduling; running jobs are stopped and left INTERRUPTED, to resume next start."""
        with self._lock:
            self._closing = True
            running = list(self._running.values())
            for run in running:
                run.stopping_for_shutdown = True
            self._wake.notify_all()
        for run in running:
            for process in run.processes:
                if process.is_alive():
                    process.kill()
        for thread in [self._scheduler, *self._supervisors]:
            if thread.is_alive():
                thread.join(timeout=30)
        self._events.shutdown()

    def keep_trial_checkpoints_while(self, running: Callable[[str], bool]) -> None:
        """A trial of a sweep for which `running(sweep id)` holds keeps its checkpoints when it
        ends; the sweep's end releases them (`release_checkpoints`)."""
        self._sweep_needs_checkpoints = running

    def end_trials_holding(self, lock: contextlib.AbstractContextManager[Any]) -> None:
        """Store a sweep trial's end and tell the listeners of it while holding `lock`: a reader
        that takes `lock` sees the trial's end only together with its sweep's answer to it."""
        self._trial_end_lock = lock

    def release_checkpoints(self, txn: WriteTxn, job_id: str) -> set[str]:
        """Apply the retention policy to an ended job in `txn` (none to one that has not ended):
        its record lists only the kept checkpoints, and the others' holds go. Returns their sha256,
        for `collect_blobs` after the commit."""
        raw = txn.get("jobs", (job_id,))
        return set() if raw is None else self._release_ended(txn, decode_job(raw))

    def _release_ended(self, txn: WriteTxn, job: JobRecord) -> set[str]:
        if job.state not in ENDED:
            return set()
        job, dropped = self._retained(job)
        if dropped:
            self._put(txn, job)
            self._release_checkpoint_holds(txn, job.job_id, dropped)
        return dropped

    def collect_blobs(self, candidates: set[str]) -> None:
        """Delete those of `candidates` nothing holds (after the commit that released them)."""
        delete_unheld_blobs(self._store, self._blobs, candidates)

    def release_ended_checkpoints_once(self, running_sweeps: set[str]) -> int:
        """Apply the retention policy to every job a daemon older than it left ended (but not to
        trials of `running_sweeps`), once: a marker in "meta" then makes a start cost one read.
        Called at start, before any job can end. Returns how many blobs were released."""
        released: set[str] = set()
        count = 0

        def release(txn: WriteTxn, key: Key, raw: bytes) -> bool:
            job = decode_job(raw)
            if job.sweep_id in running_sweeps:
                return False
            dropped = self._release_ended(txn, job)
            released.update(dropped)
            return bool(dropped)

        def collect(rows: int) -> None:
            # Each batch's released blobs go as soon as it commits, not at the pass's end: a stop
            # midway leaves on disk at most the batch it stopped in. The next start goes over the
            # jobs again (releasing twice leaves the same records).
            nonlocal count
            self.collect_blobs(released)
            count += len(released)
            released.clear()

        each_row_once(
            self._store,
            "jobs",
            CHECKPOINTS_RETAINED,
            release,
            batch=_RETAIN_BATCH,
            reserved=True,
            committed=collect,
        )
        if count:
            log.info("released the checkpoints ended jobs no longer keep", extra={"blobs": count})
        return count

    def _store_stopped_early_once(self) -> None:
        """Store, once, on each record an older daemon left without it, why early stopping ended
        the job or that it did not, as its events say: answers then read the record alone (the
        dashboard lists jobs every 2 s). A stop midway leaves the pass to run again at the next
        start (filling a record twice stores the same)."""

        def fill(txn: WriteTxn, _key: Key, raw: bytes) -> bool:
            job = decode_job(raw)
            if not _stop_unrecorded(job):
                return False
            self._put(txn, self._with_early_stop(job, txn))
            return True

        try:
            # Not in the store's reserve, kept for writes that end something or free space: each
            # record grows by a few bytes.
            filled = each_row_once(self._store, "jobs", STOPPED_EARLY_STORED, fill, batch=_RETAIN_BATCH)
        except ResourceExhausted as exc:
            # A daemon must start on a full store: the records left are answered from their
            # events meanwhile (`_with_early_stop`), and the next start tries again.
            log.warning(
                "the store has no room to store why early stopping ended the jobs an older tesserad "
                "left; they are read from their events until a start finds room: %s",
                exc.message,
            )
            return
        if filled:
            log.info(
                "stored why early stopping ended the jobs an older tesserad left", extra={"jobs": filled}
            )

    def _retained(self, job: JobRecord) -> tuple[JobRecord, set[str]]:
        """The job as the retention policy leaves it when it ends, and the blobs it drops."""
        # A record stored by an earlier daemon may carry no checkpoint policy: the settings' then.
        policy = job.config.get("checkpoints", {})
        kept, dropped = retained_at_end(
            job.checkpoints,
            policy.get("retain_latest", self._settings.checkpoints_keep_latest),
            policy.get("retain_best", self._settings.checkpoints_keep_best),
            policy.get("keep_best_metric", ""),
            policy.get("keep_best_mode", "min"),
        )
        released = job.checkpoints_released + len(job.checkpoints) - len(kept)
        return replace(job, checkpoints=kept, checkpoints_released=released), dropped

    @staticmethod
    def _release_checkpoint_holds(txn: WriteTxn, job_id: str, dropped: set[str]) -> None:
        for sha256 in dropped:
            release_blob(txn, sha256, checkpoint_holder(job_id))

    # -- API

    def add_listener(self, callback: JobListener) -> None:
        """Call `callback(job, kind, data)` after each epoch event ("epoch") and when a job ends
        ("ended"); it runs in the job's supervisor thread, outside every lock of this class (a
        sweep trial's end: under the lock given to `end_trials_holding`)."""
        self._listeners.append(callback)

    def _notify(self, job: JobRecord, kind: str, data: dict[str, Any]) -> None:
        for callback in self._listeners:
            try:
                callback(job, kind, data)
            except Exception:
                log.exception("a job listener failed", extra={"job_id": job.job_id})

    def split_samples(self, name: str, version: int) -> dict[str, int]:
        """The sample count of each split of a dataset version (0: the newest); NotFound if none."""
        return self._datasets.facts(name, version).splits

    def check(self, raw_spec: dict[str, Any]) -> dict[str, Any]:
        """The complete config of a spec, or the error SubmitJob would give."""
        config = normalize_spec(
            raw_spec,
            self._datasets.facts,
            self._device_facts,
            self._parents,
            module_paths=self._settings.module_paths,
        )
        # The tags are the job's run's, with the hyperparameters as its params: bounded as any
        # run's, they keep the job's record within what a GetJob or ListJobs answer can hold.
        if problem := run_text_problem(flatten_params(config), config["tags"]):
            raise InvalidArgument(f"spec.tags: {problem}")
        target = config["register_as"]
        if target and target["alias"]:
            # Checked again at registration: the model may reach its cap while the job runs.
            self._registration.check_alias_room(target["model"], target["alias"])
        if config.get("max_restarts") and not self.restarts_dead_workers:
            raise FailedPrecondition(
                "spec.max_restarts: the local backend does not restart a job whose worker died; "
                "it applies with training.backend = ray"
            )
        if config["devices"].get("ray_resources") and not self.places_by_ray_resources:
            raise FailedPrecondition(
                "spec.devices.ray_resources: the local backend places jobs on this host only; they apply "
                "with training.backend = ray"
            )
        if raw_spec.get("resume_from"):
            config["resume_from"] = self._resume_point(
                str(raw_spec["resume_from"]), config, bool(raw_spec.get("resume_weights_only"))
            )
        elif raw_spec.get("resume_weights_only"):
            raise InvalidArgument(
                "spec.resume_weights_only: it needs resume_from, the job whose newest kept checkpoint's "
                "weights to start from; set resume_from, or leave resume_weights_only unset"
            )
        return config

    def _resume_point(self, job_id: str, config: dict[str, Any], weights_only: bool) -> dict[str, Any]:
        """The checkpoint spec.resume_from names: the newest that job kept, with the job's id and
        its epoch and step (the run's params), its sha256 (where the job starts) and the mode:
        "full" (its optimiser, counts and curve go on, `full_resume_problems` says when they
        cannot) or "weights" (its model weights alone). With init_from too (a fine-tuned job's
        spec, resumed), the checkpoint's weights are the ones it starts from, and init_from gives
        the rest: the architecture, freeze, the head."""
        try:
            source = self.get(job_id)
        except NotFound:
            raise NotFound(f"spec.resume_from: job {job_id!r} does not exist; ListJobs lists them") from None
        if source.state not in ENDED:
            raise FailedPrecondition(
                f"spec.resume_from: job {job_id} is {source.state}; a job starts from the checkpoint of "
                "one that ended: cancel it with CancelJob, or wait for its end"
            )
        if not source.checkpoints:
            raise FailedPrecondition(
                f"spec.resume_from: job {job_id} kept no checkpoint ({source.checkpoints_released} "
                "released as its checkpoints policy and training.checkpoints_keep_* say); train it "
                "again, or start from a job that kept one"
            )
        newest = max(source.checkpoints, key=lambda checkpoint: checkpoint.step)
        label = f"job {job_id}'s checkpoint"
        if found := tensor_mismatches(label, source.config["architecture"], config["architecture"]):
            _refuse_all(InvalidArgument, [f"spec.resume_from: {problem}" for problem in found])
        if not weights_only:
            resumed = ResumeSource(
                job_id, source.config, newest.epoch, newest.step, self._train_samples(source.config)
            )
            train_samples = self._train_samples(config) or 0
            if problems := full_resume_problems(resumed, config, train_samples):
                _refuse_all(FailedPrecondition, problems)
        return {
            "job": job_id,
            "run": source.run_id,
            "epoch": newest.epoch,
            "step": newest.step,
            "sha256": newest.sha256,
            "mode": WEIGHTS if weights_only else FULL,
        }

    def _train_samples(self, config: dict[str, Any]) -> int | None:
        """The sample count of a config's training split; None where its dataset version is gone."""
        data = config["data"]
        try:
            return self.split_samples(data["dataset"], data["version"]).get(data["train_split"])
        except NotFound:
            return None

    def submit(
        self,
        raw_spec: dict[str, Any],
        spec_document: dict[str, Any],
        actor: str,
        sweep_id: str = "",
        start_weights: str = "",
        request_id: str = "",
    ) -> JobRecord:
        """Check the spec, create the job and its run, queue it. `start_weights`: the sha256 of a
        checkpoint (of another job) whose model weights the job starts from instead of fresh ones.
        `request_id` (see submit_requests): a submit sent again with the id of one whose job
        exists answers that job, checked and created nothing."""
        request = submit_request(actor, request_id, spec_document)
        if earlier := JOB_REQUESTS.earlier(self._store, request, time.time()):
            return self.get(earlier)
        config = self.check(raw_spec)
        resume = config.get("resume_from")
        if resume and start_weights and start_weights != resume["sha256"]:
            # A PBT trial's exploit (start_weights from its sweep) outranks its base's resume_from.
            config = {key: value for key, value in config.items() if key != "resume_from"}
            resume = None
        start_weights = start_weights or (resume["sha256"] if resume else "")
        job_id = new_id("job")
        document = copy.deepcopy(spec_document)
        document.setdefault("data", {}).setdefault("dataset", {})["version"] = config["data"]["version"]
        document["experiment"] = config["experiment"]
        if fine_tune := config.get("fine_tune"):
            # As the dataset: the version an alias named at submit, so the spec stays reproducible.
            document["init_from"] = {"model": fine_tune["model"], "version": fine_tune["version"]}
        run = Run(
            run_id=new_id("run"),
            experiment=config["experiment"],
            name=config["run_name"] or job_id,
            status="running",
            params=flatten_params(config),
            tags=config["tags"],
            start_time=time.time(),
            end_time=None,
            attempts=0,
            job_id=job_id,
        )
        document["run_name"] = run.name
        job = JobRecord(
            job_id=job_id,
            spec=document,
            config=config,
            state="queued",
            experiment=config["experiment"],
            run_id=run.run_id,
            attempt=0,
            devices=(),
            created_at=time.time(),
            started_at=None,
            ended_at=None,
            progress=0.0,
            epoch=0,
            step=0,
            total_steps=0,
            metrics={},
            error=None,
            registered=None,
            last_seq=0,
            created_by=actor,
            sweep_id=sweep_id,
            checkpoints=(),
            start_weights=start_weights,
        )
        # Before the job is stored: ListJobs shows it from the commit on, before this thread goes
        # on, and a watch of it must find its events' channel then.
        self._events.open_job(job_id, 0, False)
        try:
            with self._store.write() as txn:
                JOB_REQUESTS.keep(txn, request, job_id, time.time())
                self._tracking.ensure_experiment(txn, config["experiment"])
                try:
                    self._tracking.put_new_run(txn, run)
                except AlreadyExists as exc:
                    raise AlreadyExists(f"spec.run_name: {exc.message}") from None
                if resume and resumes_fully(config):
                    txn.put(RESUME_COPIES, (job_id,), b"")
                self.hold_dataset(txn, config, job_holder(job_id))
                if sweep_id:
                    # The sweep holds it too, until the sweep ends: a version its submit did not
                    # foresee (a newer one, when the spec names none) joins its holds here.
                    self.hold_dataset(txn, config, sweep_holder(sweep_id))
                if start_weights:
                    if resume and not blob_held(txn, start_weights):
                        raise FailedPrecondition(
                            f"spec.resume_from: job {resume['job']}'s epoch {resume['epoch']} checkpoint "
                            "was released while the job was submitted; submit it again"
                        )
                    hold_blob(txn, start_weights, start_weights_holder(job_id))
                if config.get("fine_tune"):
                    self._hold_parent_weights(txn, job)
                self._put(txn, job)
        except RequestKept as taken:
            self._events.forget_job(job_id)
            return self.get(taken.created_id)
        except BaseException:
            self._events.forget_job(job_id)
            raise
        with self._lock:
            self._active[job_id] = job
            self._state_counts[job.state] += 1
        if resume and resumes_fully(config):
            try:
                self._copy_source_points(job)
            except Exception:
                # Else it would wait, never queued, until the next start copied it again.
                self._fail(
                    job,
                    "exception",
                    f"its run could not take job {resume['job']}'s points up to step {resume['step']}; "
                    "submit it again",
                )
                raise
        with self._lock:
            # Until the queued event below is committed, the job is this thread's alone: the
            # scheduler wakes up only then.
            ahead = queue_position([*self._queue.values(), self._queued(job)], job_id)
        submitted = self._set_state(
            job, "queued", f"queued behind {ahead} job{'s' if ahead != 1 else ''}" if ahead else "queued"
        )
        with self._lock:
            self._queue[job_id] = self._queued(job)
            self._wake.notify_all()
        # The job as submitted, not read back: the scheduler may have started it already.
        return submitted

    def _copy_source_points(self, job: JobRecord) -> None:
        """Give a full resume's run the source run's points up to the checkpoint's step, before the
        job is queued: in chunks after the submit's commit, not in it, so that the store's writer
        is not held for the whole copy. The job's row in RESUME_COPIES goes with the last chunk; a
        daemon stopped before that copies again at its next start, before the job is queued."""
        resume = job.config["resume_from"]
        # The source's look at an epoch max_steps cut short is no point of the resumed curve: the
        # resumed job logs that epoch's metrics at its end, as the uninterrupted job would have.
        # Batch size, processes and samples are the source's (full_resume_problems).
        samples = self._train_samples(job.config)
        cut = samples is not None and part_way_through_epoch(
            resume["epoch"], resume["step"], samples, job.config
        )
        self._tracking.copy_metrics_through(
            resume["run"],
            job.run_id,
            resume["step"],
            lambda txn: txn.delete(RESUME_COPIES, (job.job_id,)),
            at_step_only=STEP_METRICS if cut else None,
        )

    def refuse_deleted_experiment(self, txn: ReadTxn, name: str) -> None:
        """FailedPrecondition if the experiment is deleted: a job's submit into it is refused."""
        self._tracking.refuse_deleted_experiment(txn, name)

    def hold_dataset(self, txn: WriteTxn, config: dict[str, Any], holder: str) -> None:
        """Hold the dataset version `config` was checked against. The check read it in an earlier
        transaction: one deleted (or deleted and uploaded again) since refuses the submit here, as
        it would have there, instead of leaving a job that fails when it starts."""
        data = config["data"]
        try:
            sha256 = self._datasets.hold(txn, data, holder)
        except NotFound as exc:
            raise NotFound(f"spec.data.dataset: {exc.message}") from None
        if sha256 != config["dataset_sha256"]:
            raise FailedPrecondition(
                f"spec.data.dataset: dataset {data['dataset']!r} v{data['version']} was replaced while "
                "the job was submitted; submit it again"
            )

    @staticmethod
    def _hold_parent_weights(txn: WriteTxn, job: JobRecord) -> None:
        """Keep the weights a fine-tuning job starts from until it ends, even if their version is
        deleted meanwhile."""
        fine_tune = job.config["fine_tune"]
        if not blob_held(txn, fine_tune["sha256"]):
            raise NotFound(
                f"spec.init_from: {fine_tune['model']} v{fine_tune['version']} was deleted while the job was submitted"
            )
        hold_blob(txn, fine_tune["sha256"], init_from_holder(job.job_id))

    def figures(self) -> TrainingFigures:
        with self._lock:
            return TrainingFigures(
                jobs_by_state={state: self._state_counts[state] for state in STATES},
                queue_length=len(self._queue),
                throughput=[clock.throughput for clock in self._step_clocks.values()],
            )

    def unended_ids(self) -> set[str]:
        """The jobs whose end is not stored (yet)."""
        with self._lock:
            return {*self._active, *self._unstored_ends}

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id in self._active:
                return self._active[job_id]
            if job_id in self._unstored_ends:
                return self._unstored_ends[job_id]
        with self._store.read() as txn:
            raw = txn.get("jobs", (job_id,))
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist; ListJobs lists them")
        return self._with_early_stop(decode_job(raw))

    def _with_early_stop(self, job: JobRecord, txn: ReadTxn | None = None) -> JobRecord:
        """`job`, holding why early stopping ended it where its record does not (stored by an
        older daemon, or ending with no epoch of this daemon's): its events say it, read in
        `txn` if given. Read once per job: at its end, or by the start-up pass over the records
        older daemons left (this daemon's records hold it from the job's first epoch on); only a
        record a schema-3 daemon from before the pass stored after it is read at each answer.

        The worker's line follows the job's last epoch event and final checkpoint, and only its
        registration and its end come after it: the events from the end back to that epoch hold it.
        That attempt's events are stored by then.
        """
        if not _stop_unrecorded(job):
            return job
        newest = (
            self._events.newest(job.job_id, _AFTER_LAST_EPOCH)
            if txn is None
            else self._events.newest_in(txn, job.job_id, _AFTER_LAST_EPOCH)
        )
        found = None
        for event in newest:
            if event.kind == "epoch":
                break
            if event.kind == "log" and "early_stopping" in event.data:
                found = event.data["early_stopping"]
                break
        return replace(job, stopped_early=found, stopped_early_recorded=True)

    def list(
        self, states: list[str], experiment: str, sweep_id: str, size: int, token: str
    ) -> tuple[list[JobRecord], str]:
        """Newest first."""
        if experiment:
            validate_name("experiment", experiment)
        query = {"list": "jobs", "states": sorted(states), "experiment": experiment, "sweep": sweep_id}
        after = resume_key(token, query)
        fill: PageFill[JobRecord] = PageFill(size, query)
        with self._lock:
            active = {**self._unstored_ends, **self._active}
        with self._store.read() as txn:
            for key, raw in txn.scan("jobs", after=after, reverse=True):
                job = active.get(str(key[0])) or decode_job(raw)
                if (states and job.state not in states) or (experiment and job.experiment != experiment):
                    continue
                if sweep_id and job.sweep_id != sweep_id:
                    continue
                job = self._with_early_stop(job, txn)
                if not fill.room(answered_bytes(job)):
                    break
                fill.add(key, job)
        return fill.page.items, fill.page.next_page_token

    def tag_run(self, job_id: str, tags: dict[str, str], remove: Iterable[str] = ()) -> None:
        """Set `tags` on the job's run and remove the tags named in `remove`."""
        self._tracking.update_run(self.get(job_id).run_id, None, tags, remove)

    def register_weights(
        self, job_id: str, model: str, alias: str, description: str, actor: str, alias_move_denied: str = ""
    ) -> tuple[VersionRecord, bool]:
        """Register a succeeded job's trained weights, read from its final checkpoint, as a version
        of `model` made by `actor`, as register_as would have (`Registration.register_ended`): for
        a job trained without register_as, or its weights under another model. Returns the version
        and whether the job had registered it before (returned as it is, `alias` moved onto it
        unless `alias_move_denied` says why the caller may not).
        A cancelled job is refused even where its training finished before the cancel took effect:
        its run and record say it was stopped, and a version names them in its lineage."""
        validate_name("model", model)
        job = self.get(job_id)
        if job.state != "succeeded":
            raise FailedPrecondition(f"job {job_id} is {job.state}: {_NOT_REGISTERED[job.state]}")

        def weights() -> BlobRef:
            final = self._final_checkpoint(job)
            if final is None:
                raise FailedPrecondition(_no_final_checkpoint(job))
            try:
                state = self._blobs.read_bytes(final.sha256)
            except DataLoss:
                # Released since `job` was read (a sweep's end releases its trials' checkpoints),
                # not lost: said as for a job read without it.
                fresh = self.get(job_id)
                if self._final_checkpoint(fresh) is None:
                    raise FailedPrecondition(_no_final_checkpoint(fresh)) from None
                raise
            # Imported here: it imports torch, which the daemon otherwise never needs.
            from tesserad.training.checkpoints import checkpoint_weights

            return self._blobs.put_bytes(checkpoint_weights(state))

        return self._registration.register_ended(
            job, weights, model, alias, description, actor, alias_move_denied
        )

    def cancel(self, job_id: str) -> JobRecord:
        queued, requested_at = self._accept_cancel(job_id)
        if queued is not None:
            # Its record takes the request in the same write as its end.
            self._finish(queued, "cancelled", cancelled_in_queue(queued))
        elif requested_at is not None:
            self._store_cancel_request(job_id, requested_at)
        return self.get(job_id)

    def cancel_all(self, job_ids: builtins.list[str]) -> builtins.list[tuple[str, Exception]]:
        """Cancel each of `job_ids` as `cancel` does, what the cancels write stored together: the
        queued jobs' ends and the others' accepted requests go to the store in one commit, after
        which the listeners (and watchers) hear of each end; a cancel of K queued jobs so commits
        once, not K times. A job that has already ended is passed over. Returned: the jobs whose
        cancel failed, each with why; the others' cancels hold."""
        failures: builtins.list[tuple[str, Exception]] = []
        ends: builtins.list[_QueuedEnd] = []
        requests: builtins.list[tuple[str, Future[None]]] = []
        committed = True
        # Held as `_finish` holds it for one end: a reader sees these ends with their sweep's answer.
        with self._trial_end_lock:
            try:
                with self._store.together():
                    for job_id in job_ids:
                        try:
                            queued, requested_at = self._accept_cancel(job_id)
                        except FailedPrecondition:  # it has already ended
                            continue
                        except Exception as exc:
                            failures.append((job_id, exc))
                            continue
                        try:
                            if queued is not None:
                                ends.append(self._queue_end(queued, "cancelled", cancelled_in_queue(queued)))
                            elif requested_at is not None:
                                requests.append((job_id, self._submit_cancel_request(job_id, requested_at)))
                        except Exception as exc:
                            failures.append((job_id, exc))
            except ResourceExhausted:
                committed = False  # each write's own outcome is read below
            for job_id, request in requests:
                failure = request.exception()
                if isinstance(failure, Exception):
                    failures.append((job_id, failure))
            for job in self._stored_ends(ends, committed):
                self._notify(job, "ended", {})
        return failures

    def _accept_cancel(self, job_id: str) -> tuple[JobRecord | None, float | None]:
        """Accept CancelJob for `job_id` (FailedPrecondition when it has ended): a running job is
        asked to stop, one about to start is stopped at its launch. Returned: the job if it was
        queued (taken off the queue, the caller's to end), and when the cancel was accepted
        (None when the job ended meanwhile), for the caller to store."""
        with self._lock:
            job = self._active.get(job_id)
        if job is None:
            state = self.get(job_id).state
            raise FailedPrecondition(f"job {job_id} has already ended ({state}); nothing to cancel")
        with self._lock:
            running = self._running.get(job_id)
            queued = self._queue.pop(job_id, None) is not None
            unended = job_id in self._active
            requested_at = self._cancel_requested.setdefault(job_id, time.time()) if unended else None
            if running is not None:
                self._request_stop(running)
            elif not queued and unended:
                # Between the queue and its worker's start: the launch sees this and stops it.
                self._cancel_pending.add(job_id)
            # Taken off the queue, the job is this thread's to finish.
            return (self._active[job_id] if queued else None), requested_at

    def _store_cancel_request(self, job_id: str, requested_at: float) -> None:
        self._submit_cancel_request(job_id, requested_at).result()

    def _submit_cancel_request(self, job_id: str, requested_at: float) -> Future[None]:
        """Queue an accepted cancel's write into the job's stored record, durable once the
        returned future is done: a daemon that dies before the job's workers stop does not run
        the job again (`start`)."""

        # The stored record as of this commit: the job's own writer may have newer ones queued,
        # and those take the request as they commit (`_append`).
        def work(txn: WriteTxn) -> None:
            raw = txn.get("jobs", (job_id,))
            if raw is not None:
                self._put(txn, replace(decode_job(raw), cancel_requested_at=requested_at))

        return self._store.submit(work)

    def _request_stop(self, running: _Running) -> None:
        """Ask the workers to stop at their next step boundary; they are killed after the grace period."""
        if running.cancel_deadline is not None:
            return
        running.cancel_deadline = time.monotonic() + self._settings.cancel_grace_s
        for conn in running.conns:
            with contextlib.suppress(OSError):
                conn.send(CancelMessage())

    # -- scheduling

    def _queued(self, job: JobRecord) -> QueuedJob:
        return QueuedJob(job.job_id, job.config["priority"], job.job_id, job.config["devices"])

    def _schedule_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                starts = pick_runnable(list(self._queue.values()), self._inventory)
                for queued, _devices in starts:
                    del self._queue[queued.job_id]
                if not starts:
                    self._wake.wait(timeout=1.0)
                    continue
            for queued, devices in starts:
                thread = threading.Thread(
                    target=self._supervise,
                    args=(queued.job_id, devices),
                    name=f"job-{queued.job_id}",
                    daemon=True,
                )
                self._supervisors = [t for t in self._supervisors if t.is_alive()]
                self._supervisors.append(thread)
                thread.start()

    # -- running one job

    def _supervise(self, job_id: str, devices: builtins.list[str]) -> None:
        with self._lock:
            job = self._active[job_id]
        final = self._final_checkpoint(job)
        if final is not None:
            try:
                self._finish_trained(job, final)
            finally:
                self._release(job_id, devices)
            return
        try:
            job, running = self._launch(job, devices)
        except DatasetGone as gone:
            self._fail_dataset_gone(job_id, gone)
            self._release(job_id, devices)
            return
        except Exception as exc:
            cause = start_failure_cause(exc)
            log.exception("job failed to start", extra={"job_id": job_id, "reason": cause or str(exc)})
            self._fail(self.get(job_id), "exception", f"the job could not start: {cause or exc}")
            self._release(job_id, devices)
            return
        try:
            self._follow(job, running)
        except Exception:
            log.exception("job supervisor failed", extra={"job_id": job_id})
            for process in running.processes:
                process.kill()
            self._fail(
                self.get(job_id), "exception", "the daemon lost track of the job's worker; see the daemon log"
            )
        finally:
            for conn in running.conns:
                conn.close()
            for process in running.processes:
                process.join(timeout=10)
            self._release(job_id, devices)

    def _release(self, job_id: str, devices: builtins.list[str]) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._inventory.release(devices)
            self._wake.notify_all()

    @staticmethod
    def _final_checkpoint(job: JobRecord) -> Checkpoint | None:
        """The checkpoint saved when the job's training finished, if it was: a job that has one
        only ends (`_finish_trained`), it never trains again."""
        return next((c for c in job.checkpoints if c.reason == "final"), None)

    def _finish_trained(self, job: JobRecord, final: Checkpoint) -> None:
        """End a job whose training finished but whose end was not stored (the daemon or the
        worker died in between): SUCCEEDED with the final checkpoint's weights and metrics,
        registered unless the record says it was (a registration that was committed but not
        recorded here is found again: registration is idempotent per job)."""
        log.info(
            "job finishing from its final checkpoint, without training again",
            extra={"job_id": job.job_id, "epoch": final.epoch, "step": final.step},
        )
        try:
            weights = None
            if job.config["register_as"] and job.registered is None:
                # Imported here, on this job's supervisor thread: it imports torch, which the
                # daemon otherwise never needs.
                from tesserad.training.checkpoints import checkpoint_weights

                weights = checkpoint_weights(self._blobs.read_bytes(final.sha256))
            self._succeed(job, DoneMessage("succeeded", final.epoch, final.step, final.metrics, weights))
        except Exception as exc:
            log.exception("finishing a job from its final checkpoint failed", extra={"job_id": job.job_id})
            self._fail(
                self.get(job.job_id),
                "exception",
                f"the job could not finish from its final checkpoint: {exc}",
            )

    @staticmethod
    def _resume_checkpoint(job: JobRecord) -> Checkpoint | None:
        """The checkpoint a resumed attempt starts from: the one at the highest step."""
        periodic = [c for c in job.checkpoints if c.reason != "final"]
        return max(periodic, key=lambda c: c.step) if periodic else None

    def _worker_data(self, job: JobRecord) -> WorkerData:
        """The data the job's workers train on; DatasetGone if its version was deleted since the
        job was submitted (by force, while it was queued, or while it ran and was then interrupted)."""
        data = job.config["data"]
        try:
            return self._datasets.worker_data(data)
        except NotFound:
            checkpoint = self._resume_checkpoint(job)
            where = f"resume from its epoch {checkpoint.epoch} checkpoint" if checkpoint else "start"
            # The fix ends the message, where front ends put it in their own words.
            kept = " (its checkpoints are kept as its checkpoint retention says)" if job.checkpoints else ""
            raise DatasetGone(
                f"dataset {data['dataset']!r} v{data['version']} was deleted before the job could {where}{kept}, "
                "and a job trains only on the version it was submitted with: submit it again on another "
                "version of the dataset (ListDatasetVersions lists them)"
            ) from None

    def _fail_dataset_gone(self, job_id: str, gone: DatasetGone) -> None:
        # A force delete's expected outcome, said in the job's error: no traceback in the log.
        log.warning("a job's dataset version was deleted before it could run", extra={"job_id": job_id})
        self._fail(self.get(job_id), "dataset_deleted", gone.message)

    def _begin_attempt(
        self, job: JobRecord, devices: builtins.list[str]
    ) -> tuple[JobRecord, Checkpoint | None, bytes, bytes]:
        """Move the job to RUNNING as its next attempt: (the job, the checkpoint it resumes from,
        the bytes its worker starts from (that checkpoint, or another job's), a fine-tuning
        parent's weights). Shared by the local and the Ray backend (training.ray_jobs)."""
        config = job.config
        checkpoint = self._resume_checkpoint(job) if job.attempt else None
        attempt = job.attempt + 1
        job = replace(job, attempt=attempt, devices=tuple(devices), started_at=job.started_at or time.time())
        run_id = job.run_id

        def start_run(txn: WriteTxn, _event: JobEvent) -> None:
            run = self._tracking.load_run(txn, run_id)
            run.status, run.attempts, run.end_time = "running", attempt, None
            if attempt == 1:
                run.start_time = time.time()
            if checkpoint is not None:
                self._tracking.truncate_metrics_after(txn, run_id, checkpoint.step)
            elif attempt > 1:
                # A full resume's run holds the other job's points up to its checkpoint: they stay.
                self._tracking.truncate_metrics_after(txn, run_id, resume_start_step(config))
            self._tracking.put_run(txn, run)

        resumed = config["resume_from"] if resumes_fully(config) else None
        reason = (
            f"resumed from the epoch {checkpoint.epoch} checkpoint (attempt {attempt})"
            if checkpoint
            else f"resumed from job {resumed['job']}'s epoch {resumed['epoch']} checkpoint (attempt {attempt})"
            if resumed
            else f"started (attempt {attempt})"
            if attempt > 1
            else "started"
        )
        job = self._set_state(job, "running", reason, also=start_run, devices=devices)
        if checkpoint is not None:
            log.info(
                "job resumed from a checkpoint",
                extra={
                    "job_id": job.job_id,
                    "attempt": attempt,
                    "epoch": checkpoint.epoch,
                    "step": checkpoint.step,
                },
            )
        # A job that starts from another's weights (a PBT trial) takes them until it has
        # checkpoints of its own.
        start_sha256 = checkpoint.sha256 if checkpoint else job.start_weights
        resume_bytes = self._blobs.read_bytes(start_sha256) if start_sha256 else b""
        fine_tune = config.get("fine_tune")
        # A resumed attempt's checkpoint (or the start of a PBT trial or of a spec's resume_from)
        # already holds the weights it goes on from.
        initial_bytes = self._blobs.read_bytes(fine_tune["sha256"]) if fine_tune and not resume_bytes else b""
        return job, checkpoint, resume_bytes, initial_bytes

    def _launch(self, job: JobRecord, devices: builtins.list[str]) -> tuple[JobRecord, _Running]:
        config = job.config
        data = self._worker_data(job)
        job, checkpoint, resume_bytes, initial_bytes = self._begin_attempt(job, devices)
        kind = config["devices"]["kind"]
        world = len(devices)
        cuda_indices = [int(d.split(":")[1]) for d in devices] if kind == "cuda" else []
        port = _free_port() if world > 1 else 0
        processes: list[multiprocessing.process.BaseProcess] = []
        conns: list[Connection] = []
        try:
            with _worker_environ(self._worker_env):
                for rank in range(world):
                    parent_end, child_end = self._mp.Pipe()
                    conns.append(parent_end)  # closed below if any start fails
                    payload = WorkerPayload(
                        job_id=job.job_id,
                        config=config,
                        data=data.source,
                        train_indices=data.train_indices,
                        val_indices=data.val_indices,
                        rank=rank,
                        world=world,
                        device_kind=kind,
                        cuda_indices=cuda_indices,
                        master_port=port,
                        threads=self._threads,
                        resume=bool(resume_bytes),
                        weights_only=checkpoint is None and not resumes_fully(config),
                        initial_weights=bool(initial_bytes),
                        resource_interval_s=self._settings.resource_interval_s,
                        compile=self._settings.compile,
                        max_workspace=self._nn_max_workspace,
                        module_paths=tuple(self._settings.module_paths),
                    )
                    process = self._mp.Process(
                        target=worker_main,
                        args=(child_end, payload),
                        name=f"tessera-{job.job_id}-{rank}",
                        daemon=True,
                    )
                    try:
                        process.start()
                    finally:
                        child_end.close()  # the worker's end, in its process only from here
                    processes.append(process)
            for start in (resume_bytes, initial_bytes):
                if start:
                    for conn in conns:
                        conn.send_bytes(start)
        except BaseException:
            # A rank started before the failure would wait for its peers, or its start, for ever.
            _kill(processes)
            for started in processes:
                started.join(timeout=10)
            for conn in conns:
                conn.close()
            raise
        running = _Running(processes, conns)
        with self._lock:
            self._running[job.job_id] = running
            if self._closing:
                running.stopping_for_shutdown = True
                _kill(processes)
            elif job.job_id in self._cancel_pending:
                self._cancel_pending.discard(job.job_id)
                self._request_stop(running)
        return job, running

    def _follow(self, job: JobRecord, running: _Running) -> None:
        """Handle worker messages until every process has exited, then settle the job's state."""
        done: DoneMessage | None = None
        done_at: dict[int, float] = {}  # rank: when its DoneMessage arrived
        # The leader's outcome alone carries the weights: without it a succeeded outcome (from
        # another rank) means the leader died after its training finished.
        leader_done: DoneMessage | None = None
        stopped: set[int] = set()  # ranks killed for lingering after it
        error: ErrorMessage | None = None
        crash_code: int | None = None
        overdue = False  # killed for not stopping within the cancel's grace
        open_conns = list(running.conns)
        while open_conns or any(p.exitcode is None for p in running.processes):
            sentinels = [p.sentinel for p in running.processes if p.exitcode is None]
            for ready in wait([*open_conns, *sentinels], timeout=_POLL_S):
                if not isinstance(ready, Connection):
                    continue
                try:
                    message: WorkerMessage = ready.recv()
                except (EOFError, OSError):
                    open_conns.remove(ready)
                    continue
                if isinstance(message, EventMessage | CheckpointMessage):
                    refused = self._refused_events(job.job_id)
                    try:
                        if refused is None:
                            job = self._on_progress(job, message)
                    except ResourceExhausted as exc:
                        refused = ErrorMessage("storage", _storage_error(message, exc))
                    if refused is not None:
                        # A full disk: the job cannot keep what it does, so it stops now
                        # rather than train on with nothing stored.
                        error = error or refused
                        _kill(running.processes)
                elif isinstance(message, DoneMessage):
                    rank = running.conns.index(ready)
                    done_at[rank] = time.monotonic()
                    if rank == 0:
                        leader_done = message
                    if rank == 0 or done is None:
                        done = message
                elif isinstance(message, ErrorMessage) and error is None:
                    error = message
            if running.cancel_deadline is not None and time.monotonic() > running.cancel_deadline:
                overdue = True
                _kill(running.processes)
            if len(done_at) == len(running.processes):
                _stop_lingering(running.processes, done_at, stopped, job.job_id)
            # A rank that died (after its last words were read) leaves its peers blocked in a
            # collective: stop them too.
            for process, conn in zip(running.processes, running.conns, strict=True):
                if process.exitcode not in (None, 0) and conn not in open_conns:
                    if crash_code is None:
                        crash_code = process.exitcode
                    _kill(running.processes)
        for process in running.processes:
            process.join(timeout=10)
        if running.stopping_for_shutdown:
            self._interrupted_by_shutdown(job)
            return
        if error is None and done is not None and done.status == "succeeded":
            # A run whose last events were not stored did not succeed in anything it can show.
            error = self._refused_events(job.job_id)
        if error is not None:
            self._fail(job, error.kind, error.message)
        elif leader_done is not None and leader_done.status == "succeeded":
            self._succeed(job, leader_done)
        elif done is not None and done.status == "succeeded":
            # Another rank finished training, but the leader died before its outcome, with the
            # weights, arrived: the leader's final checkpoint has them when it was stored.
            final = self._final_checkpoint(job)
            if final is not None:
                self._finish_trained(job, final)
            else:
                self._fail(job, *_crash_error(running.processes[0].exitcode))
        elif done is None and running.cancel_deadline is not None and not overdue:
            _, died = _crash_error(crash_code if crash_code is not None else running.processes[0].exitcode)
            self._finish(job, "cancelled", f"cancelled, though the worker died before it stopped: {died}")
        elif done is not None or running.cancel_deadline is not None:
            self._cancelled(job, at_step_boundary=done is not None)
        elif (final := self._final_checkpoint(job)) is not None:
            # It died after its training finished (the final checkpoint is stored).
            self._finish_trained(job, final)
        else:
            exitcode = crash_code if crash_code is not None else running.processes[0].exitcode
            # 255: also what a spawned worker's failed exec exits with, before it could report.
            cause = unrunnable_interpreter() if exitcode == _EXEC_FAILED else None
            if cause is not None:
                log.error("job failed to start: %s", cause, extra={"job_id": job.job_id})
                self._fail(job, "exception", f"the job could not start: {cause}")
            else:
                self._fail(job, *_crash_error(exitcode))

    def _refused_events(self, job_id: str) -> ErrorMessage | None:
        """The storage error of an event the store refused after it was appended (appends do
        not wait for their commit); any other failure there is the supervisor's own."""
        failure = self._events.take_failure(job_id)
        if failure is None:
            return None
        if isinstance(failure, ResourceExhausted):
            return ErrorMessage("storage", f"the job stopped: storing its events failed: {failure.message}")
        raise failure

    def _on_progress(self, job: JobRecord, message: EventMessage | CheckpointMessage) -> JobRecord:
        if isinstance(message, EventMessage):
            return self._on_event(job, message)
        return self._on_checkpoint(job, message)

    def _on_event(self, job: JobRecord, message: EventMessage) -> JobRecord:
        kind, data = message.kind, message.data
        points: list[MetricPoint] = []
        if kind == "step":
            job = replace(
                job, epoch=data["epoch"], step=data["step"], metrics={**job.metrics, "loss": data["loss"]}
            )
            self._clock_step(job.job_id, data["step"], data["samples_per_s"])
            points = [MetricPoint(key, data[key], data["step"]) for key in STEP_METRICS]
        elif kind == "epoch":
            job = replace(
                job, epoch=data["epoch"], step=data["step"], metrics={**job.metrics, **data["metrics"]}
            )
            points = [MetricPoint(k, v, data["step"]) for k, v in data["metrics"].items()]
            if job.config.get("early_stopping", {}).get("patience"):
                # Not stopped early as of this epoch: an earlier attempt's line, if it trained on
                # from a checkpoint before it, no longer holds.
                job = replace(job, stopped_early=None, stopped_early_recorded=True)
        elif kind == "log" and "early_stopping" in data:
            job = replace(job, stopped_early=data["early_stopping"], stopped_early_recorded=True)
        elif kind == "progress":
            job = replace(job, progress=data["fraction"], total_steps=data["total_steps"])
        run_id, experiment = job.run_id, job.experiment

        def also(txn: WriteTxn, event: JobEvent) -> None:
            if points:
                write_points(txn, experiment, run_id, points, event.time)

        job = self._append(job, kind, data, also)
        if kind == "epoch":
            self._notify(job, "epoch", data)
        return job

    def _on_checkpoint(self, job: JobRecord, message: CheckpointMessage) -> JobRecord:
        info = message.info
        ref = self._blobs.put_bytes(message.data)
        entry = Checkpoint(
            epoch=info.epoch,
            step=info.step,
            reason=info.reason,
            periodic=info.periodic,
            best=info.best,
            metrics=info.metrics,
            sha256=ref.sha256,
            size_bytes=ref.size,
            created_at=time.time(),
        )
        kept = [*job.checkpoints, entry]
        keep_last = job.config["checkpoints"]["keep_last"]
        periodic = sorted((c for c in kept if c.periodic), key=lambda c: c.step)[-keep_last:]
        best = [c for c in kept if c.best][-1:]
        final = [c for c in kept if c.reason == "final"]
        retained = {c.sha256: c for c in [*periodic, *best, *final, entry]}
        dropped = {c.sha256 for c in kept} - set(retained)
        job = replace(job, checkpoints=tuple(sorted(retained.values(), key=lambda c: c.step)))
        holder = checkpoint_holder(job.job_id)

        def also(txn: WriteTxn, _event: JobEvent) -> None:
            hold_blob(txn, ref.sha256, holder)
            for sha256 in dropped:
                release_blob(txn, sha256, holder)

        event = {"epoch": info.epoch, "step": info.step, "reason": info.reason, "size_bytes": ref.size}
        try:
            job = self._append(job, "checkpoint", event, also)
            self._store.flush()
        finally:
            self._blobs.release(ref.sha256)
        # Only what nothing else holds: another job with the same spec and seed writes
        # byte-identical checkpoints, which share one blob. The new one is unheld only when the
        # store refused its record (a full disk): then it goes now, not at the next start.
        delete_unheld_blobs(self._store, self._blobs, {*dropped, ref.sha256})
        return job

    def _succeed(self, job: JobRecord, done: DoneMessage) -> None:
        job = replace(job, metrics={**job.metrics, **done.metrics})
        if job.config["register_as"] and done.weights:
            try:
                weights = self._blobs.put_bytes(done.weights)
                registered = self._registration.register(job, weights)
            except Exception as exc:
                log.exception("registering a trained model failed", extra={"job_id": job.job_id})
                message = exc.message if hasattr(exc, "message") else "see the daemon log"
                self._fail(
                    job, "registration", f"training succeeded but registering the weights failed: {message}"
                )
                return
            if registered.dataset_deleted:
                data = job.config["data"]
                message = (
                    f"dataset {data['dataset']!r} v{data['version']} was deleted while the job ran; the "
                    "model version's lineage names it, marked deleted, with the sha256 of the data it "
                    "was trained on"
                )
                log.warning(
                    "registered a job's model whose dataset version was deleted while the job ran",
                    extra={"job_id": job.job_id, "dataset": data["dataset"], "version": data["version"]},
                )
                job = self._append(job, "log", {"level": "warning", "message": message})
            if registered.alias_refused:
                alias = job.config["register_as"]["alias"]
                message = (
                    f"registered {registered.model} v{registered.version} without alias {alias!r}: "
                    f"{registered.alias_refused}; then set it with SetAlias"
                )
                log.warning(
                    "registered a job's model without its alias: the model has no room for it",
                    extra={"job_id": job.job_id, "model": registered.model, "alias": alias},
                )
                job = self._append(job, "log", {"level": "warning", "message": message})
            for warning in registered.deployment_warnings:
                message = (
                    f"registered {registered.model} v{registered.version} with alias {registered.alias!r}, "
                    f"which the deployment names: {warning}"
                )
                log.warning(
                    "registered a job's model with an alias that leaves its deployment routing as Deploy refuses",
                    extra={"job_id": job.job_id, "model": registered.model, "alias": registered.alias},
                )
                job = self._append(job, "log", {"level": "warning", "message": message})
            job = self._append(
                replace(job, registered=registered),
                "registered",
                {"model": registered.model, "version": registered.version, "alias": registered.alias},
            )
        # Done: a job early stopping ended trained fewer steps than it planned (stopped_early
        # says so), and its last progress event, if any, gave that fraction.
        self._finish(replace(job, progress=1.0), "succeeded", "finished")

    def _interrupted_by_shutdown(self, job: JobRecord) -> None:
        """End an attempt the daemon's shutdown stopped: the next start resumes the job, or ends
        it CANCELLED when its cancel was accepted (`start`)."""
        if self._cancel_requested.get(job.job_id, job.cancel_requested_at) is not None:
            self._set_state(
                job,
                "interrupted",
                "tesserad is shutting down while the job's cancel waits; it ends cancelled when "
                "tesserad starts again",
                ends=True,
                also=self._run_status(job, "interrupted"),
            )
            log.info(
                "job stopped by the shutdown while its cancel waited; it ends cancelled when tesserad "
                "starts again",
                extra={"job_id": job.job_id, "attempt": job.attempt},
            )
            return
        final = self._final_checkpoint(job)
        job = self._set_state(
            job,
            "interrupted",
            f"tesserad is shutting down after the job's training finished; it finishes from its final "
            f"(epoch {final.epoch}) checkpoint when tesserad starts again, without training again"
            if final
            else "tesserad is shutting down; the job resumes when it starts again",
            ends=True,
            also=self._run_status(job, "interrupted"),
        )
        if final is not None:  # the next start only ends it (`_finish_trained`), training nothing
            log.info(
                "job interrupted by the shutdown after its training finished; it finishes from its "
                "final checkpoint when tesserad starts again",
                extra={
                    "job_id": job.job_id,
                    "attempt": job.attempt,
                    "epoch": final.epoch,
                    "step": final.step,
                },
            )
            return
        checkpoint = self._resume_checkpoint(job)
        log.info(
            "job interrupted by the shutdown; it resumes when tesserad starts again",
            extra={
                "job_id": job.job_id,
                "attempt": job.attempt,
                "from_epoch": checkpoint.epoch if checkpoint else 0,
                "from_step": checkpoint.step if checkpoint else 0,
            },
        )

    def _cancelled(self, job: JobRecord, at_step_boundary: bool) -> None:
        """End a cancelled job: its worker stopped at a step boundary, or was killed."""
        self._finish(
            job,
            "cancelled",
            "cancelled at a step boundary"
            if at_step_boundary
            else "cancelled: the worker did not stop within "
            f"training.cancel_grace_s ({self._settings.cancel_grace_s:g} s) and was killed",
        )

    def _fail(self, job: JobRecord, kind: str, message: str) -> None:
        job = self._append(
            replace(job, error=JobError(kind, message)),
            "error",
            {"kind": kind, "message": message},
            reserved=True,
        )
        self._finish(job, "failed", message)

    def _finish(self, job: JobRecord, state: str, reason: str) -> None:
        # A trial's end and its sweep's answer to it (the sweep's own end, its next trial) are one
        # step to a reader of the sweep: it never sees every trial ended and the sweep running.
        with self._trial_end_lock if job.sweep_id else contextlib.nullcontext():
            ends: builtins.list[_QueuedEnd] = []
            committed = True
            try:
                with self._store.together():
                    ends.append(self._queue_end(job, state, reason))
            except ResourceExhausted:
                committed = False
            for ended in self._stored_ends(ends, committed):
                self._notify(ended, "ended", {})

    def _queue_end(self, job: JobRecord, state: str, reason: str) -> _QueuedEnd:
        """Queue the writes of the job's end (its state event, its run's status, the release of
        what it held) for the store; `_stored_ends` finishes it once they were committed."""
        # The record as ended says whether its cancel was accepted (a pruned sweep trial that
        # failed as it stopped ended for the prune, not on its own).
        requested_at = self._cancel_requested.get(job.job_id, job.cancel_requested_at)
        job = replace(job, ended_at=time.time(), cancel_requested_at=requested_at)
        run_status = self._run_status(job, state)
        fine_tune = job.config.get("fine_tune")
        holder = init_from_holder(job.job_id)

        start_weights = job.start_weights
        data = job.config["data"]
        dropped: set[str] = set()
        if not (job.sweep_id and self._sweep_needs_checkpoints(job.sweep_id)):
            job, dropped = self._retained(job)

        def end(txn: WriteTxn, event: JobEvent) -> None:
            run_status(txn, event)
            release_dataset(txn, data["dataset"], data["version"], job_holder(job.job_id))
            if fine_tune:
                release_blob(txn, fine_tune["sha256"], holder)
            if start_weights:
                release_blob(txn, start_weights, start_weights_holder(job.job_id))
            self._release_checkpoint_holds(txn, job.job_id, dropped)

        ended = self._set_state(job, state, reason, ends=True, also=end, flush=False)
        # The parent's blob goes only when its version was deleted (or, for a PBT trial's start,
        # the checkpoint dropped by its job) while the job ran.
        released = {fine_tune["sha256"]} if fine_tune else set()
        if start_weights:
            released.add(start_weights)
        return _QueuedEnd(ended, replace(job, state=state, devices=()), reason, released | dropped)

    def _stored_ends(self, ends: builtins.list[_QueuedEnd], committed: bool) -> builtins.list[JobRecord]:
        """Finish the ends `_queue_end` queued, after their commit (`committed`: False when it
        failed as a whole): free what they held; the records as ended."""
        with self._store.read() as txn:
            stored = [self._end_stored(txn, end.ended.job_id, end.ended.state) for end in ends]
        records = []
        for end, end_stored in zip(ends, stored, strict=True):
            job = end.ended if committed else end.refused
            if not end_stored:
                # Watchers were shown the end all the same; the supervisor goes on to free the devices.
                log.error(
                    "the job ended but the store refused its end; it shows the end until tesserad "
                    "restarts, and is then resumed: free space in the store (store.map_size) or on the disk",
                    extra={"job_id": job.job_id, "state": job.state, "reason": end.reason},
                )
                with self._lock:
                    self._unstored_ends[job.job_id] = job
            records.append(job)
        released = set().union(*(end.released for end in ends))
        if released:
            delete_unheld_blobs(self._store, self._blobs, released)
        with self._lock:
            for job in records:
                self._active.pop(job.job_id, None)
                self._cancel_requested.pop(job.job_id, None)
        return records

    @staticmethod
    def _end_stored(txn: ReadTxn, job_id: str, state: str) -> bool:
        raw = txn.get("jobs", (job_id,))
        return raw is not None and decode_job(raw).state == state

    def _run_status(self, job: JobRecord, status: str) -> Callable[[WriteTxn, JobEvent], None]:
        """Moves the job's run to `status` in the transaction of the job's state event."""
        run_id = job.run_id

        def work(txn: WriteTxn, _event: JobEvent) -> None:
            run = self._tracking.load_run(txn, run_id)
            run.status = status
            run.end_time = time.time() if status in ENDED else None
            self._tracking.put_run(txn, run)

        return work

    def _set_state(
        self,
        job: JobRecord,
        state: str,
        reason: str,
        *,
        ends: bool = False,
        also: Callable[[WriteTxn, JobEvent], None] | None = None,
        devices: builtins.list[str] | None = None,
        flush: bool = True,
    ) -> JobRecord:
        """`flush`: wait for an end's commit (False: the caller waits, `_queue_end`)."""
        kept_devices = job.devices if state in ("running", "interrupted") else ()
        if state in ("queued", "running") and job.attempt and self._final_checkpoint(job) is None:
            # Queued again, or started, to train on: an earlier attempt's stop holds for none of it,
            # also where the job then ends before training (cancelled in the queue). A job whose
            # training finished (its final checkpoint stored) only ends, keeping its attempt's.
            job = _not_stopped_early(job)
        with self._lock:
            self._state_counts[job.state] -= 1
            self._state_counts[state] += 1
            if state != "running":
                self._step_clocks.pop(job.job_id, None)
        job = replace(job, state=state, devices=kept_devices)
        data: dict[str, Any] = {"state": state, "reason": reason, "devices": devices or []}
        if state in ENDED:
            # On the end itself too, for a watcher: why early stopping ended the job's training, or
            # None (also on a FAILED end: the registration that follows the training can fail).
            job = self._with_early_stop(job)
            data["stopped_early"] = job.stopped_early
        # An interruption ends the attempt, not the job, which the next start resumes: its
        # watchers stay until the shutdown ends them with UNAVAILABLE and the from_seq to go on
        # from, and do not take it for the job's end.
        watch_ends = ends and state != "interrupted"
        job = self._append(job, "state", data, also, ends=watch_ends, reserved=ends)
        if ends and flush:
            self._store.flush()
        return job

    def _clock_step(self, job_id: str, step: int, samples_per_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            clock = self._step_clocks.get(job_id)
            if clock is None or step < clock.step:  # the first step event of this attempt
                self._step_clocks[job_id] = _StepClock(step, now, JobThroughput(job_id, samples_per_s, None))
                return
            steps_per_s = clock.throughput.steps_per_s
            if now - clock.at >= _RATE_WINDOW_S:
                steps_per_s = (step - clock.step) / (now - clock.at)
                clock.step, clock.at = step, now
            clock.throughput = JobThroughput(job_id, samples_per_s, steps_per_s)

    def _append(
        self,
        job: JobRecord,
        kind: str,
        data: dict[str, Any],
        also: Callable[[WriteTxn, JobEvent], None] | None = None,
        ends: bool = False,
        reserved: bool = False,
    ) -> JobRecord:
        """Number, store and fan out one event of `job`, storing `job` (as of this event) with it;
        returns the record with its new last_seq, which becomes the job's current one."""

        # `job` is immutable, so the commit (in the store's thread) writes it as it is now, with
        # no copy, while this thread goes on to the job's next record.
        def write(txn: WriteTxn, event: JobEvent) -> None:
            # Looked up as the write commits, not when it was queued: a record queued before a
            # cancel was accepted, and committed after the cancel's own write, keeps the request.
            # (A single dict lookup: atomic, so the commit thread takes no lock of this class.)
            requested_at = self._cancel_requested.get(job.job_id, job.cancel_requested_at)
            self._put(txn, replace(job, last_seq=event.seq, cancel_requested_at=requested_at))
            if also is not None:
                also(txn, event)

        event = self._events.append(
            job.job_id, job.attempt, kind, data, also=write, ends_job=ends, reserved=reserved
        )
        job = replace(job, last_seq=event.seq)
        with self._lock:
            if job.job_id in self._active:
                self._active[job.job_id] = job
        return job

    @staticmethod
    def _put(txn: WriteTxn, job: JobRecord) -> None:
        txn.put("jobs", (job.job_id,), encode_job(job))


def _stop_unrecorded(job: JobRecord) -> bool:
    """Whether `job` ended (in any state: a FAILED one's registration may have failed after early
    stopping ended its training) with early stopping on, and its record does not say whether
    early stopping ended it."""
    # A job stored before configs held every section may have none.
    return (
        not job.stopped_early_recorded
        and job.state in ENDED
        and bool(job.config.get("early_stopping", {}).get("patience"))
    )


def _not_stopped_early(job: JobRecord) -> JobRecord:
    """`job` not stopped early as of now; recorded so, where early stopping is on, for its end not
    to take an earlier attempt's line from its events (`_stop_unrecorded`)."""
    early = bool(job.config.get("early_stopping", {}).get("patience"))
    return replace(job, stopped_early=None, stopped_early_recorded=job.stopped_early_recorded or early)


def answered_bytes(job: JobRecord) -> int:
    """What `job` takes in a GetJob or ListJobs answer at most, as paging.answer_bytes sizes
    every listing's items: its record less its config, which no answer carries (its stored row
    holds the spec twice over, as given and checked), with the checkpoints an answer lists and
    why early stopping ended it (held by the record as read, not added after sizing)."""
    return answer_bytes(replace(job, config={}, checkpoints=listed_checkpoints(job.checkpoints)))


# Why a job in each state other than succeeded has no weights to register, and what to do.
_NOT_REGISTERED = {
    "queued": "only a succeeded job's weights are registered; wait for its end (WatchJob follows it)",
    "running": "only a succeeded job's weights are registered; wait for its end (WatchJob follows it)",
    "interrupted": "only a succeeded job's weights are registered; it resumes when tesserad starts "
    "again, then wait for its end (WatchJob follows it)",
    "failed": "only a succeeded job's weights are registered, and its training did not end as planned "
    "(its error says why); train it again",
    "cancelled": "only a succeeded job's weights are registered, not a cancelled one's, even where its "
    "training finished before the cancel took effect; train it again",
}


def _no_final_checkpoint(job: JobRecord) -> str:
    """Why a succeeded job has no weights to register: its final checkpoint is gone."""
    if job.checkpoints_released:
        return (
            f"job {job.job_id}'s final checkpoint, which holds its trained weights, was released as the "
            f"job ended ({job.checkpoints_released} released, as its spec.checkpoints.retain_latest or "
            "training.checkpoints_keep_latest said): its weights are no longer kept; train it again, "
            "keeping the newest checkpoint (retain_latest >= 1)"
        )
    return f"job {job.job_id} kept no final checkpoint to read its trained weights from; train it again"


def checkpoint_holder(job_id: str) -> str:
    """How a job is named among the holders of its checkpoints' blobs."""
    return f"job:{job_id}:checkpoint"


def blob_references(txn: ReadTxn) -> Iterator[tuple[str, str]]:
    """Each checkpoint a job keeps: its sha256 and the checkpoint in words, for a store check."""
    for _key, raw in txn.scan("jobs"):
        job = decode_job(raw)
        for checkpoint in job.checkpoints:
            yield checkpoint.sha256, f"job {job.job_id} checkpoint epoch {checkpoint.epoch}"


def cancelled_in_queue(job: JobRecord) -> str:
    """Why a job cancelled before its next attempt started ended: a job queued again to resume
    (after a restart) has run before."""
    return (
        f"cancelled before attempt {job.attempt + 1} started"
        if job.attempt
        else "cancelled before it started"
    )


def _stop_lingering(
    processes: list[multiprocessing.process.BaseProcess],
    done_at: dict[int, float],
    stopped: set[int],
    job_id: str,
) -> None:
    """Kill the ranks still running _EXIT_GRACE_S after they sent their outcome, once each
    (`stopped`: the ranks killed so far; a killed rank's exit code shows only once the fork
    server that started it has reaped it, a poll or more later)."""
    now = time.monotonic()
    for rank, process in enumerate(processes):
        if rank not in stopped and process.exitcode is None and now - done_at[rank] > _EXIT_GRACE_S:
            log.warning(
                "a worker did not exit after it finished; stopped it",
                extra={"job_id": job_id, "rank": rank, "grace_s": _EXIT_GRACE_S},
            )
            process.kill()
            stopped.add(rank)


def _storage_error(message: EventMessage | CheckpointMessage, exc: ResourceExhausted) -> str:
    if isinstance(message, CheckpointMessage):
        what = f"storing the checkpoint of epoch {message.info.epoch}, step {message.info.step}"
    else:
        what = f"storing the job's {message.kind} event"
    return f"the job stopped: {what} failed: {exc.message}"


def _kill(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        if process.exitcode is None:
            process.kill()


# The status of a child whose exec failed (multiprocessing's fork_exec, as subprocess's).
_EXEC_FAILED = 255
# How a start fails when the workers' interpreter cannot be run: the fork server's socket
# refusing (its exec failed), or taking the connection and then dropping it (the forked child
# still held the listening socket for a moment before its exec failed: EPIPE or ECONNRESET on
# the first write), or the exec's own errors. Each is checked by running the interpreter.
_BAD_INTERPRETER_ERRNOS = frozenset(
    (errno.ECONNREFUSED, errno.EPIPE, errno.ECONNRESET, errno.ENOENT, errno.EACCES, errno.ENOEXEC)
)


def start_failure_cause(exc: Exception) -> str | None:
    """The workers' interpreter that cannot be run, when that is why starting a job raised `exc`;
    None for any other cause. The fork server's exec failing reads as its socket refusing or
    dropping the connection, or as its answer ending before the worker's pid (EOFError). Other
    failures (no file descriptors, no memory) would fail the probe too and blame the interpreter:
    they are told as they are."""
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and exc.errno in _BAD_INTERPRETER_ERRNOS):
        return unrunnable_interpreter()
    return None


def _crash_error(exitcode: int | None) -> tuple[str, str]:
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = (
            signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        )
        if number == signal.SIGKILL:
            return (
                "out_of_memory",
                f"the worker process was killed ({name}); the usual cause is the kernel's out-of-memory "
                "killer: use a smaller batch_size or model",
            )
        return "crash", f"the worker process died from {name} (signal {number})"
    return "crash", f"the worker process exited with code {exitcode} without reporting an error"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _refuse_all(kind: type[InvalidArgument] | type[FailedPrecondition], problems: list[str]) -> None:
    """Raise `kind` with the one problem, or with every one listed."""
    if len(problems) == 1:
        raise kind(problems[0])
    lines = "\n".join(f"  {problem}" for problem in problems)
    raise kind(f"the spec has {len(problems)} problems:\n{lines}")

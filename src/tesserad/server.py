"""Composition root: settings -> store -> domain services -> gRPC server.

The one place that builds everything. `create_server(settings)` returns a `Daemon`; tests
start it on 127.0.0.1:0 with a temporary data directory, `serve()` runs it until SIGTERM or
SIGINT, and reloads its tokens file and TLS files on SIGHUP (a replica also reads its token for
the primary again, and tries the primary again then).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from tessera.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad import __version__
from tesserad.api import reflection_v1
from tesserad.api.aio_handlers import ErrorListener, split_method
from tesserad.api.audit import AUDIT_EXEMPT, Audit
from tesserad.api.auth import AuthInterceptor, AuthSetupError
from tesserad.api.cluster_stats import ClusterStats, RefusalNotes, Transport, replica_transport
from tesserad.api.convert_training import job_spec_document
from tesserad.api.datasets import DatasetsServicer
from tesserad.api.follow import (
    MIN_PING_INTERVAL_MS,
    Follower,
    PrimaryCertificateError,
    ReplicaTlsSettingsError,
    check_primary_tls,
    check_replica_tls_files,
    refusing_handlers,
)
from tesserad.api.health import HealthServicer
from tesserad.api.inference import InferenceServicer
from tesserad.api.interceptors import CallInterceptor, ServerInterceptor
from tesserad.api.oip import OipServicer
from tesserad.api.oip_http import OipHttpServer
from tesserad.api.registry import RegistryServicer
from tesserad.api.state_metrics import StateMetrics
from tesserad.api.system import SystemServicer, server_info_handler
from tesserad.api.tls import (
    CertificateError,
    ServerCertificates,
    TlsSettingsError,
    ray_worker_tls,
    server_certificates,
)
from tesserad.api.training import TrainingServicer
from tesserad.backup import Backups
from tesserad.backup.last_success import LAST_BACKUP_NAME, BackupMetrics
from tesserad.backup.restore import remove_finished_stagings, unfinished_restore
from tesserad.backup.verify import StoreChecks
from tesserad.config import GRPC_MESSAGE_SIZE_CEILING, Address, LimitsSettings, Settings, format_size
from tesserad.dashboard import DashboardServer, Services
from tesserad.dashboard.access import dashboard_tls
from tesserad.datasets import MARKERS as DATASET_MARKERS
from tesserad.datasets import REFERENCE_TABLES as DATASET_REFERENCE_TABLES
from tesserad.datasets import TABLES as DATASET_TABLES
from tesserad.datasets import USAGE_TABLES as DATASET_USAGE_TABLES
from tesserad.datasets import Datasets
from tesserad.datasets.references import collect_unheld_blobs
from tesserad.errors import FailedPrecondition, TesseraError, Unavailable
from tesserad.host import Gpus, raise_open_file_limit
from tesserad.log_settings import LogControl
from tesserad.metrics import DaemonMetrics, MetricsAccess, MetricsHttpServer
from tesserad.nn.user_modules import allow_module_paths
from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.registry import MARKERS as REGISTRY_MARKERS
from tesserad.registry import TABLES as REGISTRY_TABLES
from tesserad.registry import Registry
from tesserad.registry.export import Exports
from tesserad.registry.lineage import lineage_datasets
from tesserad.replica import changes as replica_changes
from tesserad.replica.blob_cache import BlobCache
from tesserad.replica.changes import ChangeFeed
from tesserad.replica.followed import FollowedRegistry, FollowedVersion
from tesserad.replica.link import PrimaryLink, replica_replication
from tesserad.replica.prometheus import ReplicaMetrics
from tesserad.replica.refusals import ReplicaRefusals
from tesserad.runtime_env import worker_environment
from tesserad.security.roles import Role
from tesserad.security.users import user_name
from tesserad.serving.open_inference import OIP_NAME_BY_DTYPE, OpenInference
from tesserad.serving.registry_source import build_inference, inference_over
from tesserad.serving.service import SOURCE_RETRY_S, CallCounter, InferenceService
from tesserad.serving.shared_memory import SharedMemory
from tesserad.serving.trace import TraceMetrics, Tracer, usable_trace_file
from tesserad.serving.triton_metrics import TritonMetrics
from tesserad.settings_checks import (
    authentication_enabled,
    exposed_listeners,
    exposure_refusal,
    metrics_refusal,
)
from tesserad.store import BlobStore, DataDirLock, Key, Store, store_errors
from tesserad.store.prometheus import StoreMetrics
from tesserad.store.schema import STORE_SCHEMA, open_for_writing, refuse_newer
from tesserad.store.space import space_checked
from tesserad.system import Replication, SystemService
from tesserad.systemd import StartProgress, notify
from tesserad.tasks import cancel_and_wait, end_background_task
from tesserad.training import artifacts as training_artifacts
from tesserad.training import events as training_events
from tesserad.training import jobs as training_jobs
from tesserad.training import sweeps as training_sweeps
from tesserad.training import tracking as training_tracking
from tesserad.training.artifacts import RunArtifacts
from tesserad.training.data import DatasetAccess
from tesserad.training.events import EventLog
from tesserad.training.jobs import Jobs, job_datasets, job_models
from tesserad.training.parents import ParentAccess
from tesserad.training.prometheus import TrainingMetrics
from tesserad.training.ray_worker import WorkerTls
from tesserad.training.registration import JobRegistration
from tesserad.training.sweeps import Sweeps, running_sweeps_into
from tesserad.training.tracking import Tracking

log = logging.getLogger(__name__)

_Servicer = TypeVar("_Servicer")

# Tables of the LMDB store; each domain package adds its own here as it is built.
STORE_TABLES: list[str] = [
    "meta",
    *REGISTRY_TABLES,
    *replica_changes.TABLES,
    *DATASET_TABLES,
    *DATASET_REFERENCE_TABLES,
    *DATASET_USAGE_TABLES,
    *training_tracking.TABLES,
    *training_artifacts.TABLES,
    *training_events.TABLES,
    *training_jobs.TABLES,
    *training_sweeps.TABLES,
]

# The start-up markers in "meta", each with the store schema from which every daemon keeps what
# it marks; a new one goes in its package's MARKERS (see tesserad.store.schema).
STORE_MARKERS: dict[Key, int] = {
    **REGISTRY_MARKERS,
    **DATASET_MARKERS,
    **training_tracking.MARKERS,
    **training_jobs.MARKERS,
}

# The tessera.v1 services, as (generated module, service name).
_SERVICES = [
    (system_pb2, "System"),
    (registry_pb2, "Registry"),
    (datasets_pb2, "Datasets"),
    (training_pb2, "Training"),
    (inference_pb2, "Inference"),
    (grpc_service_pb2, "GRPCInferenceService"),
]


# Services a serving replica does not serve: they answer FAILED_PRECONDITION naming the primary.
_PRIMARY_ONLY = {"System", "Registry", "Datasets", "Training"}


class _Routes(grpc.GenericRpcHandler):
    """Every service's method handlers in one table: the server's first generic handler.

    grpcio (1.85) waits on one pending future per registered method for every incoming call;
    with tesserad's ~85 methods that costs ~60 us a call, more than routing through a generic
    handler does, so the handlers are not registered as methods. And gRPC asks its generic
    handlers in turn, one Python call each (Predict's was the fourth asked): one table answers
    any method with one lookup. Interceptors and reflection see the same methods either way.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        server.add_generic_rpc_handlers((self,))

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._methods.get(handler_call_details.method)

    def methods(self) -> list[tuple[str, str]]:
        """Each method served, as (service, method)."""
        return [split_method(full) for full in self._methods]

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        """Not added: the generated code passes the same handlers to add_registered_method_handlers."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler


def _register(
    add: Callable[[_Servicer, grpc.aio.Server], None], servicer: _Servicer, routes: _Routes
) -> None:
    """Add one service's handlers to `routes`.

    The generated add_*_to_server functions are typed to take a whole Server, but they call only
    add_generic_rpc_handlers and add_registered_method_handlers, the two methods routes has.
    """
    add(servicer, routes)  # type: ignore[arg-type]


# gRPC core's own hard limit on the calls it queues for the server (its soft default is 1000,
# refusing at random between the two): the least the daemon queues, whatever its limits.
_MIN_PENDING_CALLS = 3000
# The most it queues (~2.5 GB at ~25 KB a call), however high the limits are set: past this a
# flood is refused, not held in memory.
_MAX_PENDING_CALLS = 100_000


def _streams_per_connection(limits: LimitsSettings) -> int:
    """The streams a connection may open at once: as many as the limits could admit (calls, and
    health Watch streams, which limits.max_concurrent_streams counts apart)."""
    return limits.max_concurrent_calls + limits.max_concurrent_streams


def _pending_calls(limits: LimitsSettings) -> int:
    """The calls gRPC core queues before the interceptors see them, over all connections; past
    it, it answers CANCELLED itself. ~25 KB each, so this bounds what a flood can hold."""
    return min(_MAX_PENDING_CALLS, max(_MIN_PENDING_CALLS, 4 * _streams_per_connection(limits)))


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class SettingsRefusal(StartupError):
    """The settings alone refuse the start (exposure without authentication, TLS settings that
    do not go together): no file, port or peer was consulted, so no restart mends it."""


class Daemon:
    """A tesserad instance: `await start()`, serve, `await stop()`."""

    def __init__(self, settings: Settings, insecure: bool = False) -> None:
        self.settings = settings
        # --insecure: the operator accepts listening beyond loopback without authentication.
        self.insecure = insecure
        self.port: int = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.oip_http_port: int | None = None
        self.metrics = DaemonMetrics()
        self.audit = Audit(settings.log_audit)
        self._stopping = asyncio.Event()
        # Set by drain(): health and OIP ServerReady say not ready while calls are still served.
        self._draining = asyncio.Event()
        # What OIP ServerReady reads (the preload's end, or a replica's catch-up); drain() clears it.
        self._ready_gate: asyncio.Event | None = None
        # Set by serve() on SIGTERM or SIGINT, also during the start, whose preload it cuts short.
        self.stop_asked = asyncio.Event()
        self._told_ready = False
        # EXTEND_TIMEOUT_USEC for systemd while the store's start-up upgrades commit batches.
        self._start_progress = StartProgress()
        self._server: grpc.aio.Server | None = None
        self._auth: AuthInterceptor | None = None
        self._certificates: ServerCertificates | None = None
        self._state_metrics: StateMetrics | None = None
        self._files_watch: asyncio.Task[None] | None = None
        self._health: HealthServicer | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._dashboard: DashboardServer | None = None
        self._oip_http: OipHttpServer | None = None
        # Regions clients register through the Open Inference Protocol; the daemon's memory only.
        self._shared_memory = SharedMemory(settings.serving.max_shared_memory_regions)
        # The log settings clients may change through the Open Inference Protocol, until the stop.
        self._logs = LogControl(settings.log_level)
        # Triton's trace extension, tracing off until the start has checked serving.trace_file.
        self._tracer = Tracer(None, OIP_NAME_BY_DTYPE)
        self._lock: DataDirLock | None = None
        # The data directory (or its topmost parent) this start made, while the start is under way.
        self._made_data_dir: Path | None = None
        self._store: Store | None = None
        self._blobs: BlobStore | BlobCache | None = None
        self._gpus: Gpus | None = None
        self.registry: Registry | None = None
        self.exports: Exports | None = None
        self._registry_servicer: RegistryServicer | None = None
        self._backups: Backups | None = None
        self._store_checks: StoreChecks | None = None
        self._follower: Follower | None = None
        self._following: asyncio.Task[None] | None = None
        self._refresh_sweep: asyncio.Task[None] | None = None
        self._changes: ChangeFeed | None = None
        self.datasets: Datasets | None = None
        self.inference: InferenceService | None = None
        self.training: Jobs | None = None
        self.service_names = [m.DESCRIPTOR.services_by_name[n].full_name for m, n in _SERVICES]

    @property
    def address(self) -> str:
        return str(Address(self.settings.listen.host, self.port))

    async def start(self) -> None:
        """Take the data directory, open the store, bind and start serving; fail fast and clean:
        a failed start (a taken port, say) removes the data directory it made, and only that."""
        try:
            await self._start()
        except BaseException:
            if self._server is not None:
                # A listener after gRPC's failed to bind: gRPC's server is already serving.
                await self._server.stop(0)
            await self._close_resources(remove=self._made_data_dir)
            raise
        finally:
            self._made_data_dir = None

    def worker_tls(self) -> WorkerTls | None:
        """The TLS a Ray worker reaches this daemon with: trusting the certificate it serves now."""
        return ray_worker_tls(self._certificates, self.settings.training)

    def _jobs(self, system: SystemService, *args: Any, **kwargs: Any) -> Jobs:
        """The training jobs of training.backend: local worker processes, or a Ray cluster's actors."""
        training = self.settings.training
        if training.backend == "local":
            return Jobs(*args, **kwargs)
        from tesserad.training.ray_cluster import RayCluster
        from tesserad.training.ray_jobs import RayJobs

        cluster = RayCluster(training.ray_address)
        system.report_cluster(cluster)
        return RayJobs(
            *args,
            cluster=cluster,
            daemon_target=lambda: training.ray_daemon_target or self.address,
            worker_tls=self.worker_tls,
            **kwargs,
        )

    async def _start(self) -> None:
        settings = self.settings
        data_dir = settings.data_dir
        # The exposure without authentication and the tokens, TLS, trace and replica TLS files
        # (a replica's handshake with its primary too) are checked before the data directory is
        # touched: a refused start leaves no data directory, empty store or replica cache behind.
        refusals = ReplicaRefusals()
        auth, credentials = self._secure(None if settings.replica.primary else RefusalNotes(refusals))
        if settings.serving.trace_file is not None:
            try:
                self._tracer = Tracer(
                    usable_trace_file(settings.serving.trace_file, data_dir), OIP_NAME_BY_DTYPE
                )
            except ValueError as exc:
                raise StartupError(str(exc)) from None
        if not settings.replica.primary:
            transport = await asyncio.to_thread(self._replica_transport, credentials is not None)
        elif settings.replica.uses_tls:
            try:
                await asyncio.to_thread(check_primary_tls, settings.replica)
            except ReplicaTlsSettingsError as exc:
                raise SettingsRefusal(str(exc)) from None
            except PrimaryCertificateError as exc:
                raise StartupError(str(exc)) from None
        made = _make_data_dir(data_dir)
        lock = DataDirLock(data_dir)
        try:
            # Within the try: space_checked gives the disk-full errnos its message first.
            with space_checked(str(data_dir), "the data directory's files at start"):
                lock.acquire()
        except OSError as exc:
            raise StartupError(
                f"data directory {data_dir} cannot be written ({exc.strerror}); "
                f"{_data_dir_owner_fix(data_dir, exc)}"
            ) from None
        except FailedPrecondition as exc:
            # A second `make run` would next fail on each port in turn, one start at a time.
            # `tesserad restore` takes the same lock, and its file does not say which holds it.
            raise StartupError(
                f"{exc.message}; where that is a `tesserad restore` into it, wait for the restore "
                "to end; a daemon beside a running one needs other ports too: --listen, "
                "--http-listen and --metrics-listen (or off)"
            ) from None
        self._lock = lock
        if lock.unclean_stop is not None:
            jobs = (
                "" if settings.replica.primary else "jobs it was running resume from their last checkpoints; "
            )
            log.warning(
                "the last run did not stop cleanly (killed, crashed, or its machine went down); "
                f"{jobs}`tessera admin verify` checks the store and blobs for damage",
                extra={"data_dir": str(data_dir), "last_pid": lock.unclean_stop},
            )
        # Held from here on: the directory made is this start's alone, so a failed start removes it.
        self._made_data_dir = made
        TraceMetrics(self._tracer, self.metrics.registry)
        if settings.replica.primary:
            await self._start_replica(auth, credentials)
            return
        if not (data_dir / "store").exists():
            # A new store would stand beside what a restore into the directory staged, or had put
            # in place without its store: the daemon would start empty, and the restore be lost.
            unfinished = unfinished_restore(data_dir)
            if unfinished is not None:
                raise StartupError(unfinished)
        else:
            remove_finished_stagings(data_dir)
        with space_checked(str(data_dir), "the data directory's files at start"):
            self._store = Store.open(
                data_dir / "store",
                map_size=settings.store.map_size,
                durability=settings.store.durability,
                tables=STORE_TABLES,
                group_commit_interval_s=settings.store.group_commit_interval_ms / 1000,
                check=refuse_newer(str(data_dir)),
            )
            self._store.upgrade_progressed = self._start_progress.progressed
            blobs = self._blobs = BlobStore(data_dir / "blobs")
            # The start's reads of every table are where damage inside the store shows first.
            with store_errors(data_dir / "store"):
                dropped = await asyncio.to_thread(
                    open_for_writing, self._store, self._lock, STORE_MARKERS, __version__
                )
        if dropped:
            log.info(
                "an older tesserad may have written the store since its start-up upgrades ran: "
                "they run again",
                extra={"markers": [str(marker[0]) for marker in dropped]},
            )
        with store_errors(data_dir / "store"):
            collected = await asyncio.to_thread(collect_unheld_blobs, self._store, blobs)
        if collected:
            log.info("removed blobs nothing holds", extra={"count": len(collected)})
        StoreMetrics(self._store, blobs, data_dir, self.metrics.registry)
        BackupMetrics(data_dir / LAST_BACKUP_NAME, self.metrics.registry)
        self._gpus = Gpus()

        server, calls = self._new_server(auth, RefusalNotes(refusals))
        routes = _Routes(server)
        system = SystemService(
            data_dir, self._store, blobs.usage, self._gpus, self.service_names, self._primary_replication
        )
        limits = settings.limits
        self._backups = Backups(
            self._store, blobs, __version__, limits.backup_stall_timeout_s, data_dir / LAST_BACKUP_NAME
        )
        self._store_checks = StoreChecks(self._store, blobs)
        _register(
            system_pb2_grpc.add_SystemServicer_to_server,
            SystemServicer(
                system,
                self._stopping,
                self._backups,
                self._store_checks,
                limits.chunk_size,
                settings.max_message_size,
            ),
            routes,
        )
        # Every model built in this process (torch serving, ONNX export, explain) and the
        # registry's module hashes find users' modules in these alone.
        allow_module_paths(settings.training.module_paths)
        for directory in settings.training.module_paths:
            if not directory.is_dir():
                log.warning(
                    "training.module_paths: %s is not a directory; no module is found there", directory
                )
        self.datasets = Datasets(
            self._store,
            blobs,
            max_dataset_size=limits.max_dataset_size,
            quota=limits.dataset_quota,
            referenced=lambda txn: itertools.chain(
                lineage_datasets(txn), job_datasets(txn), training_sweeps.sweep_datasets(txn)
            ),
        )
        self.registry = Registry(
            self._store,
            blobs,
            max_artifact_size=limits.max_artifact_size,
            deployment_history=settings.registry.deployment_history,
            dataset_check=self.datasets.check_lineage,
            run_check=training_tracking.tracked_run_experiment,
            referenced=lambda txn: itertools.chain(
                job_models(txn),
                training_sweeps.sweep_models(txn),
                replica_changes.change_feed_versions(txn),
            ),
        )
        self.exports = Exports(
            self.registry,
            blobs,
            max_concurrent=settings.registry.max_concurrent_exports,
            max_queued=settings.registry.max_queued_exports,
        )
        self._changes = ChangeFeed(
            self._store,
            self.registry,
            settings.training.watch_buffer_events,
            history=settings.replica.change_history,
            refusals=refusals,
        )
        await asyncio.to_thread(self._changes.start)
        if settings.serving.switch_interval_us:
            # Shorter GIL slices let the gRPC threads answer while batches run (see config).
            sys.setswitchinterval(settings.serving.switch_interval_us / 1e6)
        self.inference = build_inference(self.registry, settings.serving, self.metrics.registry, calls)
        self._registry_servicer = RegistryServicer(
            self.registry, self._changes, blobs, self.exports, limits.chunk_size, self.inference.routed_by_now
        )
        _register(registry_pb2_grpc.add_RegistryServicer_to_server, self._registry_servicer, routes)
        _register(
            datasets_pb2_grpc.add_DatasetsServicer_to_server,
            DatasetsServicer(self.datasets, blobs, limits.chunk_size),
            routes,
        )
        self._export_serving_metrics()
        self.registry.add_listener(self.inference.on_registry_change)
        self.inference.add_deletion_listener(self._tracer.forget, self._tracer.kept)
        # A replica's follower retries its failed loads itself, only while the primary is there:
        # the sweep would retry them against a primary that is gone.
        self._refresh_sweep = asyncio.create_task(
            _sweep_failures(self.inference, retry_loads=not settings.replica.primary)
        )
        # Set once serving.preload's versions are loaded: until then gRPC health and OIP's
        # ServerReady say not ready, as Triton is not until its --load-model models are.
        preloaded = self._ready_gate = asyncio.Event()
        oip = OpenInference(
            self.inference, self._stopping, self._shared_memory, self._logs, self._tracer, preloaded
        )
        cluster = ClusterStats(self._changes.replicas, transport, refusals.recent)
        _register(
            inference_pb2_grpc.add_InferenceServicer_to_server,
            InferenceServicer(self.inference, self._tracer, self._stopping, cluster),
            routes,
        )
        _register(
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            OipServicer(oip),
            routes,
        )
        events = EventLog(self._store, settings.training.watch_buffer_events)
        tracking = Tracking(self._store)
        tracking.keep_experiments_of_running_sweeps(running_sweeps_into)
        await asyncio.to_thread(tracking.build_missing_buckets)
        await asyncio.to_thread(tracking.rebuild_nonfinite_metrics)
        await asyncio.to_thread(tracking.index_run_order)
        await asyncio.to_thread(tracking.move_deleted_runs_order)
        await asyncio.to_thread(tracking.count_experiment_runs)
        await asyncio.to_thread(tracking.count_run_metrics)
        await asyncio.to_thread(tracking.drop_early_stopping_off_params)
        self.training = self._jobs(
            system,
            self._store,
            blobs,
            events,
            tracking,
            settings.training,
            gpu_count=len(self._gpus.info()),
            datasets=DatasetAccess(self.datasets),
            registration=JobRegistration(self.registry),
            worker_env=worker_environment(),
            parents=ParentAccess(self.registry).facts,
            nn_max_workspace=settings.nn.max_workspace,
        )
        TrainingMetrics(self.training, self.metrics.registry)
        # Jobs a previous daemon left unfinished are re-queued (those cut off while RUNNING resume
        # from their last checkpoint).
        sweeps = Sweeps(self._store, self.training, job_spec_document)
        await asyncio.to_thread(self.training.start)
        await asyncio.to_thread(sweeps.start)
        artifacts = RunArtifacts(self._store, blobs, tracking, limits.max_run_artifact_size)
        _register(
            training_pb2_grpc.add_TrainingServicer_to_server,
            TrainingServicer(
                self.training,
                events,
                tracking,
                sweeps,
                artifacts,
                blobs,
                limits.chunk_size,
            ),
            routes,
        )
        self._health = self._add_health_and_reflection(routes)
        self.metrics.expect_rpcs(routes.methods())

        self.port = _bind(server, settings.listen, credentials)
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._serve_metrics()
        if settings.http_listen is not None:
            services = Services(
                jobs=self.training,
                events=events,
                tracking=tracking,
                artifacts=artifacts,
                sweeps=sweeps,
                registry=self.registry,
                inference=self.inference,
                system=system,
                stopping=self._stopping,
            )
            self._dashboard = DashboardServer(
                services,
                settings.http_listen,
                settings.security,
                settings.limits,
                auth.tokens,
                self.metrics,
                self.audit,
            )
            self.metrics.count_connections(self._dashboard.connections)
            auth.also_revoke(self._dashboard.end_revoked)
            if self._certificates is not None:
                self._certificates.also_reload(self._dashboard.reload_tls)
            try:
                await self._dashboard.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve the dashboard on {settings.http_listen}: {exc.strerror}; "
                    "set http_listen (--http-listen) to another address, or off"
                ) from None
            self.http_port = self._dashboard.port
        await self._serve_oip_http(oip, auth)
        if not await self._preload(self.inference):
            # Asked to stop: never reported ready, and serve() stops it as it would a started one.
            return
        preloaded.set()
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "tesserad serving",
            extra={
                "version": __version__,
                "address": self.address,
                "metrics": f"{settings.metrics_listen.host}:{self.metrics_port}"
                if settings.metrics_listen and self.metrics_port
                else "off",
                "dashboard": f"{self._dashboard.scheme}://{_host(settings.http_listen)}:{self.http_port}"
                if self._dashboard is not None and settings.http_listen is not None
                else "off",
                "oip_http": self._oip_http_url(),
                "data_dir": str(data_dir.resolve()),
                "map_size": format_size(settings.store.map_size),
                "store_schema": STORE_SCHEMA,
                "tls": "mutual" if settings.security.tls_client_ca_file else bool(credentials),
                "tokens": len(auth.token_holders) if settings.security.tokens_file else "off",
            },
        )
        self._tell_ready()

    def _secure(
        self, failed: ErrorListener | None = None
    ) -> tuple[AuthInterceptor, grpc.ServerCredentials | None]:
        """The exposure checked, the tokens and TLS files read: the calls' authentication and
        the server's credentials (None: plaintext). `failed`: told of each call refused."""
        settings = self.settings
        _check_exposure(settings, self.insecure)
        served = [
            *(m.DESCRIPTOR.services_by_name[n] for m, n in _SERVICES),
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
            reflection_v1.service_descriptor(),
        ]
        try:
            certificates = server_certificates(settings.security)
            if settings.training.backend == "ray":
                # Read at each job; checked here so that a bad file stops the start, not every job.
                ray_worker_tls(certificates, settings.training)
            auth = AuthInterceptor(
                settings.security,
                settings.limits,
                settings.max_message_size,
                served,
                failed,
                self.metrics,
                self.audit,
            )
        except TlsSettingsError as exc:
            raise SettingsRefusal(str(exc)) from None
        except (AuthSetupError, CertificateError) as exc:
            raise StartupError(str(exc)) from None
        self._auth = auth
        self._certificates = certificates
        self._state_metrics = StateMetrics(
            self.metrics.registry, __version__, STORE_SCHEMA, auth, certificates
        )
        credentials = None if certificates is None else certificates.credentials
        interval = settings.security.tokens_reload_interval_s
        if (auth.tokens is not None or certificates is not None) and interval > 0:
            self._files_watch = asyncio.create_task(self._watch_files(interval))
        return auth, credentials

    def _new_server(
        self, auth: AuthInterceptor, failed: ErrorListener | None = None
    ) -> tuple[grpc.aio.Server, CallCounter]:
        """The gRPC server with its interceptors and options, and the counter of calls in flight
        its interceptor keeps. `failed`: told of each call refused or ended by an error."""
        calls = CallCounter()
        limits = self.settings.limits
        audited = frozenset(
            method for method, role in auth.roles.items() if role > Role.READER and method not in AUDIT_EXEMPT
        )
        server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(
                    auth,
                    CallInterceptor(
                        self.metrics, self.settings.max_message_size, calls, failed, self.audit, audited
                    ),
                )
            ],
            options=[
                # gRPC sets SO_REUSEPORT by default, which would let a second daemon silently
                # share the port; a taken port must be an error.
                ("grpc.so_reuseport", 0),
                # gRPC's ceiling: AuthInterceptor checks max_message_size itself and names the
                # setting; gRPC's own check would answer first with a message that does not.
                ("grpc.max_receive_message_length", GRPC_MESSAGE_SIZE_CEILING),
                ("grpc.max_send_message_length", self.settings.max_message_size),
                # Replicas ping their primary every replica.keepalive_s (1 s at least), also while
                # their change stream is quiet, and SDK clients ping while a call is in flight
                # (every 30 s by default, 1 s at least); gRPC's defaults (a ping in 5 minutes
                # without data, none without calls) would answer such pings with GOAWAY
                # ("too_many_pings") and cut the calls on the connection.
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                # gRPC core queues the calls grpc.aio has not taken yet (it takes them one at a
                # time), before any interceptor (the tokens' check included) sees them. A
                # connection opens only the streams the limits could admit; its further calls
                # wait in the client for a stream, so a burst on one connection is served,
                # refused RESOURCE_EXHAUSTED (counted), or refused as a stream (UNAVAILABLE,
                # REFUSED_STREAM: retryable), not answered CANCELLED by core unseen. Core's
                # overload protection, its Rapid Reset defence (CVE-2023-44487), stays on: it
                # counts the streams a client reset but the daemon still holds, and so refuses
                # some of a burst's streams; headroom over this cap does not spare them short of
                # a cap as large as the burst, which would leave the defence nothing to bound.
                # The queue over all connections is bounded, and with it the memory it holds.
                ("grpc.max_concurrent_streams", _streams_per_connection(limits)),
                ("grpc.server.max_pending_requests", _pending_calls(limits)),
                ("grpc.server.max_pending_requests_hard_limit", _pending_calls(limits)),
            ],
        )
        self._server = server
        return server, calls

    async def _preload(self, inference: InferenceService) -> bool:
        """Load serving.preload's versions, one at a time; StartupError naming the first that
        cannot be loaded, as Triton (--exit-on-error, its default) stops on a --load-model model
        that fails: a daemon that started would report ready and never serve it. Whether all
        were loaded: a stop asked for (stop_asked) skips those not begun, as a pod deleted during
        a long preload must not wait for it; the load under way, in its thread, finishes."""
        preloads = self.settings.serving.preload
        for done, preload in enumerate(preloads):
            if self.stop_asked.is_set():
                log.info(
                    "preload cut short: tesserad is stopping",
                    extra={
                        "preloaded": [str(p) for p in preloads[:done]],
                        "skipped": [str(p) for p in preloads[done:]],
                    },
                )
                return False
            try:
                await asyncio.to_thread(inference.preload, preload.model, preload.version)
            except TesseraError as exc:
                named = (
                    f"model {preload.model!r}"
                    if preload.version is None
                    else f"version {preload.version} of model {preload.model!r}"
                )
                raise StartupError(
                    f"serving.preload names {named}, which cannot be loaded: {exc.message}; "
                    "remove it from serving.preload (--preload) to start without it"
                ) from None
        if preloads:
            log.info("preloaded", extra={"models": [str(p) for p in preloads]})
        return True

    def _replica_transport(self, serves_tls: bool) -> Transport:
        """How a primary reaches its replicas for their statistics, its replica.tls_* files
        checked first so that a bad one stops the start naming its setting."""
        replica = self.settings.replica
        if serves_tls or replica.uses_tls:
            try:
                check_replica_tls_files(replica)
            except ReplicaTlsSettingsError as exc:
                raise SettingsRefusal(str(exc)) from None
            except PrimaryCertificateError as exc:
                raise StartupError(str(exc)) from None
        return replica_transport(serves_tls, replica)

    def _add_health_and_reflection(self, routes: _Routes) -> HealthServicer:
        """gRPC health and reflection, for the primary and the replica alike."""
        health_servicer = HealthServicer()
        _register(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, routes)
        reflector = reflection.aio.ReflectionServicer(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
                reflection_v1.SERVICE_NAME,
            ]
        )
        _register(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, reflector, routes)
        routes.add_registered_method_handlers(
            reflection_v1.SERVICE_NAME, reflection_v1.method_handlers(reflector)
        )
        return health_servicer

    def _export_serving_metrics(self) -> None:
        """tessera_model_ready, and Triton's nv_inference_* families with serving.triton_metrics."""
        if self._state_metrics is not None and self.inference is not None:
            self._state_metrics.serve_from(self.inference.pool.list)
        if self.settings.serving.triton_metrics and self.inference is not None:
            self.metrics.add_text(TritonMetrics(self.inference.pool))

    async def _serve_oip_http(self, oip: OpenInference, auth: AuthInterceptor) -> None:
        """The Open Inference Protocol over HTTP/REST, when serving.oip_http_listen is set."""
        address = self.settings.serving.oip_http_listen
        if address is None:
            return
        self._oip_http = OipHttpServer(
            oip,
            address,
            self.settings.security,
            auth.tokens,
            auth.calls,
            self.settings.max_message_size,
            self.settings.limits,
            self.settings.serving,
            self.metrics,
            self.audit,
        )
        self.metrics.count_connections(self._oip_http.connections)
        auth.also_revoke(self._oip_http.end_revoked)
        if self._certificates is not None:
            self._certificates.also_reload(self._oip_http.reload_tls)
        try:
            await self._oip_http.start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve the Open Inference Protocol over HTTP on {address}: {exc.strerror}; "
                "set serving.oip_http_listen (--oip-http-listen) to another address, or off"
            ) from None
        self.oip_http_port = self._oip_http.port

    def _oip_http_url(self) -> str:
        address = self.settings.serving.oip_http_listen
        if self._oip_http is None or address is None:
            return "off"
        return f"{self._oip_http.scheme}://{_host(address)}:{self.oip_http_port}"

    def _serve_metrics(self) -> None:
        settings = self.settings
        security = settings.security
        if settings.metrics_listen is not None:
            tokens = None if self._auth is None else self._auth.tokens
            tls = dashboard_tls(security, "metrics listener") if security.metrics_tls else None
            role = None if security.metrics_role == "off" else Role.parse(security.metrics_role)
            try:
                self._metrics_http = MetricsHttpServer(
                    self.metrics,
                    settings.metrics_listen,
                    security.http_allowed_hosts,
                    settings.limits,
                    MetricsAccess(tokens, role, tls, self.audit),
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}; "
                    "set metrics_listen (--metrics-listen) to another address, or off"
                ) from None
            self.metrics_port = self._metrics_http.port
            if tls is not None and self._certificates is not None:
                self._certificates.also_reload(tls.reload)

    async def _start_replica(self, auth: AuthInterceptor, credentials: grpc.ServerCredentials | None) -> None:
        """A serving replica: inference over the primary's followed registry, no store of its own."""
        settings = self.settings
        primary = settings.replica.primary
        if settings.serving.preload:
            log.warning(
                "serving.preload is ignored on a replica: it loads what its primary's deployments "
                "route to before it reports ready"
            )
        server, calls = self._new_server(auth)
        routes = _Routes(server)
        cache = self._blobs = BlobCache(settings.data_dir / "replica-cache", settings.replica.cache_size)
        followed = FollowedRegistry(
            primary,
            cache,
            lambda model, version, sha256: self._follower_download(model, version, sha256),
            lambda model, version: self._follower_fetch_version(model, version),
        )
        if settings.serving.switch_interval_us:
            sys.setswitchinterval(settings.serving.switch_interval_us / 1e6)
        self.inference = inference_over(followed, settings.serving, self.metrics.registry, calls)
        self.inference.add_deletion_listener(self._tracer.forget, self._tracer.kept)
        self._export_serving_metrics()
        caught_up = self._ready_gate = asyncio.Event()
        oip = OpenInference(
            self.inference, self._stopping, self._shared_memory, self._logs, self._tracer, caught_up
        )
        _register(
            inference_pb2_grpc.add_InferenceServicer_to_server,
            InferenceServicer(self.inference, self._tracer, self._stopping),
            routes,
        )
        _register(
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            OipServicer(oip),
            routes,
        )
        refused = [m.DESCRIPTOR.services_by_name[n] for m, n in _SERVICES if n in _PRIMARY_ONLY]
        server.add_generic_rpc_handlers(refusing_handlers(refused, primary))
        self._health = self._add_health_and_reflection(routes)
        self.port = _bind(server, settings.listen, credentials)
        serving = [
            "",
            *(
                s.full_name
                for s in (m.DESCRIPTOR.services_by_name[n] for m, n in _SERVICES)
                if s.name not in _PRIMARY_ONLY
            ),
        ]
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_servicer = self._health

        async def set_ready(ready: bool) -> None:
            if self._draining.is_set():  # draining stays not ready, caught up or not
                return
            if ready:
                caught_up.set()
            else:
                caught_up.clear()
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in serving:
                await health_servicer.set(name, status)

        advertise = settings.replica.advertise or self.address
        link = PrimaryLink()
        ReplicaMetrics(link, followed, self.metrics.registry)
        self._gpus = Gpus()
        system = SystemService(
            settings.data_dir,
            None,
            lambda: cache.used_bytes,
            self._gpus,
            [name for name in serving if name],  # "" is the whole server's health, no service
            lambda: replica_replication(primary, link, followed),
        )
        # Routes is the server's first generic handler: GetServerInfo is answered here, the rest
        # of System by the refusing handlers.
        routes.add_registered_method_handlers(
            "tessera.v1.System", {"GetServerInfo": server_info_handler(system)}
        )
        # Once every method served is registered, GetServerInfo included.
        self.metrics.expect_rpcs(routes.methods())
        self._follower = Follower(
            settings.replica,
            followed,
            self.inference,
            advertise,
            set_ready,
            credentials is not None,
            link,
            lambda status: notify(f"STATUS={status}"),
        )
        await server.start()
        self._serve_metrics()
        await self._serve_oip_http(oip, auth)
        # systemd hears READY=1 now, before the follower runs (so its STATUS lines come after):
        # the replica has started and answers, whether or not its primary can be reached. Ready
        # for traffic is what health says (NOT_SERVING until caught up), for a readiness probe;
        # READY=1 held until then had systemd kill a replica whose primary was down at boot.
        self._tell_ready(f"waiting for primary {primary}")
        self._following = asyncio.create_task(self._follower.run())
        log.info(
            "tesserad serving",
            extra={
                "version": __version__,
                "address": self.address,
                "replica_of": primary,
                "metrics": f"{settings.metrics_listen.host}:{self.metrics_port}"
                if settings.metrics_listen and self.metrics_port
                else "off",
                "oip_http": self._oip_http_url(),
                "cache_size": format_size(settings.replica.cache_size),
                "tls": "mutual" if settings.security.tls_client_ca_file else bool(credentials),
                "tokens": len(auth.token_holders) if settings.security.tokens_file else "off",
            },
        )

    @property
    def told_ready(self) -> bool:
        """Whether this daemon said it was ready (see _tell_ready): a stop during its start never does."""
        return self._told_ready

    def _tell_ready(self, status: str = "") -> None:
        """systemd's READY=1, with `status` as its STATUS= line when given: a primary's once it
        reports SERVING (serving.preload's versions loaded), a replica's once its listeners are
        bound (its follower then tells the STATUS of its link). Never for a start a stop cut
        short."""
        self._start_progress.finished()
        if self._told_ready or self.stop_asked.is_set():
            return
        self._told_ready = True
        notify(f"READY=1\nSTATUS={status}" if status else "READY=1")

    def _primary_replication(self) -> Replication:
        """A primary routes by its registry's newest change (0 until the change feed is up)."""
        changes = self._changes
        if changes is None:
            return Replication(role="primary", applied_change=0, store_incarnation="")
        return Replication(
            role="primary", applied_change=changes.newest_seq(), store_incarnation=changes.store_incarnation
        )

    def _follower_download(self, model: str, version: int, sha256: str) -> Iterator[bytes]:
        if self._follower is None:
            raise Unavailable("this replica is not following its primary yet")
        return self._follower.download(model, version, sha256)

    def _follower_fetch_version(self, model: str, version: int) -> FollowedVersion | None:
        if self._follower is None:
            raise Unavailable("this replica is not following its primary yet")
        return self._follower.fetch_version(model, version)

    async def reload(self) -> None:
        """What SIGHUP does: apply the tokens file and the TLS files again, and on a replica read
        replica.token_file again and try the primary at once. Nothing else is read again; one
        log line lists what was, so an operator who changed another setting knows a restart is
        needed."""
        if self._auth is None:
            log.warning("SIGHUP ignored: tesserad is not started yet")
            return
        read_again = []
        if self._auth.tokens is not None:
            await _apply("the tokens file", self._auth.reload_tokens, "SIGHUP")
            read_again.append("security.tokens_file")
        if self._certificates is not None:
            await _apply("the TLS files", self._certificates.reload, "SIGHUP")
            read_again.append(
                "the TLS files (security.tls_cert_file, security.tls_key_file"
                + (", security.tls_client_ca_file)" if self._certificates.mutual else ")")
            )
        follower = self._follower
        if follower is not None:
            if await asyncio.to_thread(follower.read_token):
                read_again.append("replica.token_file")
            follower.retry_now()
        if read_again:
            said = f"SIGHUP read {_listed(read_again)} again"
        else:
            said = (
                "SIGHUP read nothing again (no security.tokens_file, TLS files or replica.token_file is set)"
            )
        if follower is not None:
            said += " and tries the primary again now, with every load that failed there"
        log.info(
            f"{said}; every other setting (the --config file, TESSERA_* variables, flags) is read "
            "at start: restart tesserad to change one",
            extra={"read_again": read_again},
        )

    async def _watch_files(self, interval_s: float) -> None:
        """Apply the tokens file or the TLS files whenever they look changed, checking every
        `interval_s` (a stat per file)."""
        auth, certificates = self._auth, self._certificates
        tokens = None if auth is None else auth.tokens
        while True:
            await asyncio.sleep(interval_s)
            if auth is not None and tokens is not None:
                await _apply("the tokens file", auth.reload_tokens, _CHANGED, tokens.changed)
            if certificates is not None:
                await _apply("the TLS files", certificates.reload, _CHANGED, certificates.changed)

    async def drain(self) -> None:
        """Report not ready (gRPC health NOT_SERVING, OIP ServerReady false) and go on serving:
        what a load balancer needs to see before the stop, to route new calls elsewhere."""
        self._draining.set()
        if self._ready_gate is not None:
            self._ready_gate.clear()
        if self._health is not None:
            for name in ("", *self.service_names):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish within the grace period, close the store."""
        grace = self.settings.grace_period_s if grace is None else grace
        # What is left of the grace after a SIGHUP reload: ms are all a reader needs of it.
        log.info("tesserad stopping", extra={"grace_period_s": round(grace, 3)})
        self._stopping.set()
        self._start_progress.finished()
        if self._health is not None:
            # Health watchers hear NOT_SERVING now and their streams end, not at the grace's end.
            await self._health.enter_graceful_shutdown()
        if self.training is not None:
            # Workers stop first (their jobs stay INTERRUPTED and resume at the next start) and
            # job watchers end with UNAVAILABLE instead of holding the grace period.
            await asyncio.to_thread(self.training.close)
        if self._changes is not None:
            # Change watchers (replicas) end with UNAVAILABLE and resume against the next start.
            await asyncio.to_thread(self._changes.close)
        deadline = time.monotonic() + grace
        if self._server is not None:
            await self._server.stop(grace)
        await self._close_resources(max(0.0, deadline - time.monotonic()))
        log.info("tesserad stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _close_resources(self, exports_wait_s: float = 0.0, remove: Path | None = None) -> None:
        """`exports_wait_s`: how long running ONNX exports may still finish before they are
        abandoned. `remove`: a directory to delete once the store is closed, under the lock."""
        if self._files_watch is not None:
            await end_background_task(self._files_watch, "the periodic check of the tokens and TLS files")
            self._files_watch = None
        if self._dashboard is not None:
            await self._dashboard.stop()
            self._dashboard = None
        if self._oip_http is not None:
            await self._oip_http.stop()
            self._oip_http = None
        if self._following is not None:
            await end_background_task(self._following, "the replica's following of its primary")
            self._following = None
        if self._refresh_sweep is not None:
            await end_background_task(
                self._refresh_sweep, "the periodic retry of failed serving loads and refreshes"
            )
            self._refresh_sweep = None
        if self._follower is not None:
            await self._follower.close()
            self._follower = None
        if self._changes is not None:
            await asyncio.to_thread(self._changes.close)
            self._changes = None
        if self.training is not None:
            await asyncio.to_thread(self.training.close)
            self.training = None
        if self.inference is not None:
            await asyncio.to_thread(self.inference.close)
            self.inference = None
        self._shared_memory.close()
        self._logs.close()
        # The trace writer gets a grace period of its own, not what the calls left of the stop's:
        # its traces are of calls already answered, and a working disk writes them in moments,
        # so a stop(0) or a call that held the whole grace period must not drop them; a disk that
        # takes no write (a hung mount) holds the stop no longer than that, then is logged.
        await asyncio.to_thread(self._tracer.close, self.settings.grace_period_s)
        if self.exports is not None:
            await asyncio.to_thread(self.exports.close, exports_wait_s)
            self.exports = None
        if self._registry_servicer is not None:
            await asyncio.to_thread(self._registry_servicer.close)
            self._registry_servicer = None
        if self.registry is not None:
            await asyncio.to_thread(self.registry.close)
            self.registry = None
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None
        if self._backups is not None:
            await asyncio.to_thread(self._backups.close)
            self._backups = None
        if self._store_checks is not None:
            await asyncio.to_thread(self._store_checks.close)
            self._store_checks = None
        if self._blobs is not None:
            await asyncio.to_thread(self._blobs.close)
            self._blobs = None
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None
        if self._gpus is not None:
            self._gpus.close()
            self._gpus = None
        if self._lock is not None:
            if remove is not None:
                try:
                    await asyncio.to_thread(shutil.rmtree, remove)
                except OSError as exc:
                    # The start's own error is the one to report; this one only leaves files behind.
                    log.warning(
                        "could not remove the data directory this failed start made; delete it",
                        extra={"path": str(remove), "error": str(exc)},
                    )
            self._lock.release()
            self._lock = None


_CHANGED = "the file changed"


def _listed(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


async def _apply(
    files: str,
    reload: Callable[[str], Awaitable[None]],
    trigger: str,
    changed: Callable[[], bool] | None = None,
) -> None:
    """`reload(trigger)`: on SIGHUP always (`changed` None), from the periodic check when
    `changed` says the files changed. An unexpected error is logged with an id, every time, and
    goes no further, so the periodic check goes on and the next change or SIGHUP is still
    applied; until then the daemon keeps the tokens and certificates it last applied."""
    try:
        if changed is None or await asyncio.to_thread(changed):
            await reload(trigger)
    except Exception as exc:
        error_id = uuid.uuid4().hex[:12]
        log.error(
            "unexpected error applying %s again: the ones last applied stay in use until the next change or SIGHUP",
            files,
            exc_info=exc,
            extra={"error_id": error_id, "trigger": trigger},
        )


async def _sweep_failures(inference: InferenceService, retry_loads: bool) -> None:
    """Queue again, every SOURCE_RETRY_S, the serving refreshes that failed and whose wait passed
    (each model's doubles with each failure in a row, up to REFRESH_RETRY_MAX_S): a model that
    gets no calls (a deleted one) would otherwise keep loaded what its refresh was to unload.
    The loads that failed for a cause that passes (a shadow's load that found the registry
    unreadable) and whose wait passed are tried again with them when `retry_loads` (not on a
    replica, whose follower does; each version's wait doubles with each failure of it in a row,
    see InferenceService.retry_failed_loads): else requests for their versions stay refused
    until LoadModel."""
    while True:
        await asyncio.sleep(SOURCE_RETRY_S)
        try:
            if retry_loads:
                inference.retry_failed_loads()
            else:
                inference.retry_failed_refreshes()
        except Exception:
            # Logged and swept again next time: a sweep that stopped would leave every later
            # failed refresh to a request (a deleted model gets none).
            log.exception(
                "retrying the failed serving loads and refreshes failed; retried in %s s", SOURCE_RETRY_S
            )


def create_server(settings: Settings, insecure: bool = False) -> Daemon:
    return Daemon(settings, insecure)


_DATA_DIR_FIX = "set data_dir (--data-dir) to a directory this daemon's user may create or write"


def _data_dir_owner_fix(data_dir: Path, exc: OSError) -> str:
    """What to do about `exc`, met writing in `data_dir`: when another user owns the directory
    (`sudo tesserad restore` leaves it root's, 0700), hand it to this daemon's user."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return _DATA_DIR_FIX
    try:
        owner = data_dir.stat().st_uid
    except OSError:
        return _DATA_DIR_FIX
    uid = os.geteuid()
    if owner == uid:
        return _DATA_DIR_FIX
    user = user_name(uid)
    return (
        f"it is owned by {user_name(owner)} and tesserad runs as {user}: give it to this user "
        f"(`chown -R {user} {data_dir}`; a restore run as root gives it so with `tesserad restore "
        f"--owner {user}`), or {_DATA_DIR_FIX}"
    )


def _make_data_dir(path: Path) -> Path | None:
    """_make_dirs for the data directory; StartupError saying why it cannot be made."""
    try:
        # Checked first: mkdir's own error under a file ("Not a directory: 'afile/var'") names no
        # culprit. Inside the try: on Python 3.11 exists() raises where a parent may not be searched.
        there = next((p for p in (path, *path.parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            raise StartupError(f"data directory {path}: {there} is a file, not a directory; {_DATA_DIR_FIX}")
        return _make_dirs(path)
    except OSError as exc:
        raise StartupError(
            f"data directory {path} cannot be created ({exc.strerror}); {_DATA_DIR_FIX}"
        ) from None


def _make_dirs(path: Path) -> Path | None:
    """Make `path` and its missing parents; the topmost directory this call made, or None when
    `path` was there already (or another process made each one first). `path` itself is made
    0700: it holds the models and datasets, which are no other user's to read (as PostgreSQL
    makes its data directory); the parents as mkdir -p makes them."""
    missing = list(itertools.takewhile(lambda d: not d.exists(), (path, *path.parents)))
    made = None
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700 if directory == path else 0o777)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        made = made or directory
    return made


def _host(address: Address) -> str:
    return f"[{address.host}]" if ":" in address.host else address.host


def _check_exposure(settings: Settings, insecure: bool) -> None:
    """Refuse to serve beyond loopback without authentication, unless the operator said --insecure;
    warn of what is allowed but exposed."""
    refused = exposure_refusal(settings, insecure) or metrics_refusal(settings.security)
    if refused is not None:
        raise SettingsRefusal(refused)
    exposed = exposed_listeners(settings)
    security = settings.security
    if exposed and security.tokens_file is not None and security.tls_cert_file is None:
        setting, address = exposed[0]
        log.warning(
            "bearer tokens travel in plaintext on %s (%s): anyone on the network path can read one "
            "and call as its holder; serve TLS (set security.tls_cert_file and security.tls_key_file) "
            "or listen on loopback behind a proxy that ends TLS",
            address, setting, extra={"address": str(address)},
        )  # fmt: skip
    if not exposed or authentication_enabled(security):
        return
    setting, address = exposed[0]
    log.warning(
        "serving without authentication on a non-loopback address (--insecure): every caller "
        "that can reach it has the admin role",
        extra={"address": str(address)},
    )


def _bind(server: grpc.aio.Server, address: Address, credentials: grpc.ServerCredentials | None) -> int:
    # A port gRPC cannot bind gets a line of its C-core's log ("Failed to add port to server")
    # before ours, which no public setting turns off alone: a taken or forbidden port is found
    # with a plain socket first, and gRPC never tries it.
    found = _bind_failure(address) if address.port != 0 else None
    if found is not None and found.errno in (errno.EADDRINUSE, errno.EACCES):
        raise StartupError(f"cannot listen on {address}: {_bind_failure_words(found)}")
    try:
        if credentials is None:
            port = server.add_insecure_port(str(address))
        else:
            port = server.add_secure_port(str(address), credentials)
    except RuntimeError:
        port = 0
    if (port == 0 and address.port != 0) or port < 0:
        # gRPC only says it failed; a plain socket tells us why.
        found = _bind_failure(address)
        why = (
            "gRPC refused the address; set listen (--listen) to another address"
            if found is None
            else _bind_failure_words(found)
        )
        raise StartupError(f"cannot listen on {address}: {why}")
    return port


def _bind_failure(address: Address) -> OSError | None:
    """What binding one plain socket to `address` with gRPC's options (SO_REUSEADDR: a port whose
    last connections linger in TIME_WAIT is free) fails with; None where it binds. Not what gRPC
    does where the address is two: gRPC listens on whichever of them it can bind, localhost's
    127.0.0.1 and ::1, or [::]'s IPv6 and IPv4. This socket is one: localhost's 127.0.0.1 (its ::1
    is left to gRPC), or [::]'s IPv6 socket made dual-stack, taking IPv4 too, as gRPC makes its
    own (IPV6_V6ONLY off, whatever net.ipv6.bindv6only says); where that is taken it fails, and
    the daemon is refused on purpose rather than half bound, reached by some clients of the
    address it was given and not by others."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address.host, address.port))
    except OSError as exc:
        return exc
    return None


def _bind_failure_words(exc: OSError) -> str:
    """Why the listen address cannot be bound, and what to set instead."""
    if exc.errno == errno.EADDRINUSE:
        return (
            "the port is already in use (another tesserad?); stop that process or set "
            "listen (--listen) to another port"
        )
    if exc.errno == errno.EACCES:
        return "permission denied; ports below 1024 need privileges: set listen (--listen) to a higher port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface has that address; set listen (--listen) to an address of this machine"
    return f"{exc.strerror or exc}; set listen (--listen) to another address"


async def serve(settings: Settings, insecure: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop; on SIGHUP, reload the tokens and TLS files."""
    open_files = raise_open_file_limit()
    if open_files < 3 * settings.limits.http_max_connections:
        log.warning(
            "this process may open %d files, fewer than the HTTP listeners' connections may take "
            "(limits.http_max_connections %d each): raise its limit (ulimit -n, systemd LimitNOFILE=) "
            "or lower the setting",
            open_files,
            settings.limits.http_max_connections,
        )
    daemon = create_server(settings, insecure)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(daemon.reload())
        # The loop keeps only a weak reference to a task; this one is kept until it is done.
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Before start: SIGHUP's default action would end a daemon still starting, and SIGTERM's
    # would kill one that has just said "tesserad serving" (a supervisor may stop it at once).
    # A stop asked for during the start is taken once it is done: a start is not cut halfway,
    # but its serving.preload skips the versions it has not begun.
    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop_asked.set)
    # The daemon tells systemd READY=1 itself: a primary once it reports SERVING, a replica once it listens.
    await daemon.start()
    await daemon.stop_asked.wait()
    notify("STOPPING=1")
    # A daemon stopped while starting never said it was ready: nothing routes here to drain.
    if settings.shutdown_delay_s > 0 and daemon.told_ready:
        # Not ready at once, serving on: a Service or load balancer takes the pod out of its
        # endpoints only some seconds after SIGTERM, and calls it still routes here are answered.
        # A second SIGTERM or SIGINT goes straight to the stop.
        again = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, again.set)
        await daemon.drain()
        log.info(
            "tesserad draining: reports not ready, still serving",
            extra={"shutdown_delay_s": settings.shutdown_delay_s},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(again.wait(), settings.shutdown_delay_s)
    # A SIGHUP from now on is not applied to a daemon going away (nor left to end the process).
    loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: tesserad is stopping")
    # A reload under way finishes first: asyncio.run would cancel it halfway through the files.
    deadline = time.monotonic() + settings.grace_period_s
    if reloads:
        _, unfinished = await asyncio.wait(reloads, timeout=settings.grace_period_s)
        if unfinished:
            log.warning("a SIGHUP reload did not finish within the grace period; it is abandoned")
            await cancel_and_wait(unfinished)
    await daemon.stop(max(0.0, deadline - time.monotonic()))

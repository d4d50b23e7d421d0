"""Composition root: settings -> store -> domain services -> gRPC server.

The one place that builds everything. `create_server(settings)` returns a `Daemon`; tests
start it on 127.0.0.1:0 with a temporary data directory, `serve()` runs it until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
from tesserad.api.interceptors import CallInterceptor
from tesserad.api.system import SystemServicer
from tesserad.api.unimplemented import unimplemented_servicer
from tesserad.config import Address, Settings, format_size
from tesserad.host import Gpus
from tesserad.metrics import DaemonMetrics, MetricsHttpServer
from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.store import BlobStore, DataDirLock, Store
from tesserad.system import SystemService

log = logging.getLogger(__name__)

# Tables of the LMDB store; each domain package adds its own here as it is built.
STORE_TABLES: list[str] = ["meta"]

# The tessera.v1 services, as (generated module, service name).
_SERVICES = [
    (system_pb2, "System"),
    (registry_pb2, "Registry"),
    (datasets_pb2, "Datasets"),
    (training_pb2, "Training"),
    (inference_pb2, "Inference"),
    (grpc_service_pb2, "GRPCInferenceService"),
]

# Contract services not built yet: every RPC answers UNIMPLEMENTED naming the feature.
_PLACEHOLDERS = [
    (registry_pb2, registry_pb2_grpc, "Registry", "the model registry (issue #3)"),
    (datasets_pb2, datasets_pb2_grpc, "Datasets", "dataset storage (issue #3)"),
    (training_pb2, training_pb2_grpc, "Training", "training and tracking (issue #4)"),
    (inference_pb2, inference_pb2_grpc, "Inference", "inference serving (issue #8)"),
    (
        grpc_service_pb2,
        grpc_service_pb2_grpc,
        "GRPCInferenceService",
        "the Open Inference Protocol (issue #8)",
    ),
]


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    """A tesserad instance: `await start()`, serve, `await stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port: int = 0
        self.metrics_port: int | None = None
        self.metrics = DaemonMetrics()
        self._stopping = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._lock: DataDirLock | None = None
        self._store: Store | None = None
        self._gpus: Gpus | None = None
        self.service_names = [m.DESCRIPTOR.services_by_name[n].full_name for m, n in _SERVICES]

    @property
    def address(self) -> str:
        return str(Address(self.settings.listen.host, self.port))

    async def start(self) -> None:
        """Take the data directory, open the store, bind and start serving; fail fast and clean."""
        try:
            await self._start()
        except BaseException:
            await self._close_resources()
            raise

    async def _start(self) -> None:
        settings = self.settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(data_dir)
        self._lock.acquire()
        self._store = Store.open(
            data_dir / "store",
            map_size=settings.store.map_size,
            durability=settings.store.durability,
            tables=STORE_TABLES,
            group_commit_interval_s=settings.store.group_commit_interval_ms / 1000,
        )
        blobs = BlobStore(data_dir / "blobs")
        self._gpus = Gpus()

        server = grpc.aio.server(
            interceptors=[CallInterceptor(self.metrics)],
            options=[
                # gRPC sets SO_REUSEPORT by default, which would let a second daemon silently
                # share the port; a taken port must be an error.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_message_size),
                ("grpc.max_send_message_length", settings.max_message_size),
            ],
        )
        self._server = server
        system = SystemService(data_dir, self._store, blobs, self._gpus, self.service_names)
        system_pb2_grpc.add_SystemServicer_to_server(SystemServicer(system, self._stopping), server)
        for pb2, pb2_grpc, name, feature in _PLACEHOLDERS:
            servicer = unimplemented_servicer(
                getattr(pb2_grpc, f"{name}Servicer"), pb2.DESCRIPTOR.services_by_name[name], feature
            )
            getattr(pb2_grpc, f"add_{name}Servicer_to_server")(servicer, server)

        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )

        self.port = _bind(server, settings.listen)
        await server.start()
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.metrics_listen is not None:
            try:
                self._metrics_http = MetricsHttpServer(self.metrics.registry, settings.metrics_listen)
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}; "
                    "pass --metrics-listen with another address, or off"
                ) from None
            self.metrics_port = self._metrics_http.port
        log.info(
            "tesserad serving",
            extra={
                "address": self.address,
                "metrics": f"{settings.metrics_listen.host}:{self.metrics_port}"
                if self.metrics_port
                else "off",
                "data_dir": str(data_dir.resolve()),
                "map_size": format_size(settings.store.map_size),
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish within the grace period, close the store."""
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("tesserad stopping", extra={"grace_period_s": grace})
        self._stopping.set()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self._close_resources()
        log.info("tesserad stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _close_resources(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None
        if self._gpus is not None:
            self._gpus.close()
            self._gpus = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def create_server(settings: Settings) -> Daemon:
    return Daemon(settings)


def _bind(server: grpc.aio.Server, address: Address) -> int:
    try:
        port = server.add_insecure_port(str(address))
    except RuntimeError:
        port = 0
    if (port == 0 and address.port != 0) or port < 0:
        raise StartupError(f"cannot listen on {address}: {_why_bind_fails(address)}")
    return port


def _why_bind_fails(address: Address) -> str:
    """gRPC only says it failed; a plain socket tells us why."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is already in use (another tesserad?); stop that process or pass --listen with another port"
            if exc.errno == errno.EACCES:
                return "permission denied; ports below 1024 need privileges, pick a higher port"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no network interface has that address"
            return exc.strerror or str(exc)
    return "gRPC refused the address"


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    daemon = create_server(settings)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await daemon.stop()

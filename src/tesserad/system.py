"""The daemon's facts about itself: version, uptime, devices, data directory usage, its place in
replication."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal, Protocol

from tesserad import __version__
from tesserad.host import CpuInfo, GpuInfo, Gpus, UsageSampler, cpu_info
from tesserad.store import Store
from tesserad.store.schema import STORE_SCHEMA
from tesserad.training.ray_cluster import ClusterStatus


@dataclass(frozen=True)
class DataDirUsage:
    path: str
    store_bytes: int
    store_map_size_bytes: int
    blob_bytes: int
    fs_free_bytes: int
    fs_total_bytes: int
    store_schema: int


@dataclass(frozen=True)
class Replication:
    """Which registry change the daemon routes requests by (`applied_change`): a primary's
    newest, or the last a replica applied. The rest is a replica's link to its `primary` (see
    tesserad.replica.link): empty, False, 0 on a primary."""

    role: Literal["primary", "replica"]
    applied_change: int
    store_incarnation: str
    primary: str = ""
    connected: bool = False
    refusal: str = ""  # why the primary refuses this replica, while it does
    primary_change: int = 0
    last_contact: float = 0.0  # seconds since the epoch; 0.0 before the stream was ever open


@dataclass(frozen=True)
class ServerFacts:
    version: str
    started_at: float  # wall clock, seconds since the epoch
    uptime_s: float
    cpu: CpuInfo
    gpus: list[GpuInfo]
    data_dir: DataDirUsage
    services: list[str]
    hostname: str
    pid: int
    runtime_versions: dict[str, str]
    cluster: ClusterStatus | None
    replication: Replication


@cache
def _runtime_versions() -> dict[str, str]:
    """Read from package metadata: importing torch just to print its version would cost seconds.
    Read at the first ask for them, not at every start."""
    versions = {"python": platform.python_version()}
    for package in ("grpcio", "protobuf", "torch", "onnxruntime", "onnx", "numpy", "lmdb"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


class ClusterSource(Protocol):
    """The training cluster's state (training.ray_cluster.RayCluster)."""

    def status(self) -> ClusterStatus: ...


class SystemService:
    def __init__(
        self,
        data_dir: Path,
        store: Store | None,
        blob_bytes: Callable[[], int],
        gpus: Gpus,
        services: list[str],
        replication: Callable[[], Replication],
    ) -> None:
        """`store`: None on a replica, which holds none; `blob_bytes`: the bytes of the blobs
        held (a replica's: its cache's)."""
        self._data_dir = data_dir
        self._store = store
        self._blob_bytes = blob_bytes
        self._replication = replication
        self._gpus = gpus
        self._services = services
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._cpu = cpu_info()
        self._cluster: ClusterSource | None = None

    def report_cluster(self, cluster: ClusterSource) -> None:
        """Report the training cluster (training.backend = ray) in facts() and with each sample."""
        self._cluster = cluster

    def cluster(self) -> ClusterStatus | None:
        return self._cluster.status() if self._cluster is not None else None

    def facts(self) -> ServerFacts:
        store_usage = self._store.usage() if self._store is not None else None
        disk = shutil.disk_usage(self._data_dir)

        return ServerFacts(
            version=__version__,
            started_at=self._started_wall,
            uptime_s=time.monotonic() - self._started,
            cpu=self._cpu,
            gpus=self._gpus.info(),
            data_dir=DataDirUsage(
                path=str(self._data_dir.resolve()),
                store_bytes=store_usage.file_bytes if store_usage is not None else 0,
                store_map_size_bytes=store_usage.map_size if store_usage is not None else 0,
                blob_bytes=self._blob_bytes(),
                fs_free_bytes=disk.free,
                fs_total_bytes=disk.total,
                # open_for_writing recorded it as the daemon started.
                store_schema=STORE_SCHEMA,
            ),
            services=list(self._services),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            runtime_versions=_runtime_versions(),
            cluster=self.cluster(),
            replication=self._replication(),
        )

    def sampler(self) -> UsageSampler:
        return UsageSampler(self._gpus)

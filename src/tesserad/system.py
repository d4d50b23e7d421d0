"""The daemon's facts about itself: version, uptime, devices, data directory usage."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

from tesserad import __version__
from tesserad.host import CpuInfo, GpuInfo, Gpus, UsageSampler, cpu_info
from tesserad.store import BlobStore, Store
from tesserad.training.ray_cluster import ClusterStatus


@dataclass(frozen=True)
class DataDirUsage:
    path: str
    store_bytes: int
    store_map_size_bytes: int
    blob_bytes: int
    fs_free_bytes: int
    fs_total_bytes: int


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
        self, data_dir: Path, store: Store, blobs: BlobStore, gpus: Gpus, services: list[str]
    ) -> None:
        self._data_dir = data_dir
        self._store = store
        self._blobs = blobs
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
        store_usage = self._store.usage()
        disk = shutil.disk_usage(self._data_dir)

        return ServerFacts(
            version=__version__,
            started_at=self._started_wall,
            uptime_s=time.monotonic() - self._started,
            cpu=self._cpu,
            gpus=self._gpus.info(),
            data_dir=DataDirUsage(
                path=str(self._data_dir.resolve()),
                store_bytes=store_usage.file_bytes,
                store_map_size_bytes=store_usage.map_size,
                blob_bytes=self._blobs.usage(),
                fs_free_bytes=disk.free,
                fs_total_bytes=disk.total,
            ),
            services=list(self._services),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            runtime_versions=_runtime_versions(),
            cluster=self.cluster(),
        )

    def sampler(self) -> UsageSampler:
        return UsageSampler(self._gpus)

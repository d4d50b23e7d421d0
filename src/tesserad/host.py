"""What the daemon runs on: CPU, memory and CUDA GPUs, and their use over time.

GPUs are read through NVML, not torch: NVML needs no CUDA context, so the daemon process
never takes GPU memory just to list or watch devices. Device indices follow
CUDA_VISIBLE_DEVICES when it lists indices, so "cuda:N" here means what it means to torch
in a worker.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import psutil
import pynvml

from tesserad.numbers import is_digits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuInfo:
    name: str
    cores: int
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuInfo:
    id: str  # "cuda:N"
    name: str
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuUsage:
    id: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float


@dataclass(frozen=True)
class HostSample:
    time: float  # wall clock, seconds since the epoch
    cpu_percent: float
    per_cpu_percent: list[float]
    memory_used_bytes: int
    memory_total_bytes: int
    process_cpu_percent: float
    process_rss_bytes: int
    gpus: list[GpuUsage] = field(default_factory=list)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit.

    Every connection, open blob and store reader holds a descriptor, and services still start
    at a soft limit of 1024 (systemd keeps the hard limit high for programs to raise this way),
    below what three HTTP listeners at limits.http_max_connections may hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        # An infinite hard limit is refused above the kernel's nr_open: keep the soft one.
        log.debug("open files: kept the soft limit of %d (%s)", soft, error)
        return soft
    return hard


def usable_cpu_count() -> int:
    """Cores this process may run on (affinity-aware, so containers with a CPU set count right)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_info() -> CpuInfo:
    return CpuInfo(
        name=_cpu_model_name(), cores=usable_cpu_count(), memory_total_bytes=psutil.virtual_memory().total
    )


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


class Gpus:
    """NVML access to the visible CUDA GPUs; empty on machines without NVIDIA's driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[tuple[str, object]] = []
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.info("no CUDA GPUs found", extra={"reason": str(exc)})
            self._available = False
            return
        self._available = True
        count = pynvml.nvmlDeviceGetCount()
        for local, physical in enumerate(_visible_indices(count)):
            self._handles.append((f"cuda:{local}", pynvml.nvmlDeviceGetHandleByIndex(physical)))

    def info(self) -> list[GpuInfo]:
        with self._lock:
            return [
                GpuInfo(
                    gpu_id, _text(pynvml.nvmlDeviceGetName(h)), int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
                )
                for gpu_id, h in self._handles
            ]

    def usage(self) -> list[GpuUsage]:
        samples = []
        with self._lock:
            for gpu_id, handle in self._handles:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                samples.append(
                    GpuUsage(
                        id=gpu_id,
                        utilization_percent=float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                        memory_used_bytes=int(memory.used),
                        memory_total_bytes=int(memory.total),
                        temperature_c=_optional(
                            partial(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
                        ),
                        power_w=_optional(partial(_power_watts, handle)),
                    )
                )
        return samples

    def close(self) -> None:
        if self._available:
            pynvml.nvmlShutdown()
            self._available = False


def _visible_indices(count: int) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices = []
    for part in visible.split(","):
        part = part.strip()
        if not is_digits(part):  # UUIDs or an empty list: fall back to what torch would see
            break
        if int(part) < count:
            indices.append(int(part))
    return indices


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _power_watts(handle: Any) -> float:
    """NVML reports power in milliwatts."""
    return float(pynvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0


def _optional(read: Callable[[], float]) -> float:
    """Some GPUs do not report temperature or power; 0 then."""
    try:
        return float(read())
    except pynvml.NVMLError:
        return 0.0


class UsageSampler:
    """CPU percentages since this sampler's previous sample.

    Each watcher owns one, so watchers with different intervals never reset each other's
    baseline (psutil.cpu_percent keeps one global baseline per process).
    """

    def __init__(self, gpus: Gpus) -> None:
        self._gpus = gpus
        self._process = psutil.Process()
        self._cpu_times = psutil.cpu_times(percpu=True)
        self._process_cpu = self._process_cpu_seconds()
        self._at = time.monotonic()

    def _process_cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def sample(self) -> HostSample:
        now = time.monotonic()
        cpu_times = psutil.cpu_times(percpu=True)
        per_cpu = [_busy_percent(a, b) for a, b in zip(self._cpu_times, cpu_times, strict=False)]
        process_cpu = self._process_cpu_seconds()
        elapsed = max(now - self._at, 1e-9)
        process_percent = 100.0 * (process_cpu - self._process_cpu) / elapsed
        self._cpu_times, self._process_cpu, self._at = cpu_times, process_cpu, now
        memory = psutil.virtual_memory()
        return HostSample(
            time=time.time(),
            cpu_percent=sum(per_cpu) / len(per_cpu) if per_cpu else 0.0,
            per_cpu_percent=per_cpu,
            memory_used_bytes=int(memory.total - memory.available),
            memory_total_bytes=int(memory.total),
            process_cpu_percent=process_percent,
            process_rss_bytes=int(self._process.memory_info().rss),
            gpus=self._gpus.usage(),
        )


class _CpuTimes(Protocol):
    """psutil's per-CPU times; their fields (iowait among them) differ by platform."""

    @property
    def idle(self) -> float: ...

    def __iter__(self) -> Iterator[float]: ...


def _busy_percent(before: _CpuTimes, after: _CpuTimes) -> float:
    total = sum(after) - sum(before)
    if total <= 0:
        return 0.0
    iowait_before: float = getattr(before, "iowait", 0.0)
    iowait_after: float = getattr(after, "iowait", 0.0)
    idle = (after.idle + iowait_after) - (before.idle + iowait_before)
    return max(0.0, min(100.0, 100.0 * (total - idle) / total))

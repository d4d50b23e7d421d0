"""Device inventory and queue order: which queued job runs next, and on which devices.

Jobs hold their devices exclusively. The queue is ordered by priority (higher first), then
submission order. A job that does not fit yet blocks the jobs behind it that want the same
kind of device (so a 2-GPU job is not starved by a stream of 1-GPU jobs); jobs for the other
kind may pass it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    priority: int
    order: str  # submission order: the time-sortable job id of the original submit
    devices: dict[str, Any]  # {"kind": cpu|cuda, "indices": [...], "count": n}


class DeviceInventory:
    def __init__(self, cpu_slots: int, gpu_count: int) -> None:
        self.free: dict[str, bool] = {f"cpu:{i}": True for i in range(cpu_slots)}
        self.free.update({f"cuda:{i}": True for i in range(gpu_count)})

    def allocate(self, request: dict[str, Any]) -> list[str] | None:
        """Take the devices for `request`, or None (taking nothing) if they are not all free."""
        if request["kind"] == "cuda" and request["indices"]:
            wanted = [f"cuda:{i}" for i in request["indices"]]
            if not all(self.free.get(d, False) for d in wanted):
                return None
        else:
            prefix = "cuda:" if request["kind"] == "cuda" else "cpu:"
            candidates = [d for d, free in self.free.items() if free and d.startswith(prefix)]
            if len(candidates) < request["count"]:
                return None
            wanted = candidates[: request["count"]]
        for device in wanted:
            self.free[device] = False
        return wanted

    def release(self, devices: list[str]) -> None:
        for device in devices:
            self.free[device] = True


def queue_order(job: QueuedJob) -> tuple[int, str]:
    return (-job.priority, job.order)


def pick_runnable(queue: list[QueuedJob], inventory: DeviceInventory) -> list[tuple[QueuedJob, list[str]]]:
    """Jobs to start now with their devices, in queue order; allocates them in `inventory`."""
    started: list[tuple[QueuedJob, list[str]]] = []
    blocked: set[str] = set()
    for job in sorted(queue, key=queue_order):
        kind = job.devices["kind"]
        if kind in blocked:
            continue
        devices = inventory.allocate(job.devices)
        if devices is None:
            blocked.add(kind)
            continue
        started.append((job, devices))
    return started


def queue_position(queue: list[QueuedJob], job_id: str) -> int:
    """How many queued jobs are ahead of `job_id`."""
    ordered = sorted(queue, key=queue_order)
    return next(i for i, job in enumerate(ordered) if job.job_id == job_id)

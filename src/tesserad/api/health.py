"""grpc.health.v1.Health: grpc's servicer, with Watch streams that end at a graceful shutdown.

grpc's Watch streams until its caller cancels: open at a stop, it would hold the server's whole
grace period. Here, once `enter_graceful_shutdown` has set every service NOT_SERVING, each Watch
sends NOT_SERVING (unless it last sent that, or SERVICE_UNKNOWN) and ends with OK; a Watch of
LIVENESS_SERVICE, SERVING until the process exits, just ends.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2

_Context: TypeAlias = grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Liveness for probes: SERVING while the event loop answers, from start until the process exits.
# Readiness, a drain and a replica's catch-up never change it, so a pod that only waits is not
# restarted; asked over gRPC, whose listener limits.http_max_connections does not cap.
LIVENESS_SERVICE = "tesserad.live"
# What a watcher may have last heard that needs no NOT_SERVING after it at a shutdown.
_FINAL = (_NOT_SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)


class _Written:
    """The context a Watch writes to: it keeps the last status sent, and each write under a
    lock, so that the shutdown stops the watch between writes and never during one."""

    def __init__(self, context: _Context) -> None:
        self._context = context
        self.lock = asyncio.Lock()
        self.last: int | None = None

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        async with self.lock:
            await self._context.write(message)
            self.last = message.status


class HealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._shutting_down = asyncio.Event()

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._shutting_down.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: _Context
    ) -> health_pb2.HealthCheckResponse:
        # Answered here, never from grpc's table: nothing that sets statuses can change it.
        if request.service == LIVENESS_SERVICE:
            return health_pb2.HealthCheckResponse(status=_SERVING)
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: _Context) -> None:
        if request.service == LIVENESS_SERVICE:
            await context.write(health_pb2.HealthCheckResponse(status=_SERVING))
            await self._shutting_down.wait()
            return
        written = _Written(context)
        # grpc's Watch uses only its context's write.
        watch = asyncio.ensure_future(super().Watch(request, written))  # type: ignore[arg-type]
        shutting_down = asyncio.ensure_future(self._shutting_down.wait())
        try:
            await asyncio.wait({watch, shutting_down}, return_when=asyncio.FIRST_COMPLETED)
            async with written.lock:
                watch.cancel()
            await asyncio.wait({watch})
            if not watch.cancelled():
                watch.result()  # it ended on its own: its caller's error
            if written.last not in _FINAL:
                await context.write(health_pb2.HealthCheckResponse(status=_NOT_SERVING))
        finally:
            watch.cancel()
            shutting_down.cancel()

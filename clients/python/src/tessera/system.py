"""The daemon itself: version, devices, data directory, and a live stream of resource use."""

from __future__ import annotations

from collections.abc import Iterator

from tessera.transport import Connection, Op
from tessera.v1 import system_pb2 as pb

S = "System"


def info_op() -> Op[pb.ServerInfo]:
    return Op(S, "GetServerInfo", pb.GetServerInfoRequest())


def watch_request(interval_ms: int, max_samples: int) -> pb.WatchSystemRequest:
    return pb.WatchSystemRequest(interval_ms=interval_ms, max_samples=max_samples)


class System:
    """`client.system`: what the daemon is and what it is using."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def info(self) -> pb.ServerInfo:
        """Version, uptime, devices (CPU then GPUs), data directory usage, services served."""
        return self._conn.call(info_op())

    def watch(
        self, interval_ms: int = 1000, max_samples: int = 0, timeout: float | None = None
    ) -> Iterator[pb.SystemSample]:
        """A CPU/memory/GPU sample every `interval_ms` (100..60000) until `max_samples` have
        come (0: until you stop iterating). `timeout` bounds the whole stream (None: none)."""
        return self._conn.server_stream(S, "WatchSystem", watch_request(interval_ms, max_samples), timeout)

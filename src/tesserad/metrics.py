"""Prometheus metrics on their own HTTP port, from a registry the daemon owns.

Nothing is registered on prometheus_client's global registry, so two daemons in one process
(as in tests) never collide.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from tesserad.config import Address

log = logging.getLogger(__name__)

# RPC latencies span ~100 us (cached reads, tiny models) to minutes (uploads, watch streams).
RPC_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class DaemonMetrics:
    """Every metric the daemon exports; services add theirs to `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_latency = Histogram(
            "tessera_rpc_duration_seconds",
            "Time from a call's arrival to its status, per RPC.",
            ["service", "method"],
            buckets=RPC_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_total = Counter(
            "tessera_rpc",
            "Finished calls per RPC and status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )

    def observe_rpc(self, service: str, method: str, code: str, seconds: float) -> None:
        self.rpc_latency.labels(service, method).observe(seconds)
        self.rpc_total.labels(service, method, code).inc()


class MetricsHttpServer:
    """Serves /metrics from a background thread."""

    def __init__(self, registry: CollectorRegistry, address: Address) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(address.port, address.host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

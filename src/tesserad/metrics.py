"""Prometheus metrics on their own HTTP port, from a registry the daemon owns.

Nothing is registered on prometheus_client's global registry, so two daemons in one process
(as in tests) never collide.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

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

    def rpc_recorder(self, service: str, method: str) -> RpcRecorder:
        """Records the calls of one RPC; made once per method, so a call pays no label lookup."""
        return RpcRecorder(self, service, method)


class RpcRecorder:
    """One RPC's latency histogram and per-code counters, with the label lookups done once.

    prometheus_client's `labels()` takes a lock and builds the label tuple on every call (about
    10 us per call on the dev box, twice per RPC); the children it returns are stable, so they
    are looked up once and reused.
    """

    __slots__ = ("_counters", "_method", "_metrics", "_observe", "_service")

    def __init__(self, metrics: DaemonMetrics, service: str, method: str) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method
        self._observe = metrics.rpc_latency.labels(service, method).observe
        self._counters: dict[str, Callable[[], None]] = {}

    def record(self, code: str, seconds: float) -> None:
        self._observe(seconds)
        count = self._counters.get(code)
        if count is None:
            count = self._counters[code] = self._metrics.rpc_total.labels(
                self._service, self._method, code
            ).inc
        count()


class MetricsHttpServer:
    """Serves /metrics (and nothing else: 404) from a background thread.

    prometheus_client's own start_http_server answers every path with the metrics; this is the
    same server with its WSGI app behind a route.
    """

    def __init__(self, registry: CollectorRegistry, address: Address) -> None:
        server_class = _Ipv6Server if ":" in address.host else ThreadingWSGIServer
        self._server = make_server(
            address.host, address.port, _metrics_only(make_wsgi_app(registry)), server_class, _QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _metrics_only(app: WsgiApp) -> WsgiApp:
    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the metrics are at /metrics\n"]

    return route


class _Ipv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return

"""Prometheus metrics on their own HTTP port, from a registry the daemon owns.

Nothing is registered on prometheus_client's global registry, so two daemons in one process
(as in tests) never collide. Families that prometheus_client cannot name as their owner needs
(Triton's counters, see serving/triton_metrics.py) are added as text (`add_text`).

On loopback the port answers only the hosts the HTTP listeners answer (security.http_allowed_hosts,
dashboard/hosts.py), so a page that rebinds its name to 127.0.0.1 cannot read the model names and
counts. Beyond loopback the Host is not checked: the operator has put the metrics on the network
for Prometheus, which scrapes them by names of every kind (a Service's, a pod's, a node's), and
whoever a rebound page could reach them through can read them directly.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import logging
import math
import selectors
import socket
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, make_wsgi_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tesserad.config import Address, LimitsSettings
from tesserad.dashboard.hosts import HostRule
from tesserad.security.limits import ConnectionLimit
from tesserad.security.roles import Role
from tesserad.security.tokens import TokenFile, format_time, token_digest, utc_now

if TYPE_CHECKING:
    from tesserad.api.audit import Audit
    from tesserad.dashboard.access import DashboardTls

log = logging.getLogger(__name__)

# RPC latencies span ~100 us (cached reads, tiny models) to minutes (uploads, watch streams).
RPC_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

# The statuses that say the daemon failed, not its caller (deploy/prometheus/alerts.yml pages
# on them): one series each per RPC, from the start; a few hundred in all, fixed by the protos.
FAILURE_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS")
# Their HTTP answer, per route and method of each HTTP listener.
HTTP_FAILURE_CODE = "500"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TextFamilies(Protocol):
    def text(self) -> str:
        """Whole metric families (HELP, TYPE, samples) in Prometheus's text format 0.0.4."""
        ...


class DaemonMetrics:
    """Every metric the daemon exports; services add theirs to `registry`, or as text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The daemon's own CPU time, memory, open files and start time (process_*), from /proc.
        ProcessCollector(registry=self.registry)
        self._rpcs = _CallMetrics(
            self.registry,
            ("tessera_rpc_duration_seconds", "Time from a call's arrival to its status, per RPC."),
            ("tessera_rpc", "Finished calls per RPC and status code."),
            ["service", "method"],
        )
        self._http = _CallMetrics(
            self.registry,
            (
                "tessera_http_request_duration_seconds",
                "Time from a request's headers to its answer, per HTTP listener, route and method.",
            ),
            ("tessera_http_requests", "Requests answered per HTTP listener, route, method and status."),
            ["listener", "route", "method"],
        )
        self._connections = _ConnectionMetrics(self.registry)
        self._text: list[TextFamilies] = []
        self._negotiated = make_wsgi_app(self.registry)

    def add_text(self, families: TextFamilies) -> None:
        self._text.append(families)

    def page(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The /metrics page (a WSGI app). With families added as text, always in the text format
        0.0.4: theirs could not join an OpenMetrics page (it requires `_total` on counter names)."""
        if not self._text:
            page: Iterable[bytes] = self._negotiated(environ, start_response)
            return page
        body = generate_latest(self.registry) + "".join(f.text() for f in self._text).encode()
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    def count_connections(self, limit: ConnectionLimit) -> None:
        """Export an HTTP listener's open and refused connections."""
        self._connections.limits.append(limit)

    def expect_rpcs(self, methods: Iterable[tuple[str, str]]) -> None:
        """Show each of `methods` (service, method) with its daemon's-failure codes at 0 from
        the first scrape: the alerts count them with increase(), which sees a series' first
        failure only when the series was scraped before it."""
        for service, method in methods:
            self.rpc_recorder(service, method).expect(FAILURE_CODES)

    def rpc_recorder(self, service: str, method: str) -> CallRecorder:
        """Records the calls of one RPC; made once per method, so a call pays no label lookup."""
        return self._rpcs.recorder((service, method))

    def expect_http(self, listener: str, routes: Iterable[tuple[str, str]]) -> None:
        """Show each of a listener's `routes` (route template, method) with 500 at 0 from the
        first scrape, as `expect_rpcs` does its failure codes."""
        for route, method in routes:
            self.http_recorder(listener, route, method).expect((HTTP_FAILURE_CODE,))

    def http_recorder(self, listener: str, route: str, method: str) -> CallRecorder:
        """Records the requests of one HTTP listener's route (its template, never a request's own
        path) and method; the listener keeps it, so a request pays one lookup of its own."""
        return self._http.recorder((listener, route, method))


class CallRecorder:
    """One RPC's (or HTTP route's) latency histogram and per-code counts: plain integers under
    one lock, read at scrape time (`_CallMetrics`).

    prometheus_client's Histogram and Counter take a lock per sample, per bucket and per counter
    (2.3 us a call on the dev box with the label lookups done once, several times that on the
    event loop's thread between calls, caches cold); this is a bisect and three additions.
    """

    __slots__ = ("_lock", "codes", "counts", "labels", "sum")

    def __init__(self, labels: tuple[str, ...]) -> None:
        """`labels`: the values of its family's labels but the code, in their order."""
        self.labels = labels
        self._lock = threading.Lock()
        self.counts = [0] * (len(RPC_LATENCY_BUCKETS) + 1)  # the last one +Inf
        self.sum = 0.0
        self.codes: dict[str, int] = {}

    def record(self, code: str, seconds: float) -> None:
        with self._lock:
            # Prometheus buckets are inclusive (le): the first bound >= seconds.
            self.counts[bisect_left(RPC_LATENCY_BUCKETS, seconds)] += 1
            self.sum += seconds
            self.codes[code] = self.codes.get(code, 0) + 1

    def expect(self, codes: Iterable[str]) -> None:
        """Export `codes` at 0 until they are counted."""
        with self._lock:
            for code in codes:
                self.codes.setdefault(code, 0)

    def refused(self, code: str) -> None:
        """Count a call refused before any work (authentication): in the codes only, since a 0 s
        latency sample per refusal would drag the served calls' percentiles toward 0 in a flood."""
        with self._lock:
            self.codes[code] = self.codes.get(code, 0) + 1

    def read(self) -> tuple[list[int], float, dict[str, int]]:
        with self._lock:
            return list(self.counts), self.sum, dict(self.codes)


class _CallMetrics(Collector):
    """A latency histogram and a per-code counter (tessera_rpc_duration_seconds and tessera_rpc
    per RPC; tessera_http_request_duration_seconds and tessera_http_requests per HTTP route),
    from the recorders at scrape time; exported as prometheus_client's Histogram and Counter
    export them with their `_created` series turned off: the text format makes each a gauge
    family of its own, a series per series that nothing reads (PROMETHEUS_DISABLE_CREATED_SERIES
    does the same for prometheus_client's)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        latency: tuple[str, str],
        counter: tuple[str, str],
        labels: list[str],
    ) -> None:
        """`latency`, `counter`: each family's name and help; `labels`: a recorder's labels'
        names (the counter's `code` follows them)."""
        self._latency = latency
        self._counter = counter
        self._labels = labels
        self._lock = threading.Lock()
        self._recorders: dict[tuple[str, ...], CallRecorder] = {}
        registry.register(self)

    def recorder(self, labels: tuple[str, ...]) -> CallRecorder:
        with self._lock:
            recorder = self._recorders.get(labels)
            if recorder is None:
                recorder = self._recorders[labels] = CallRecorder(labels)
            return recorder

    def describe(self) -> list[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            recorders = list(self._recorders.values())
        return iter(self._families(recorders))

    def _families(self, recorders: list[CallRecorder]) -> list[Metric]:
        latency = HistogramMetricFamily(*self._latency, labels=self._labels)
        calls = CounterMetricFamily(*self._counter, labels=[*self._labels, "code"])
        bounds = [*RPC_LATENCY_BUCKETS, math.inf]
        for recorder in recorders:
            counts, total, codes = recorder.read()
            for code, count in codes.items():
                calls.add_metric([*recorder.labels, code], count)
            if not any(counts):
                # No call timed yet (its failure codes exported at 0, or refusals only): 20
                # buckets of zeros per method and route would add thousands of series.
                continue
            # prometheus_client leaves floatToGoString unannotated.
            buckets = [
                (floatToGoString(bound), cumulative)  # type: ignore[no-untyped-call]
                for bound, cumulative in zip(bounds, itertools.accumulate(counts), strict=True)
            ]
            latency.add_metric(list(recorder.labels), buckets, total)
        return [latency, calls]


class _ConnectionMetrics(Collector):
    """tessera_http_connections and tessera_http_connections_refused, per HTTP listener, read
    from their limits at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limits: list[ConnectionLimit] = []
        registry.register(self)

    def describe(self) -> list[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(self) -> list[Metric]:
        opened = GaugeMetricFamily(
            "tessera_http_connections",
            "Connections open on each HTTP listener (at most limits.http_max_connections).",
            labels=["listener"],
        )
        refused = CounterMetricFamily(
            "tessera_http_connections_refused",
            "Connections an HTTP listener closed on arrival: limits.http_max_connections were open.",
            labels=["listener"],
        )
        for limit in list(self.limits):
            opened.add_metric([limit.listener], limit.open)
            refused.add_metric([limit.listener], limit.refused)
        return [opened, refused]


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read /metrics (security.metrics_role, security.metrics_tls): a token of `tokens`
    with at least `role` (None: anyone), over `tls` (None: plain HTTP); refusals go to `audit`."""

    tokens: TokenFile | None = None
    role: Role | None = None
    tls: DashboardTls | None = None
    audit: Audit | None = None


class MetricsHttpServer:
    """Serves /metrics (and nothing else: 404) from a background thread.

    prometheus_client's own start_http_server answers every path with the metrics; this is the
    same server with its WSGI app behind a route, and, as `access` asks, behind a token and TLS.
    """

    def __init__(
        self,
        metrics: DaemonMetrics,
        address: Address,
        allowed_hosts: Iterable[str],
        limits: LimitsSettings,
        access: MetricsAccess | None = None,
    ) -> None:
        """`allowed_hosts`: security.http_allowed_hosts, checked when `address` is loopback."""
        access = MetricsAccess() if access is None else access
        server_class = _Ipv6Server if ":" in address.host else _LimitedServer
        app = _metrics_only(metrics.page)
        if access.tokens is not None and access.role is not None:
            app = _token_required(app, access.tokens, access.role, access.audit)
        app = _answered_hosts(app, HostRule(allowed_hosts, address.is_loopback))
        self._server = make_server(address.host, address.port, app, server_class, _QuietHandler)
        self._server.connections = ConnectionLimit(limits.http_max_connections, "metrics")
        self._server.request_timeout_s = limits.http_request_timeout_s
        self._server.tls = access.tls
        self.scheme = "http" if access.tls is None else "https"
        metrics.count_connections(self._server.connections)
        # handle_request is called only once a connection waits: with no wait of its own, a
        # connection gone by then leaves it returning, not blocked where close cannot wake it.
        self._server.timeout = 0
        self._wake, self._woken = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()
        self.port: int = self._server.server_port

    def _serve(self) -> None:
        """serve_forever, except that close wakes it at once: serve_forever notices a shutdown
        only at its next poll (0.5 s by default; at 50 ms, most of a daemon's stop and twenty
        idle wake-ups a second)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._woken, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._woken in ready:
                    return
                self._server.handle_request()

    def close(self) -> None:
        if self._wake.fileno() == -1:  # closed already
            return
        self._wake.send(b"\0")
        self._thread.join(timeout=5)
        self._server.server_close()
        self._wake.close()
        self._woken.close()


def _answered_hosts(app: WsgiApp, hosts: HostRule) -> WsgiApp:
    """`app` for the hosts `hosts` answers; 403 saying why for any other."""

    def guard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        problem = hosts.refusal(
            environ.get("REQUEST_METHOD", "GET"), environ.get("HTTP_HOST"), environ.get("HTTP_ORIGIN")
        )
        if problem is None:
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{problem}\n".encode()]

    return guard


# Every 401 carries it (RFC 9110 says it must; Prometheus and curl read the scheme there).
_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="tesserad"')


def _token_required(app: WsgiApp, tokens: TokenFile, role: Role, audit: Audit | None) -> WsgiApp:
    """`app` for a request whose `Authorization: Bearer` token, in `tokens` as they are now (a
    reload applies at the next scrape), has at least `role`; 401 or 403 saying why for another."""

    def guard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION")
        status, reason, problem = _token_problem(tokens, role, header)
        if status is None:
            return app(environ, start_response)
        if audit is not None:
            audit.refused(
                f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('PATH_INFO', '')[:200]}",
                None,
                environ.get("REMOTE_ADDR", ""),
                status.split()[0],
                reason,
                listener="metrics",
            )
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        start_response(status, [*headers, _CHALLENGE] if status.startswith("401") else headers)
        return [f"{problem}\n".encode()]

    return guard


def _token_problem(tokens: TokenFile, role: Role, header: str | None) -> tuple[str | None, str, str]:
    """(None, "", "") when `header` carries a token good enough; else (the HTTP status, the
    reason as audit lines name it, what the caller is told)."""
    if header is None:
        return (
            "401 Unauthorized",
            "no token",
            "this tesserad's /metrics needs a token: send the header 'Authorization: Bearer <token>' "
            f"with a token of the {role.label} role or above (made with `tesserad tokens add`)",
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "401 Unauthorized", "token refused", "the Authorization header must be 'Bearer <token>'"
    identity = tokens.table.identify_digest(token_digest(token.strip()))
    if identity is None:
        return (
            "401 Unauthorized",
            "token refused",
            "the token is not valid for this tesserad (mistyped, or removed from its tokens file); "
            "ask the operator for a token made with `tesserad tokens add`",
        )
    if identity.expires is not None and identity.expired(utc_now()):
        return (
            "401 Unauthorized",
            "token refused",
            f"the token {identity.name!r} expired at {format_time(identity.expires)}; ask the "
            "operator for a new one (`tesserad tokens add`)",
        )
    if identity.role < role:
        return (
            "403 Forbidden",
            "forbidden",
            f"/metrics needs the {role.label} role (security.metrics_role); the token "
            f"{identity.name!r} has the {identity.role.label} role",
        )
    return None, "", ""


def _metrics_only(app: WsgiApp) -> WsgiApp:
    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the metrics are at /metrics\n"]

    return route


class _Peer(tuple[Any, ...]):
    """A connection's client address, carrying the deadline its request must all arrive by
    (time.monotonic): the TLS handshake and the request's reading share it (_LimitedServer)."""

    deadline: float


class _LimitedServer(ThreadingWSGIServer):
    """A thread per connection, up to limits.http_max_connections; one more is closed unanswered.
    A connection whose request has not all arrived within limits.http_request_timeout_s of its
    start (its acceptance: a TLS handshake counts against it) is closed, however steadily it
    trickles in (it held its thread, and its place under the limit, for good); so is one whose
    answer goes unread that long at a time."""

    connections: ConnectionLimit
    request_timeout_s: float
    tls: DashboardTls | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, client_address = super().get_request()
        connection.settimeout(self.request_timeout_s)
        peer = _Peer(client_address)
        peer.deadline = time.monotonic() + self.request_timeout_s
        return connection, peer

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake, when the listener serves TLS, runs here, on the connection's own
        thread (within the request's deadline): on the accepting thread a client that stalls it
        would hold every other scrape back."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        left = client_address.deadline - time.monotonic()
        if left <= 0:
            return
        # The handshake as a whole waits at most `left` (ssl bounds it by the socket's timeout).
        request.settimeout(left)
        try:
            secured = self.tls.context.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError among them
            # A plaintext client, one that does not trust the certificate, or (mutual TLS) one
            # without a certificate the client CA signed: it gets no answer.
            return
        with secured:
            # The answer's writes each wait up to the timeout; the request's reads share the
            # deadline (_QuietHandler).
            secured.settimeout(self.request_timeout_s)
            super().finish_request(secured, client_address)
            # As socketserver does for a plain connection (the TLS one is closed here, before
            # shutdown_request): the FIN goes ahead of the close, so request bytes left unread
            # do not turn the close into a reset that can cut the answer short at the client.
            with contextlib.suppress(OSError):
                secured.shutdown(socket.SHUT_WR)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.admit():
            self.close_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or drops its connection mid-request (under TLS: ssl errors) is
        logged at debug, not printed to stderr with its traceback as socketserver prints it."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("metrics connection ended by its client", extra={"error": repr(error)})
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Called for each admitted connection once it is done (socketserver's contract)."""
        super().shutdown_request(request)
        self.connections.release()


class _Ipv6Server(_LimitedServer):
    address_family = socket.AF_INET6


class _DeadlineReader(io.RawIOBase):
    """A socket read until a deadline (time.monotonic): each read waits only for the time left,
    so a request trickled a byte at a time ends at the deadline as a silent one does. Reads past
    it raise TimeoutError; the socket's own timeout (for the answer's writes) is left as it was."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not all arrive in time")
        timeout = self._connection.gettimeout()
        self._connection.settimeout(left)
        try:
            return self._connection.recv_into(buffer)
        finally:
            self._connection.settimeout(timeout)


class _QuietServerHandler(ServerHandler):
    """wsgiref's, logging an answer's failure through the daemon's logger, not to stderr: at debug
    when the client went away mid-answer (a reset, under TLS an EOF), which any client can cause."""

    request_handler: WSGIRequestHandler

    def log_exception(
        self,
        exc_info: tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        if isinstance(exc_info[1], OSError):
            log.debug("metrics answer cut short by its client", extra={"error": repr(exc_info[1])})
            return
        log.error("metrics answer failed", exc_info=exc_info)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape, and no traceback for a client that went silent or away.
    The request is read against one deadline, limits.http_request_timeout_s from the
    connection's acceptance (wsgiref answers one request per connection)."""

    server: _LimitedServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader, replaced by one with the deadline
        peer = self.client_address
        deadline = (
            peer.deadline if isinstance(peer, _Peer) else time.monotonic() + self.server.request_timeout_s
        )
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        try:
            self._handle_one()
        except TimeoutError:
            # Past limits.http_request_timeout_s (_LimitedServer): the connection closes.
            return

    def _handle_one(self) -> None:
        """WSGIRequestHandler.handle, with _QuietServerHandler in place of wsgiref's."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # answered with the error already
            return
        handler = _QuietServerHandler(
            self.rfile,
            cast("IO[bytes]", self.wfile),
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self
        handler.run(cast("WsgiApp", self.server.get_app()))

    def log_message(self, format: str, *args: Any) -> None:
        return

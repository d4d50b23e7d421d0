"""An aiohttp application on a listener of its own (the dashboard's, the HTTP inference one),
over the daemon's TLS when it has one, answering only the hosts and origins of hosts.py.

Each listener holds at most limits.http_max_connections connections open. One more is closed as
it arrives, unanswered: aiohttp has no hook that answers a connection before reading a request
from it, so a 503 would hold the connection until its headers came (the very thing the limit
bounds), and a 503 written before the request is read can be lost to the reset its unread request
causes. Clients see a closed connection, as from a listener that is restarting, and retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpProcessingError, HttpVersion11
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tesserad.api.audit import Audit
from tesserad.api.oip_http_headers import request_id_of
from tesserad.config import Address, LimitsSettings, SecuritySettings
from tesserad.dashboard.access import Handler, dashboard_tls
from tesserad.dashboard.hosts import HostRule
from tesserad.errors import PermissionDenied
from tesserad.security.limits import ConnectionLimit
from tesserad.settings_checks import authentication_enabled

if TYPE_CHECKING:
    # tesserad.metrics imports the dashboard, which imports this module.
    from tesserad.metrics import CallRecorder, DaemonMetrics

# aiohttp's expect_handler: run for a request with an Expect header before its handler (and
# before any middleware); the answer it returns is the request's, its body never read.
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

# The route label of every request no route takes, whatever its path: a client choosing paths
# must not add series.
UNMATCHED_ROUTE = "unmatched"
# The method label of a request whose method is none of HTTP's own (aiohttp takes any token).
OTHER_METHOD = "other"
# What a 429 (a limit reached: calls, streams) says in Retry-After: seconds, as Triton's and most
# proxies' do; a slot frees as a call ends, so soon.
RETRY_AFTER: dict[str, str] = {hdrs.RETRY_AFTER: "1"}
# The status a request is counted with when it is not its answer's: an answer cut short after its
# headers went out, by a failure of the daemon's, is counted as that failure.
COUNTED_STATUS = web.RequestKey("counted_status", int)
# An answer sent before the request's body all arrived (a refusal, a 408) closes its connection: it
# is sent, then the rest of the body is read and dropped until it ends, or until its client has sent
# nothing for LINGER_IDLE_S, or for LINGER_MAX_S in all (nginx's lingering_timeout and
# lingering_time); the connection closes then. Closed with the body's bytes unread, the kernel
# resets it, which can destroy the answer before a client still uploading reads it (RFC 9112
# 9.6). aiohttp's own drain waits its lingering_time (10 s) for a client that sends nothing, even
# after response.force_close(), holding the connection and its place under
# limits.http_max_connections that long per refusal.
LINGER_IDLE_S = 1.0
LINGER_MAX_S = 10.0
# How long the drain above took, in seconds: aiohttp times an answer for its access log until the
# handler returns, the drain included; the log reports the answer's time without it.
DRAINED_S = web.RequestKey("drained_s", float)


class Refused(Exception):
    """A request answered with `status` and `message` in the listener's own error form;
    `close`: the answer closes the connection (the request's body is left unread); `headers`: the
    answer's own, besides."""

    def __init__(
        self, status: int, message: str, close: bool = False, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers


class _Counted(asyncio.Protocol):
    """One connection, counted against limits.http_max_connections while it is open: closed at
    once beyond it, else served by aiohttp's protocol (made only then)."""

    def __init__(
        self, serve: Callable[[], RequestHandler], limit: ConnectionLimit, tasks: set[asyncio.Task[None]]
    ) -> None:
        """`tasks`: where the task serving the connection is kept until it ends."""
        self._serve = serve
        self._limit = limit
        self._tasks = tasks
        self._served: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limit.admit():
            cast(asyncio.Transport, transport).abort()
            return
        served = self._served = self._serve()
        served.connection_made(transport)
        # aiohttp's own (private) handle on the connection's task, read defensively: were it gone
        # in another aiohttp, connections would still be served, only not ended at stop.
        task = getattr(served, "_task_handler", None)
        if isinstance(task, asyncio.Task):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._served is not None:
            self._limit.release()
            self._served.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        assert self._served is not None, "an aborted connection receives nothing"
        self._served.data_received(data)

    def eof_received(self) -> bool | None:
        assert self._served is not None, "an aborted connection receives nothing"
        return self._served.eof_received()

    def pause_writing(self) -> None:
        assert self._served is not None, "an aborted connection writes nothing"
        self._served.pause_writing()

    def resume_writing(self) -> None:
        assert self._served is not None, "an aborted connection writes nothing"
        self._served.resume_writing()


async def _continue(request: web.Request) -> None:
    """What aiohttp's default expect_handler (private to it) answers: 100 Continue to HTTP/1.1's
    100-continue, 417 to any other expectation; nothing under HTTP/1.0, which has no 100."""
    if request.version != HttpVersion11:
        return
    expectation = request.headers.get(hdrs.EXPECT, "")
    if expectation.lower() != "100-continue":
        raise web.HTTPExpectationFailed(
            text=f"unknown Expect: {expectation[:40]}; only 100-continue is served"
        )
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The 100 is no part of the answer's size (aiohttp resets it too).
    request.writer.output_size = 0


async def _answered_unread(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response` (which closes the connection, unless its headers went out already) now,
    then read what `request`'s client still sends of its body, as LINGER_IDLE_S says, and close
    the connection unless the body ended."""
    body = request.content
    answered: float | None = None
    try:
        async with asyncio.timeout(LINGER_MAX_S):
            await response.prepare(request)
            await response.write_eof()
            answered = time.perf_counter()
            while not body.at_eof():
                async with asyncio.timeout(LINGER_IDLE_S):
                    await body.readany()
    except (TimeoutError, ConnectionResetError, web.RequestPayloadError):
        # The client went quiet, took too long, left, or broke its body: nothing more to wait for.
        pass
    if answered is not None:
        request[DRAINED_S] = time.perf_counter() - answered
    if not body.at_eof():
        # aiohttp would wait its lingering_time for the rest.
        request.protocol.force_close()


def _undrained(logged: type[AbstractAccessLogger]) -> type[AbstractAccessLogger]:
    """`logged`, told each answer's time without the drain after it (DRAINED_S)."""

    class Undrained(AbstractAccessLogger):
        def __init__(self, logger: logging.Logger, log_format: str) -> None:
            super().__init__(logger, log_format)
            self._logged = logged(logger, log_format)

        @property
        def enabled(self) -> bool:
            return self._logged.enabled

        def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
            self._logged.log(request, response, time - request.get(DRAINED_S, 0.0))

    return Undrained


def _unreadable(error: web.RequestPayloadError) -> str:
    """What a request whose body cannot be read as its headers say is told."""
    cause = error.__cause__
    detail = cause.message if isinstance(cause, HttpProcessingError) else "malformed"
    return f"the request body could not be read ({detail}); send it whole, as its headers say"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's own Server header names its and Python's versions: of use to an attacker only.
    response.headers[hdrs.SERVER] = "tesserad"


class HttpListener:
    """Serves the application a subclass hands to `_serve` on `address`; `port` is the bound
    one (for port 0). The application puts `_guard` first after its error middleware, which
    answers the guard's PermissionDenied as 403, a Refused with its status, and aiohttp's 404 and
    405 (HTTPNotFound, HTTPMethodNotAllowed, keeping its Allow header) in the listener's own error
    form. Every request answered is counted in `metrics` (tessera_http_requests_total and
    tessera_http_request_duration_seconds) by its route's template, method and status."""

    def __init__(
        self,
        address: Address,
        security: SecuritySettings,
        limits: LimitsSettings,
        name: str,
        metrics: DaemonMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        """`name`: the listener's in the log and the metrics; `audit`: where each 401 and 403
        answered is logged (rate-limited)."""
        self._name = name
        self._metrics = metrics
        self._audit = audit
        # (route label, method label) -> its recorder: bounded by the routes and HTTP's methods.
        self._recorders: dict[tuple[str, str], CallRecorder] = {}
        self._address = address
        self._request_timeout_s = limits.http_request_timeout_s
        self.connections = ConnectionLimit(limits.http_max_connections, name)
        self._tls = dashboard_tls(security)
        self._hosts = HostRule(
            security.http_allowed_hosts,
            checked=address.is_loopback or not authentication_enabled(security),
        )
        self._runner: web.AppRunner | None = None
        self._unrouted_resource: web.AbstractResource | None = None
        self._server: asyncio.Server | None = None
        self._connection_tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a request for a host this listener does not answer, or a change from another site."""
        self._check_host(request)
        return await handler(request)

    def _check_host(self, request: web.Request) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        problem = self._hosts.refusal(
            request.method, request.headers.get(hdrs.HOST), None if self._trusted_origin(origin) else origin
        )
        if problem is not None:
            raise PermissionDenied(problem)

    def _trusted_origin(self, origin: str | None) -> bool:
        """Whether pages at `origin` may send changes (POST) here besides the hosts' own."""
        return False

    @web.middleware
    async def _counted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record the request's answer (outermost: the error middleware's answer is the one sent).
        A request whose client left before its answer was made has none, and is not counted."""
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._record(request, exc.status, start)
            raise
        except Exception:
            # aiohttp answers it 500.
            self._record(request, 500, start)
            raise
        self._record(request, request.get(COUNTED_STATUS, response.status), start)
        # More of the body is still to come (a body all arrived, read or not, is aiohttp's to
        # drop at once): an answer that keeps the connection would have aiohttp wait for it.
        if not request.content.is_eof():
            if not response.prepared:
                response.force_close()
            await _answered_unread(request, response)
        return response

    def _record(self, request: web.Request, status: int, start: float) -> None:
        """Count the answer (every answer passes here: the middlewares' and a refused 100
        Continue's), and log a refusal of the caller's credentials."""
        if self._audit is not None and status in (401, 403) and not self._asks_to_log_in(request, status):
            self._refused(self._audit, request, status)
        if self._metrics is None:
            return
        resource = request.match_info.route.resource
        route = (
            UNMATCHED_ROUTE if resource is None or resource is self._unrouted_resource else resource.canonical
        )
        method = request.method if request.method in hdrs.METH_ALL else OTHER_METHOD
        recorder = self._recorders.get((route, method))
        if recorder is None:
            recorder = self._recorders[(route, method)] = self._metrics.http_recorder(
                self._name, route, method
            )
        recorder.record(str(status), time.perf_counter() - start)

    def _asks_to_log_in(self, request: web.Request, status: int) -> bool:
        """Whether the answer `status` to `request` only asks a caller who presented nothing to
        log in, which is no refusal to log."""
        return False

    def _refused(self, audit: Audit, request: web.Request, status: int) -> None:
        if status == 403:
            reason = "forbidden"
        elif hdrs.AUTHORIZATION in request.headers:
            reason = "token refused"
        else:
            reason = "no token"
        audit.refused(
            f"{request.method} {request.path[:200]}",
            None,
            request.remote or "",
            str(status),
            reason,
            listener=self._name,
            request_id=request_id_of(request.headers),
        )

    def _expecting(self, refusal: Callable[[web.Request], web.StreamResponse | None]) -> ExpectHandler:
        """A route's expect_handler: a request with `Expect: 100-continue` that `refusal` refuses
        (it runs the checks that need no body: host, token, Content-Length) gets that answer instead
        of 100 Continue, closing the connection, so that its client never sends the body (aiohttp's
        own handler sends 100 Continue at once, and a refused client uploaded it all)."""

        async def expect(request: web.Request) -> web.StreamResponse | None:
            start = time.perf_counter()
            refused = refusal(request)
            if refused is not None:
                self._record(request, refused.status, start)
                # The body may follow anyway (RFC 9110 lets a client send it): it is never read.
                refused.force_close()
                await _answered_unread(request, refused)
                return refused
            try:
                await _continue(request)
            except web.HTTPException as exc:
                # An expectation other than 100-continue: answered 417, by aiohttp, past the middlewares.
                self._record(request, exc.status, start)
                raise
            return None

        return expect

    def _serve(self, app: web.Application, access_log: type[AbstractAccessLogger] | None = None) -> None:
        """Serve `app`, its routes all added. Request bodies reach it as they came (aiohttp's own
        decompression is off): the application decompresses what it takes and refuses the rest.
        `access_log`: what writes a line per answer (to tesserad.<listener>.access), else none."""
        app.middlewares.insert(0, self._counted)
        app.on_response_prepare.append(_server_header)
        # Added last, so the router reaches it only for what no other route matches: the 404 or
        # 405 is then answered by the application, in place of 100 Continue too (aiohttp answers
        # its own after one, so a client refused uploaded its body first).
        unrouted = app.router.add_route(
            hdrs.METH_ANY, "/{unrouted:.*}", self._unrouted, expect_handler=self._answer_at_once
        )
        self._unrouted_resource = unrouted.resource
        if self._metrics is not None:
            self._metrics.expect_http(
                self._name,
                [
                    (route.resource.canonical, route.method)
                    for route in app.router.routes()
                    if route.resource is not None and route.method in hdrs.METH_ALL
                ],
            )
        # aiohttp closes a connection still waiting for a request's headers this long after the
        # connection's start or its previous answer (its own default is an hour: a client sending
        # its headers a byte at a time held a connection that long).
        self._runner = web.AppRunner(
            app,
            access_log=None if access_log is None else logging.getLogger(f"tesserad.{self._name}.access"),
            access_log_class=_undrained(access_log or AccessLogger),
            shutdown_timeout=1.0,
            keepalive_timeout=self._request_timeout_s,
            auto_decompress=False,
        )

    async def _unrouted(self, request: web.Request) -> web.StreamResponse:
        """What a request no route takes is answered with: 405 (naming the methods served) when
        its path is served for other methods, else 404."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not self._unrouted_resource:
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    async def _answer_at_once(self, request: web.Request) -> web.StreamResponse:
        """The expect_handler of a request no route takes: its answer (the middlewares' checks
        first, as without Expect), closing the connection, never 100 Continue (it reads no body)."""
        handler: Handler = self._unrouted
        for middleware in reversed(request.app.middlewares):
            handler = partial(middleware, handler=handler)
        response = await handler(request)
        # Else `_counted` sent it already (its body still to come, or an error middleware closed it).
        if response.keep_alive is not False:
            response.force_close()
            await _answered_unread(request, response)
        return response

    @asynccontextmanager
    async def _receiving_body(self, request: web.Request) -> AsyncIterator[None]:
        """Around the read of `request`'s body: 408 (closing the connection) when it has not all
        arrived within limits.http_request_timeout_s (a client that sends it slowly, or less than
        its Content-Length, would otherwise hold its connection, and any slot it took, for good);
        400 (closing it too) when it cannot be read as its headers say."""
        try:
            async with asyncio.timeout(self._request_timeout_s):
                yield
        except web.RequestPayloadError as exc:
            # The client's to fix, not the daemon's; and where its body ends is lost with it.
            raise Refused(400, _unreadable(exc), close=True) from None
        except TimeoutError:
            raise Refused(
                408,
                f"the request body did not all arrive within limits.http_request_timeout_s = "
                f"{self._request_timeout_s:g} s; send it at once, and no fewer bytes than its "
                "Content-Length says",
                close=True,
            ) from None
        except ConnectionResetError:
            # The client left: nobody reads this answer, and its leaving is no error of the daemon's.
            raise Refused(400, "the connection closed before the request body arrived") from None

    def reload_tls(self) -> None:
        """Read the TLS files again for new connections (the gRPC listener has checked them)."""
        if self._tls is not None:
            self._tls.reload()

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    async def start(self) -> None:
        """Bind and serve; OSError (with errno) when the address cannot be bound."""
        assert self._runner is not None, "the subclass hands its application to _serve"
        await self._runner.setup()
        serve = self._runner.server
        assert serve is not None, "set up above"
        limit, tasks = self.connections, self._connection_tasks
        context = None if self._tls is None else self._tls.context
        # Served here rather than by aiohttp's TCPSite, which hands each connection to aiohttp at
        # once. A TLS handshake gets the time a request's headers get (asyncio's default is 60 s);
        # a connection counts from its handshake's end, when it reaches the protocol.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Counted(serve, limit, tasks),
            self._address.host,
            self._address.port,
            ssl=context,
            ssl_handshake_timeout=None if context is None else self._request_timeout_s,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        # aiohttp's cleanup ends the connections still open; one its client closed while aiohttp
        # read the rest of an unanswered body (up to 10 s after the answer) is out of its reach,
        # and its task would outlive the loop.
        for task in self._connection_tasks:
            task.cancel()
        await asyncio.gather(*self._connection_tasks, return_exceptions=True)

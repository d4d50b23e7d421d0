"""An aiohttp application on a listener of its own (the dashboard's, the HTTP inference one),
over the daemon's TLS when it has one, answering only the hosts and origins of hosts.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import hdrs, web

from tesserad.api.auth import authentication_enabled
from tesserad.config import Address, SecuritySettings
from tesserad.dashboard.access import Handler, dashboard_tls
from tesserad.dashboard.hosts import HostRule
from tesserad.errors import PermissionDenied


class Refused(Exception):
    """A request answered with `status` and `message` in the listener's own error form;
    `close`: the answer closes the connection (the request's body is left unread)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class HttpListener:
    """Serves the application a subclass hands to `_serve` on `address`; `port` is the bound
    one (for port 0). The application puts `_guard` first after its error middleware, which
    answers the guard's PermissionDenied as 403, and a Refused with its status, in the listener's
    own error form."""

    def __init__(self, address: Address, security: SecuritySettings, request_timeout_s: float) -> None:
        """`request_timeout_s`: limits.http_request_timeout_s."""
        self._address = address
        self._request_timeout_s = request_timeout_s
        self._tls = dashboard_tls(security)
        self._hosts = HostRule(
            security.http_allowed_hosts,
            checked=address.is_loopback or not authentication_enabled(security),
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a request for a host this listener does not answer, or a change from another site."""
        problem = self._hosts.refusal(
            request.method, request.headers.get(hdrs.HOST), request.headers.get(hdrs.ORIGIN)
        )
        if problem is not None:
            raise PermissionDenied(problem)
        return await handler(request)

    def _serve(self, app: web.Application) -> None:
        # aiohttp closes a connection still waiting for a request's headers this long after the
        # connection's start or its previous answer (its own default is an hour: a client sending
        # its headers a byte at a time held a connection that long).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=self._request_timeout_s
        )

    @asynccontextmanager
    async def _receiving_body(self) -> AsyncIterator[None]:
        """Around the read of a request's body: 408 (closing the connection) when it has not all
        arrived within limits.http_request_timeout_s (a client that sends it slowly, or less than
        its Content-Length, would otherwise hold its connection, and any slot it took, for good)."""
        try:
            async with asyncio.timeout(self._request_timeout_s):
                yield
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
        context = None if self._tls is None else self._tls.context
        site = web.TCPSite(self._runner, self._address.host, self._address.port, ssl_context=context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

"""Who may read the dashboard: the daemon's own tokens, as on gRPC.

Without a tokens file every caller may read (the loopback rule in server.py keeps such a
daemon off other networks unless the operator said --insecure). With one, every page and
API call needs a token whose role reaches `DASHBOARD_ROLE`, sent as `Authorization: Bearer
<token>` or as the session cookie the login form sets and the logout ends; failed logins on
the form are throttled per client address (header tokens are not: see `_admission`). The login form, the logout and the static assets (code, no data)
stay open. A request in progress (an event stream above all) whose token a reload of
the tokens file revokes, or whose token expires, is cancelled (`end_revoked`, an expiry timer):
its connection closes, and the page's reconnect meets the login form.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import hdrs, web

from tesserad.config import SecuritySettings
from tesserad.errors import PermissionDenied
from tesserad.security import Role, TokenTable
from tesserad.security.certificates import CertificateWindowError, check_validity
from tesserad.security.limits import LoginThrottle
from tesserad.security.tokens import TokenFile, format_time, token_digest, utc_now

log = logging.getLogger(__name__)

# Reading is enough to open the dashboard; its few changes (restores) check their own role.
DASHBOARD_ROLE = Role.READER
# Where an admitted request's role is kept (aiohttp's request mapping); without a tokens file
# every caller may do everything, as on gRPC.
ROLE_KEY = web.RequestKey("tessera_role", Role)
# Whether an admitted request came with the session cookie (not a token in a header): it may log out.
SESSION_KEY = web.RequestKey("tessera_session", bool)
# The cookie names a session the login form opened, never the token itself: a browser sends a
# cookie to every port of its host name, so another service there (a notebook on a shared GPU box)
# would have had a token good on gRPC for all its role may do. A session ends by itself after
# SESSION_SECONDS (a browser left logged in stops being so), when its token leaves the tokens
# file (at once, as on gRPC), when the daemon restarts, or when newer logins push it out.
SESSION_COOKIE = "tessera_session"
SESSION_SECONDS = 12 * 3600
# Only a token holder can open one, but each login does: beyond this many of one token, that
# token's oldest give way, so one holder's scripted logins never end another holder's sessions.
MAX_SESSIONS_PER_TOKEN = 100
# Beyond this many in all (many tokens logging in), the oldest give way, whoever holds them.
MAX_SESSIONS = 10_000
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
# A change (a restore, a logout) must carry this header: a page on another site cannot send it
# without a CORS preflight, which this server never answers, so such a page cannot make the
# browser restore or log out.
CHANGE_HEADER = "X-Tessera-Dashboard"
# Failed logins on the form one client address may make in a row, then one per LOGIN_RETRY_S
# (429 between). At most MAX_THROTTLED_ADDRESSES are remembered.
LOGIN_FAILURES_AT_ONCE = 5
LOGIN_RETRY_S = 10.0
MAX_THROTTLED_ADDRESSES = 10_000
# Every 401 carries it (RFC 9110 says it must; HTTP clients and monitors read the scheme there).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tesserad"'}
_OPEN_PREFIXES = ("/static/",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardTls:
    """The gRPC listener's TLS (and client-certificate rule) for the HTTP listener.

    The files were checked when the gRPC credentials were built, so a bad one never gets here at
    start. `reload` reads them again for new handshakes: the listener's context hands each
    handshake the newest one from its SNI callback (called with or without a name sent).
    """

    def __init__(self, security: SecuritySettings, listener: str = "dashboard") -> None:
        """`listener`: the listener serving it, as a failed reload's log line names it."""
        self._security = security
        self._listener = listener
        self.context = _tls_context(security)
        self._current = self.context
        self.context.sni_callback = self._choose

    def reload(self) -> None:
        """Use the TLS files as they are now; files that cannot be used keep the old ones."""
        try:
            self._current = _tls_context(self._security)
        except (OSError, ssl.SSLError, CertificateWindowError) as exc:
            log.error(
                f"TLS files not applied to the {self._listener}: its new connections keep the "
                "certificate in use",
                extra={"error": str(exc)},
            )

    def _choose(self, connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        connection.context = self._current


def dashboard_tls(security: SecuritySettings, listener: str = "dashboard") -> DashboardTls | None:
    """The TLS of the HTTP listener `listener` (the dashboard, or the metrics listener), or None
    when the daemon has none."""
    if security.tls_cert_file is None or security.tls_key_file is None:
        return None
    return DashboardTls(security, listener)


def _tls_context(security: SecuritySettings) -> ssl.SSLContext:
    assert security.tls_cert_file is not None and security.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(security.tls_cert_file, security.tls_key_file)
    # The files may have been replaced since the gRPC listener checked them; the warning about a
    # certificate ending soon is the gRPC listener's to log.
    check_validity("security.tls_cert_file", security.tls_cert_file, security.tls_cert_file.read_bytes())
    if security.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=security.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Access:
    """The aiohttp middleware that admits a request, and the login form's handlers."""

    def __init__(
        self,
        tokens: TokenFile | None,
        secure_cookie: bool,
        receiving_body: Callable[[web.Request], AbstractAsyncContextManager[None]],
    ) -> None:
        """`receiving_body`: the listener's deadline on a request's body, and its 400 for one that
        cannot be read, for the login form."""
        self._tokens = tokens
        self._secure_cookie = secure_cookie
        self._receiving_body = receiving_body
        # Admitted requests in progress (each runs in its own task) -> (their token's SHA-256, their
        # session, None for a token in a header): a logout ends its session's.
        self._in_progress: dict[asyncio.Task[Any], tuple[bytes, str | None]] = {}
        # Those whose token expires -> the timer that ends them then (an event stream outlives it).
        self._expiry_timers: dict[asyncio.Task[Any], asyncio.TimerHandle] = {}
        # Session id (the cookie) -> (its token's SHA-256, when it ends on the monotonic clock),
        # oldest first.
        self._sessions: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._throttle = LoginThrottle(LOGIN_FAILURES_AT_ONCE, LOGIN_RETRY_S, MAX_THROTTLED_ADDRESSES)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._tokens is None or _open(request):
            if self._tokens is None:
                request[ROLE_KEY] = Role.ADMIN
            return await handler(request)
        refused, digest, role = self._admission(request)
        if refused is not None:
            return refused
        assert digest is not None and role is not None, "_admission names both when it admits"
        request[ROLE_KEY] = role
        in_header = hdrs.AUTHORIZATION in request.headers
        request[SESSION_KEY] = not in_header
        task = asyncio.current_task()
        assert task is not None, "aiohttp runs each request in a task"
        self._in_progress[task] = (digest, None if in_header else request.cookies.get(SESSION_COOKIE))
        self._watch_expiry(task, self._tokens.table)
        try:
            return await handler(request)
        finally:
            self._in_progress.pop(task, None)
            timer = self._expiry_timers.pop(task, None)
            if timer is not None:
                timer.cancel()

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 401 `middleware` answers `request` with, or the 429 for an address that has failed
        too often; None when it lets it through."""
        if request.method == hdrs.METH_POST and request.path == LOGIN_PATH:
            return self._throttled(request)
        if self._tokens is None or _open(request):
            return None
        return self._admission(request)[0]

    def _admission(self, request: web.Request) -> tuple[web.Response | None, bytes | None, Role | None]:
        """(None, the token's SHA-256, its role) when `request` carries a token good enough to
        read; else (its answer, None, None). Header tokens are not throttled, as gRPC's are not:
        those `tesserad tokens add` makes are 256-bit secrets no script guesses (one made by hand
        must be at least 24 characters, and should be as random), and counting them
        let one client with a revoked token (a cron job behind the same NAT) lock every script out."""
        problem, digest, role = self._problem(request)
        if problem is None:
            return None, digest, role
        return _unauthenticated(request, problem), None, None

    def end_revoked(self, table: TokenTable) -> int:
        """Cancel each request in progress whose token `table` no longer lets read, and end the
        sessions of such tokens; how many requests."""
        ended = 0
        now = utc_now()
        for session, (digest, _) in list(self._sessions.items()):
            identity = table.identify_digest(digest)
            if identity is None or identity.role < DASHBOARD_ROLE:
                del self._sessions[session]
        for task, (digest, _) in list(self._in_progress.items()):
            identity = table.identify_digest(digest)
            if identity is None or identity.expired(now) or identity.role < DASHBOARD_ROLE:
                del self._in_progress[task]
                task.cancel()
                ended += 1
            else:
                # The reload may have moved the expiry.
                self._watch_expiry(task, table)
        return ended

    def _watch_expiry(self, task: asyncio.Task[Any], table: TokenTable) -> None:
        """Arm the timer that cancels `task` when its token expires under `table` or its session
        ends (none when neither ever does), replacing the one it had."""
        timer = self._expiry_timers.pop(task, None)
        if timer is not None:
            timer.cancel()
        digest, session = self._in_progress[task]
        delays = []
        identity = table.identify_digest(digest)
        if identity is not None and identity.expires is not None:
            delays.append((identity.expires - utc_now()).total_seconds())
        if session is not None and session in self._sessions:
            delays.append(self._sessions[session][1] - time.monotonic())
        if delays:
            delay = max(0.0, min(delays))
            self._expiry_timers[task] = asyncio.get_running_loop().call_later(delay, self._on_expiry, task)

    def _on_expiry(self, task: asyncio.Task[Any]) -> None:
        self._expiry_timers.pop(task, None)
        if self._tokens is None or task not in self._in_progress:
            return
        digest, session = self._in_progress[task]
        if session is not None and not self._session_open(session):
            log.info("dashboard session ended: its request ended")
        else:
            identity = self._tokens.table.identify_digest(digest)
            if identity is not None and not identity.expired(utc_now()):
                # The loop's clock ran ahead of the wall clock.
                self._watch_expiry(task, self._tokens.table)
                return
            log.info("token expired: its dashboard request ended")
        del self._in_progress[task]
        task.cancel()

    def _session_open(self, session: str) -> bool:
        held = self._sessions.get(session)
        return held is not None and held[1] > time.monotonic()

    def _end_requests_of(self, sessions: set[str]) -> None:
        """Cancel the requests in progress (event streams in other tabs) of `sessions`, which
        have ended: a session that ends takes its streams with it, whatever ended it."""
        if not sessions:
            return
        for task, (_, held) in list(self._in_progress.items()):
            if held in sessions:
                del self._in_progress[task]
                task.cancel()

    def _problem(self, request: web.Request) -> tuple[str | None, bytes | None, Role | None]:
        """(None, the token's SHA-256, its role) when the request carries a token good enough
        to read; else (what is wrong, None, None)."""
        assert self._tokens is not None
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return "the Authorization header must be 'Bearer <token>'", None, None
            digest = token_digest(token.strip())
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            if not cookie:
                return (
                    "this tesserad needs a token: log in with one made by `tesserad tokens add`",
                    None,
                    None,
                )
            if not self._session_open(cookie):
                self._sessions.pop(cookie, None)
                return (
                    f"the dashboard session has ended (a session ends after {SESSION_SECONDS // 3600} h, "
                    "when its token leaves the tokens file, when the daemon restarts, or when "
                    f"{MAX_SESSIONS_PER_TOKEN} newer logins with its token, or {MAX_SESSIONS:,} in all, "
                    "push it out); log in again",
                    None,
                    None,
                )
            digest = self._sessions[cookie][0]
        identity = self._tokens.table.identify_digest(digest)
        if identity is None:
            return (
                (
                    "the token is not valid for this tesserad (mistyped, or removed from its tokens file); "
                    "ask the operator for a token made with `tesserad tokens add`"
                ),
                None,
                None,
            )
        if identity.expires is not None and identity.expired(utc_now()):
            return f"the token expired at {format_time(identity.expires)}; log in with a new one", None, None
        if identity.role < DASHBOARD_ROLE:
            return f"the dashboard needs the {DASHBOARD_ROLE.label} role", None, None
        return None, digest, identity.role

    async def show_login(self, request: web.Request) -> web.StreamResponse:
        return login_page("")

    async def log_in(self, request: web.Request) -> web.StreamResponse:
        # Before the token is looked at: were a good one let through, the answer would tell
        # which of a script's guesses was good. Checked before the body too, to spare reading it.
        throttled = self._throttled(request)
        if throttled is not None:
            return throttled
        async with self._receiving_body(request):
            form = await request.post()
        # Again, with no await between this check and the count below: logins whose bodies
        # arrive together all passed the first check, though only one try may be left.
        throttled = self._throttled(request)
        if throttled is not None:
            return throttled
        token = str(form.get("token", "")).strip()
        then = _local_path(str(form.get("then", "/")))
        if self._tokens is None:
            raise web.HTTPSeeOther(then)
        identity = self._tokens.table.identify(token) if token else None
        if identity is None or identity.expired(utc_now()) or identity.role < DASHBOARD_ROLE:
            self._throttle.failed(request.remote)
            return login_page("that token is not valid for this tesserad", status=401, then=then)
        response = web.HTTPSeeOther(then)
        response.set_cookie(
            SESSION_COOKIE,
            self._open_session(token_digest(token)),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            secure=self._secure_cookie or _behind_https_proxy(request),
            path="/",
        )
        raise response

    def _throttled(self, request: web.Request) -> web.Response | None:
        """The login form's 429 when `request`'s address has failed too often; else None."""
        wait_s = self._throttle.wait_s(request.remote)
        if not wait_s:
            return None
        retry_after = str(max(1, math.ceil(wait_s)))
        problem = (
            f"too many failed logins from {request.remote}: try again in {retry_after} s (an address "
            f"may fail {LOGIN_FAILURES_AT_ONCE} times in a row, then once every {LOGIN_RETRY_S:g} s; a "
            "good login does not clear the count)"
        )
        response = login_page(problem, status=429)
        response.headers[hdrs.RETRY_AFTER] = retry_after
        return response

    async def log_out(self, request: web.Request) -> web.StreamResponse:
        """End the session the cookie names (if any is still open), and its requests in progress
        (other tabs' event streams), and clear the cookie."""
        if request.headers.get(CHANGE_HEADER) != "1":
            raise PermissionDenied(
                f"a logout must carry the header {CHANGE_HEADER}: 1, as the dashboard's pages send"
            )
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            self._sessions.pop(session, None)
            self._end_requests_of({session})
        response = web.HTTPSeeOther(LOGIN_PATH)
        response.del_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._secure_cookie or _behind_https_proxy(request),
        )
        raise response

    def _open_session(self, digest: bytes) -> str:
        """A new session for the token whose SHA-256 is `digest`; its id, for the cookie. The
        sessions it pushes out end with their requests in progress."""
        now = time.monotonic()
        ended: set[str] = set()
        # Every session lasts as long, so the oldest first are also the first to end.
        while self._sessions and next(iter(self._sessions.values()))[1] <= now:
            ended.add(self._sessions.popitem(last=False)[0])
        own = [session for session, (holder, _) in self._sessions.items() if holder == digest]
        for session in own[: max(0, len(own) + 1 - MAX_SESSIONS_PER_TOKEN)]:
            del self._sessions[session]
            ended.add(session)
        while len(self._sessions) >= MAX_SESSIONS:
            ended.add(self._sessions.popitem(last=False)[0])
        self._end_requests_of(ended)
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (digest, now + SESSION_SECONDS)
        return session


def _behind_https_proxy(request: web.Request) -> bool:
    """Whether a proxy in front of the listener (an ingress that terminates TLS) says the browser
    reached it over HTTPS: the session cookie, good for all its token's role may do there, must
    then be Secure, or the browser sends it in clear to any http:// address of the same name. A
    client that sends the header itself without a proxy only has its browser drop the cookie: it
    can never make the cookie less safe, so the header needs no trusted proxy."""
    protos = [item.get("proto", "") for item in request.forwarded]
    protos += request.headers.get(hdrs.X_FORWARDED_PROTO, "").split(",")
    return any(proto.strip().lower() == "https" for proto in protos)


def _open(request: web.Request) -> bool:
    """Whether `request` needs no token: the login form, a logout (a session already ended may
    still clear its cookie), or a static asset."""
    return request.path in (LOGIN_PATH, LOGOUT_PATH) or request.path.startswith(_OPEN_PREFIXES)


def _unauthenticated(request: web.Request, problem: str) -> web.Response:
    if request.path.startswith("/api/"):
        return web.json_response({"error": problem}, status=401, headers=CHALLENGE)
    return login_page(problem, status=401, then=request.path_qs)


def _local_path(path: str) -> str:
    """`path` when it is a path on this server, else "/": a login never sends anyone elsewhere.

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so a path
    holding any of them or another control character ("/<tab>/host") could name another host.
    """
    if not path.startswith("/") or path.startswith("//"):
        return "/"
    if any(char == "\\" or char.isspace() or not char.isprintable() for char in path):
        return "/"
    return path


def login_page(problem: str, status: int = 200, then: str = "/") -> web.Response:
    """The login form; after a good token it goes on to `then` (the page that asked for it)."""
    message = f'<p class="problem">{html.escape(problem)}</p>' if problem else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tessera: log in</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body><main class="login"><h1>tessera</h1>{message}
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="then" value="{html.escape(_local_path(then))}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus></label>
<button type="submit">Log in</button></form>
<p class="hint">A token of any role (reader is enough), made with <code>tesserad tokens add</code>.</p>
</main></body></html>
"""
    headers = CHALLENGE if status == 401 else None
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)

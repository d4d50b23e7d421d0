"""The dashboard's HTTP listener: aiohttp on the daemon's own event loop.

Pages are static HTML and JavaScript shipped in this package (no CDN: the daemon may have no
internet); they read the JSON API in api.py. Domain errors map to HTTP statuses in one table;
anything unexpected is a 500 with an error id that is also logged, never a traceback.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from tesserad import errors
from tesserad.api.audit import Audit
from tesserad.config import Address, LimitsSettings, SecuritySettings, format_size
from tesserad.dashboard.access import LOGIN_PATH, LOGOUT_PATH, SESSION_COOKIE, Access, Handler
from tesserad.dashboard.api import PREFIX, DashboardApi, Services, json_response
from tesserad.dashboard.listener import RETRY_AFTER, HttpListener, Refused
from tesserad.security.tokens import TokenFile

if TYPE_CHECKING:
    # tesserad.metrics imports the dashboard.
    from tesserad.metrics import DaemonMetrics

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("tesserad.dashboard") / "static"))
# The largest request body the dashboard reads (its login form's token is a few hundred bytes):
# aiohttp's default, said here for the refusal before the body is read.
MAX_BODY_BYTES = 1024 * 1024
# Browsers never compress what they send, and the dashboard's bodies are small forms: a body in
# any content coding is refused (415, as the HTTP inference listener and Triton refuse one they
# do not take).
_ACCEPT_ENCODING: dict[str, str] = {hdrs.ACCEPT_ENCODING: "identity"}
PAGES = ("jobs", "runs", "sweeps", "models", "serving", "system")

# A subclass not listed (NotLoaded, StillLoading) answers as its parent (see http_status_for).
HTTP_STATUS_BY_ERROR: dict[type[errors.TesseraError], int] = {
    errors.InvalidArgument: 400,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,
    errors.OutOfRange: 400,
    errors.ResourceExhausted: 429,
    # No room on the data directory's disk is no rate limit to retry after (429's meaning):
    # WebDAV's 507 Insufficient Storage (RFC 4918) says it; Triton and KServe define no status for it.
    errors.NoSpace: 507,
    errors.DataLoss: 500,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.DeadlineExceeded: 504,
    errors.Aborted: 409,
    errors.Cancelled: 499,
    errors.Unavailable: 503,
    errors.Unimplemented: 501,
    errors.Internal: 500,
}


def http_status_for(error: errors.TesseraError) -> int:
    """The status of the nearest class in the table (subclasses inherit their parent's)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS_BY_ERROR:
            return HTTP_STATUS_BY_ERROR[cls]
    return 500


# The domain's NotFound fixes name the gRPC call that lists what was not found; an HTTP caller
# is told the route that does (as open_inference.in_oip_words tells a Triton client). A route's
# {name} is the request's own path parameter; the dashboard's API only reads, so the way to
# create a model is not its to say. ListRuns names the CLI's --view for runs outside the view
# asked for; GET /runs takes it as its `view` query parameter.
_HTTP_FIXES: tuple[errors.Rewording, ...] = (
    ("ListJobs lists them", "GET {api}/jobs lists them"),
    ("ListRuns lists them", "GET {api}/runs lists them"),
    ("ListExperiments lists them", "GET {api}/experiments lists them"),
    ("ListSweeps lists them", "GET {api}/sweeps lists them"),
    ("create it with CreateModel", "list them with GET {api}/models"),
    ("ListVersions lists them", "GET {api}/models/{model} lists them"),
    ("list them with ListRunArtifacts", "list them with GET {api}/runs/{run_id}/artifacts"),
    (re.compile(r"runs ls --view (active|deleted)"), r"view=\1 in the query"),
)


class _PathParameters(dict[str, str]):
    """A request's path parameters, URL-quoted; one the route lacks reads as its name in capitals."""

    def __missing__(self, name: str) -> str:
        return name.upper()


def in_http_words(error: errors.NotFound, request: web.Request) -> str:
    """`error`'s message with the gRPC call its fix names put as the HTTP route that does the
    same, and the CLI's --view as the query parameter (errors.reworded_fix: only the fix that
    ends the message)."""
    parameters = _PathParameters(
        {name: urllib.parse.quote(value, safe="") for name, value in request.match_info.items()}, api=PREFIX
    )
    return errors.reworded_fix(
        error.message,
        ((grpc_words, http_words.format_map(parameters)) for grpc_words, http_words in _HTTP_FIXES),
    )


def error_page(status: int, message: str) -> web.Response:
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tessera: {status}</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body><main class="error"><h1>{status}</h1><p class="problem">{html.escape(message)}</p>
<p><a href="/jobs">Back to the jobs</a></p></main></body></html>
"""
    return web.Response(text=body, status=status, content_type="text/html")


def _failure(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        response = json_response({"error": message}, status=status)
    else:
        response = error_page(status, message)
    if status == 429:
        response.headers.update(RETRY_AFTER)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        return _refused(request, exc)
    except errors.NotFound as exc:
        return _failure(request, 404, in_http_words(exc, request))
    except errors.TesseraError as exc:
        message = errors.answered_message(log, f"{request.method} {request.path[:200]}", exc)
        return _failure(request, http_status_for(exc), message)
    except web.HTTPRequestEntityTooLarge:
        # A body without a Content-Length, read only up to the limit: the rest is never read.
        response = _failure(request, 413, _too_large(None))
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status == 404:
            return _failure(request, 404, f"nothing at {request.path[:200]}")
        if exc.status == 405:
            allowed = exc.headers[hdrs.ALLOW]
            response = _failure(
                request,
                405,
                f"{request.method} is not served at {request.path[:200]}; use {_either(allowed)}",
            )
            response.headers[hdrs.ALLOW] = allowed
            return response
        raise
    except Exception as exc:
        return _failure(request, 500, errors.logged_internal(log, "a dashboard request", exc).message)


def _refused(request: web.Request, refusal: Refused) -> web.Response:
    response = _failure(request, refusal.status, refusal.message)
    response.headers.update(refusal.headers or {})
    if refusal.close:
        response.force_close()
    return response


def _too_large(size: int | None) -> str:
    """What a body over MAX_BODY_BYTES is told; `size` when its Content-Length says it."""
    over = "over" if size is None else f"{format_size(size)}, over"
    return (
        f"the request body is {over} {format_size(MAX_BODY_BYTES)}, the most the dashboard reads: it "
        "takes its login form, and no uploads"
    )


def _body_refusal(request: web.Request) -> Refused | None:
    """413 for a Content-Length over MAX_BODY_BYTES, 415 for a body in a content coding: refused
    before a byte of it is read, the connection then closed with the body unread."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return Refused(413, _too_large(length), close=True)
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if request.body_exists and coding not in ("", "identity"):
        return Refused(
            415,
            f"the request body is compressed with {coding[:40]} (its Content-Encoding header), which "
            "the dashboard does not take; send it uncompressed, without the header",
            close=True,
            headers=_ACCEPT_ENCODING,
        )
    return None


@web.middleware
async def _declared_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a body the dashboard would not read (`_body_refusal`), before reading it."""
    refusal = _body_refusal(request)
    if refusal is not None:
        raise refusal
    return await handler(request)


def _either(allow: str) -> str:
    """An Allow header's methods for a message: "GET,HEAD,POST" -> "GET or POST" (HEAD goes
    without saying beside GET)."""
    methods = [method.strip() for method in allow.split(",") if method.strip()]
    if "GET" in methods:
        methods = [method for method in methods if method != "HEAD"]
    return " or ".join(methods)


# No other site may show the dashboard in a frame: a page could lay its own content over a
# restore button and have it clicked (clickjacking) where no token is needed (loopback without a
# tokens file). The dashboard never frames its own pages either.
NOT_FRAMED = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


async def _not_framed(request: web.Request, response: web.StreamResponse) -> None:
    # An artifact's own policy (sandboxed) stays; X-Frame-Options keeps it out of frames too.
    for name, value in NOT_FRAMED.items():
        response.headers.setdefault(name, value)


class DashboardServer(HttpListener):
    """Serves the pages and /api/v1 on `address`; `port` is the bound one (for port 0)."""

    def __init__(
        self,
        services: Services,
        address: Address,
        security: SecuritySettings,
        limits: LimitsSettings,
        tokens: TokenFile | None,
        metrics: DaemonMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        """`tokens`: the daemon's own (None without a tokens file), so a reload applies here too;
        `metrics`: where its requests are counted; `audit`: where its 401s and 403s are logged."""
        self._services = services
        super().__init__(address, security, limits, "dashboard", metrics, audit)
        access = Access(tokens, secure_cookie=self._tls is not None, receiving_body=self._receiving_body)
        self.end_revoked = access.end_revoked
        self._shell = (STATIC_DIR / "page.html").read_text()
        self._access = access
        app = web.Application(
            middlewares=[_errors, self._guard, access.middleware, _declared_body],
            client_max_size=MAX_BODY_BYTES,
        )
        app.on_response_prepare.append(_not_framed)
        expect = self._expecting(self._refusal)
        app.add_routes(DashboardApi(services, limits.max_concurrent_streams).routes(expect))
        app.add_routes(
            [
                web.get("/", self._home, expect_handler=expect),
                web.get(LOGIN_PATH, access.show_login, expect_handler=expect),
                web.post(LOGIN_PATH, access.log_in, expect_handler=expect),
                web.post(LOGOUT_PATH, access.log_out, expect_handler=expect),
                *(web.get(f"/{page}", self._page, expect_handler=expect) for page in PAGES),
                web.get("/jobs/{job_id}", self._job_page, expect_handler=expect),
                web.get("/runs/{run_id}", self._run_page, expect_handler=expect),
                web.get("/sweeps/{sweep_id}", self._sweep_page, expect_handler=expect),
                web.get("/models/{model}", self._model_page, expect_handler=expect),
                web.static("/static", STATIC_DIR, expect_handler=expect),
            ]
        )
        self._serve(app)

    def _asks_to_log_in(self, request: web.Request, status: int) -> bool:
        # A browser's first visit: a page asking for the token, not a token refused.
        return (
            status == 401
            and request.method == "GET"
            and hdrs.AUTHORIZATION not in request.headers
            and SESSION_COOKIE not in request.cookies
        )

    def _refusal(self, request: web.Request) -> web.Response | None:
        """What the middlewares answer `request` with before its body is read (host, token or a
        throttled login, the body's declared size and coding); None when it may send its body."""
        try:
            self._check_host(request)
        except errors.PermissionDenied as exc:
            return _failure(request, 403, exc.message)
        refused = self._access.refusal(request)
        if refused is not None:
            return refused
        body_refusal = _body_refusal(request)
        return None if body_refusal is None else _refused(request, body_refusal)

    async def _home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/jobs")

    async def _page(self, request: web.Request) -> web.Response:
        # Each page shows what its API route answers, at the same path under the API's prefix:
        # the one a reader without JavaScript is pointed at.
        api_route = html.escape(PREFIX + request.rel_url.raw_path)
        return web.Response(text=self._shell.replace("{api_route}", api_route), content_type="text/html")

    async def _job_page(self, request: web.Request) -> web.Response:
        await asyncio.to_thread(self._services.jobs.get, request.match_info["job_id"])
        return await self._page(request)

    async def _run_page(self, request: web.Request) -> web.Response:
        await asyncio.to_thread(self._services.tracking.get_run, request.match_info["run_id"])
        return await self._page(request)

    async def _sweep_page(self, request: web.Request) -> web.Response:
        await asyncio.to_thread(self._services.sweeps.get, request.match_info["sweep_id"])
        return await self._page(request)

    async def _model_page(self, request: web.Request) -> web.Response:
        await asyncio.to_thread(self._services.registry.get_model, request.match_info["model"])
        return await self._page(request)

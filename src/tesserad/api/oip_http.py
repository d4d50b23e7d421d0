"""The Open Inference Protocol over HTTP/REST (KServe v2, as Triton's port 8000): aiohttp on
the daemon's own event loop, on its own listener (`serving.oip_http_listen`).

Thin, as the gRPC servicer (tesserad.api.oip) is: both call tesserad.serving.open_inference, and
metadata, config, statistics and the repository index are the gRPC messages written as JSON.
Access is the gRPC listener's: its TLS (and client-certificate rule), its tokens as `Authorization:
Bearer <token>`, the role its RPC of the same name needs (POST /v2/logging and POST
.../trace/setting: the role a LogSettings or TraceSetting request that changes a setting needs), and
a slot of limits.max_concurrent_calls (one count for both listeners). Errors are `{"error": "..."}`
with the HTTP status of the gRPC code's meaning and the gRPC message.

Revocation, as for gRPC's ModelInfer: each request is checked against the tokens as they are when
it arrives (a kept-alive connection carries no decision over), and an inference request whose
token a reload of the tokens file removes, or whose role it lowers below ModelInfer's, is answered
401 or 403 at the reload: while its body arrives, while it waits in the batcher's queue (it leaves
the queue, never run) or while its batch runs (the batch finishes, this answer is dropped). Other
requests already running complete: they are short, and a load or unload cut off half-way would
leave its change applied anyway. A token that expires while a request runs does not end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from tesserad import __version__, errors
from tesserad.api.audit import Audit
from tesserad.api.auth import ANONYMOUS, expired_message
from tesserad.api.oip import metadata_of, statistics_response
from tesserad.api.oip_config import model_config_of, serving_config_of
from tesserad.api.oip_http_headers import (
    COMPRESS_OFF_LOOP_SIZE,
    COMPRESS_THREADS,
    MIN_COMPRESSED_SIZE,
    PREFLIGHT_HEADERS,
    REQUEST_ID_HEADER,
    CorsRule,
    compressed,
    request_id_of,
    response_coding,
)
from tesserad.api.oip_json import (
    KIND_NAMES,
    declared_shapes,
    infer_request,
    infer_response,
    json_length,
    json_parameters,
    message_json,
    reads_shared_memory,
    settings_object,
)
from tesserad.api.oip_json_tensors import HEADER_LENGTH, parse_document
from tesserad.api.oip_parsers import JsonParsers
from tesserad.config import Address, LimitsSettings, SecuritySettings, ServingSettings, format_size
from tesserad.dashboard.access import CHALLENGE, Handler
from tesserad.dashboard.listener import RETRY_AFTER, HttpListener, Refused
from tesserad.dashboard.server import http_status_for
from tesserad.logs import REQUEST_ID
from tesserad.security import TokenTable
from tesserad.security.limits import ConcurrencyGate
from tesserad.security.roles import (
    HEALTH_METHODS,
    LOG_SETTINGS_UPDATE,
    ROLE_TABLE,
    TRACE_SETTINGS_UPDATE,
    Role,
)
from tesserad.security.tokens import TokenFile, token_digest, utc_now
from tesserad.serving.open_inference import (
    EXTENSIONS,
    NO_CUDA_SHARED_MEMORY,
    IndexRow,
    OpenInference,
    in_oip_words,
    refuse_repository_name,
    timeout_of,
)
from tesserad.serving.trace import TRACE_LEVEL
from tesserad.tasks import off_the_loop, wait_out

if TYPE_CHECKING:
    # tesserad.metrics imports the dashboard, which imports tesserad.api.auth.
    from tesserad.metrics import DaemonMetrics

log = logging.getLogger(__name__)

_SERVICE = "inference.GRPCInferenceService"
# The request's key for the name of the token that admitted it.
_CALLER = web.RequestKey("tessera_caller", str)
# Set while an inference request's JSON has been read ahead of its binary data, and the rest of
# its body not: any answer then closes the connection, whose next bytes are that binary data.
_BODY_UNREAD = web.RequestKey("tessera_body_unread", bool)
# The content codings a request body may come in, as Triton takes them; a body in any other is
# refused with 415 and these in Accept-Encoding, as Triton refuses it (identity goes unsaid there).
_CODINGS = ("gzip", "deflate", "identity")
_ACCEPT_ENCODING: dict[str, str] = {hdrs.ACCEPT_ENCODING: "gzip, deflate"}
# The most gzip members one request body may be (tritonclient sends one): past it, a body of
# empty 20-byte members would take CPU out of all proportion to its size.
MAX_GZIP_MEMBERS = 1024
# Set once an answer's compression is settled (compressed, or left as it is), so that it is not
# compressed again (see `_compress`).
_CODING_SETTLED = web.RequestKey("tessera_coding_settled", bool)
# The least binary data after a request's JSON for which the JSON is read (and the request's
# batch size checked) before it: below it, the body arrives in moments anyway.
_READ_AHEAD_BINARY = 1 << 20
# How much compressed input goes to zlib at once.
_DECOMPRESS_SLICE = 1 << 16


def _failure(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    if status == 429:
        headers = {**RETRY_AFTER, **(headers or {})}
    return web.json_response({"error": message}, status=status, headers=headers)


def _coding(request: web.Request) -> str:
    """The content coding of `request`'s body, lowercased ("identity" when none is said)."""
    return request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() or "identity"


def _refused(refusal: Refused) -> web.Response:
    headers = {**(CHALLENGE if refusal.status == 401 else {}), **(refusal.headers or {})}
    response = _failure(refusal.status, refusal.message, headers)
    if refusal.close:
        response.force_close()
    return response


class _Revocable:
    """An inference request admitted with a token, while it runs: what a reload needs to end it."""

    __slots__ = ("digest", "refusal", "required")

    def __init__(self, digest: bytes, required: Role) -> None:
        self.digest = digest
        self.required = required
        # The answer it gets once a reload has revoked its token.
        self.refusal: Refused | None = None

    def refusal_under(self, table: TokenTable, request: str) -> Refused | None:
        identity = table.identify_digest(self.digest)
        if identity is None:
            return Refused(
                401,
                f"the token {request} was sent with was removed from the tesserad's tokens file (or "
                "replaced) before it was answered; send it again with a valid token",
            )
        if identity.role < self.required:
            return Refused(
                403,
                f"{request} needs the {self.required.label} role; the token {identity.name!r} now has "
                f"the {identity.role.label} role",
            )
        return None


class OipHttpServer(HttpListener):
    """Serves /v2 on `address`; `port` is the bound one (for port 0)."""

    # Where the clients choose how their request bodies are compressed, named in the refusals of
    # a body compressed otherwise (`_not_taken`) or not as its Content-Encoding says (`_not_as_encoded`).
    _compression_setting = " (tritonclient.http: request_compression_algorithm)"

    def __init__(
        self,
        core: OpenInference,
        address: Address,
        security: SecuritySettings,
        tokens: TokenFile | None,
        calls: ConcurrencyGate,
        max_message_size: int,
        limits: LimitsSettings,
        serving: ServingSettings,
        metrics: DaemonMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        """`tokens`: the daemon's own (None without a tokens file), so a reload applies here too;
        `calls`: the gRPC listener's count of calls in flight, which requests here join;
        `serving`: its oip_http_* settings; `metrics`: where its requests are counted; `audit`:
        where its 401s and 403s, and with `audit.writes` its requests that change state, are
        logged."""
        self._core = core
        self._max_json_size = serving.oip_http_max_json_size
        self._json_process_min_size = serving.oip_http_json_process_min_size
        self._parsers = (
            JsonParsers(
                serving.oip_http_json_processes,
                serving.oip_http_json_queue_size,
                limits.http_request_timeout_s,
            )
            if serving.oip_http_json_processes
            else None
        )
        self._tracer = core.tracer
        super().__init__(address, security, limits, "oip_http", metrics, audit)
        self._tokens = tokens
        self._calls = calls
        self._health_open = security.health_open
        self._max_message_size = max_message_size
        # Inference requests admitted with a token (each runs in its own task), for `end_revoked`.
        self._revocable: dict[asyncio.Task[Any], _Revocable] = {}
        self._cors = CorsRule(serving.oip_http_cors_origins)
        # Its own threads, not the loop's default executor (shared-memory copies, decompression):
        # large answers compressed at once wait here rather than crowd out other work.
        self._compressing = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="oip-http-compress")
        # `*` lifts the guard against cross-site changes only where a page needs a token anyway:
        # a browser never sends one by itself. A client certificate it does send by itself, as a
        # cookie: under mutual TLS alone any page a user opened could load and unload models.
        self._any_page_may_change = "*" in serving.oip_http_cors_origins and security.tokens_file is not None
        app = web.Application(
            middlewares=[self._errors, self._guard, self._preflight], client_max_size=max_message_size
        )
        app.on_response_prepare.append(self._headers_out)
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        route = self._route
        app.add_routes(
            [
                route("GET", "/v2/health/live", "ServerLive", self._live),
                route("GET", "/v2/health/ready", "ServerReady", self._ready),
                route("GET", "/v2", "ServerMetadata", self._server_metadata),
                route("GET", "/v2/models/stats", "ModelStatistics", self._statistics),
                route("POST", "/v2/repository/index", "RepositoryIndex", self._index),
                route("POST", "/v2/repository/models/{model}/load", "RepositoryModelLoad", self._load),
                route("POST", "/v2/repository/models/{model}/unload", "RepositoryModelUnload", self._unload),
                # As Triton's paths, which may name a repository; refused (tesserad has one).
                route("POST", "/v2/repository/{repository}/index", "RepositoryIndex", self._index),
                route(
                    "POST",
                    "/v2/repository/{repository}/models/{model}/load",
                    "RepositoryModelLoad",
                    self._load,
                ),
                route(
                    "POST",
                    "/v2/repository/{repository}/models/{model}/unload",
                    "RepositoryModelUnload",
                    self._unload,
                ),
                route("GET", "/v2/systemsharedmemory/status", "SystemSharedMemoryStatus", self._shm_status),
                route(
                    "GET",
                    "/v2/systemsharedmemory/region/{name}/status",
                    "SystemSharedMemoryStatus",
                    self._shm_status,
                ),
                route(
                    "POST",
                    "/v2/systemsharedmemory/region/{name}/register",
                    "SystemSharedMemoryRegister",
                    self._shm_register,
                ),
                route(
                    "POST",
                    "/v2/systemsharedmemory/unregister",
                    "SystemSharedMemoryUnregister",
                    self._shm_unregister,
                ),
                route(
                    "POST",
                    "/v2/systemsharedmemory/region/{name}/unregister",
                    "SystemSharedMemoryUnregister",
                    self._shm_unregister,
                ),
                route("GET", "/v2/logging", "LogSettings", self._log_settings),
                route("POST", "/v2/logging", "LogSettings", self._update_log_settings, LOG_SETTINGS_UPDATE),
                *(
                    definition
                    for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting")
                    for definition in (
                        route("GET", path, "TraceSetting", self._trace_settings),
                        route(
                            "POST", path, "TraceSetting", self._update_trace_settings, TRACE_SETTINGS_UPDATE
                        ),
                    )
                ),
                route("GET", "/v2/cudasharedmemory/status", "CudaSharedMemoryStatus", self._no_cuda),
                route(
                    "GET",
                    "/v2/cudasharedmemory/region/{name}/status",
                    "CudaSharedMemoryStatus",
                    self._no_cuda,
                ),
                route(
                    "POST",
                    "/v2/cudasharedmemory/region/{name}/register",
                    "CudaSharedMemoryRegister",
                    self._no_cuda,
                ),
                route("POST", "/v2/cudasharedmemory/unregister", "CudaSharedMemoryUnregister", self._no_cuda),
                route(
                    "POST",
                    "/v2/cudasharedmemory/region/{name}/unregister",
                    "CudaSharedMemoryUnregister",
                    self._no_cuda,
                ),
                *(
                    definition
                    for path in (model, version)
                    for definition in (
                        route("GET", path, "ModelMetadata", self._model_metadata),
                        route("GET", f"{path}/ready", "ModelReady", self._model_ready),
                        route("GET", f"{path}/config", "ModelConfig", self._config),
                        route("GET", f"{path}/stats", "ModelStatistics", self._statistics),
                        route("POST", f"{path}/infer", "ModelInfer", self._infer),
                    )
                ),
            ]
        )
        # Bodies are decompressed here (`_body`): aiohttp's own decompression would refuse br and
        # zstd itself, in plain text.
        self._serve(app, _AccessLog)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`handler`'s answer or its error's, compressed as the request's Accept-Encoding asks;
        the lines logged meanwhile carry the request's X-Request-ID."""
        request_id = REQUEST_ID.set(request_id_of(request.headers))
        try:
            response = await self._errors_answered(request, handler)
        finally:
            REQUEST_ID.reset(request_id)
        if request.get(_BODY_UNREAD):
            response.force_close()
        # Those of the routes are compressed in their call's slot (`_route`); what is left (the
        # guard's refusals, 404, 405, health probes) is small.
        await self._compress(request, response)
        return response

    @web.middleware
    async def _preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method), with CORS on:
        204 for a page serving.oip_http_cors_origins lists, 403 for another; no token needed (a
        browser sends none with it). Any other OPTIONS is answered as before (405)."""
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            request.method != hdrs.METH_OPTIONS
            or not self._cors.on
            or origin is None
            or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
        ):
            return await handler(request)
        if not self._cors.allows(origin):
            raise Refused(
                403,
                f"a page at {origin[:100]!r} may not call this tesserad from a browser: add its origin to "
                "serving.oip_http_cors_origins (env TESSERA_SERVING_OIP_HTTP_CORS_ORIGINS)",
            )
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    async def _headers_out(self, request: web.Request, response: web.StreamResponse) -> None:
        """Before any answer goes out (an error's, one in place of 100 Continue, aiohttp's own):
        the request's X-Request-ID echoed, and the CORS headers for its Origin."""
        request_id = request_id_of(request.headers)
        if request_id is not None:
            response.headers[REQUEST_ID_HEADER] = request_id
        for name, value in self._cors.answer_headers(request.headers.get(hdrs.ORIGIN)).items():
            if name == hdrs.VARY:
                _vary(response, value)
            else:
                response.headers.setdefault(name, value)

    async def _compress(self, request: web.Request, response: web.StreamResponse) -> None:
        """`response`'s body compressed as `request`'s Accept-Encoding asks (`response_coding`),
        when it is MIN_COMPRESSED_SIZE or more and `compressed` finds it worth it; a large one on
        this listener's threads. Any answer of that size varies by Accept-Encoding, compressed or
        not. Once a request's answer is settled, again does nothing."""
        if not isinstance(response, web.Response) or request.get(_CODING_SETTLED):
            return
        body = response.body
        if not isinstance(body, bytes | bytearray):
            return
        request[_CODING_SETTLED] = True
        if len(body) < MIN_COMPRESSED_SIZE:
            return
        _vary(response, hdrs.ACCEPT_ENCODING)
        coding = response_coding(request.headers.get(hdrs.ACCEPT_ENCODING))
        if coding == "identity" or hdrs.CONTENT_ENCODING in response.headers:
            return
        data = bytes(body)
        if len(data) >= COMPRESS_OFF_LOOP_SIZE:
            loop = asyncio.get_running_loop()
            smaller = await wait_out(loop.run_in_executor(self._compressing, compressed, data, coding))
        else:
            smaller = compressed(data, coding)
        if smaller is not None:
            response.body = smaller
            response.headers[hdrs.CONTENT_ENCODING] = coding

    def _trusted_origin(self, origin: str | None) -> bool:
        return self._cors.lists(origin) or (self._any_page_may_change and origin is not None)

    async def _errors_answered(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`handler`'s answer, or its error's."""
        try:
            return await handler(request)
        except Refused as exc:
            return _refused(exc)
        except errors.TesseraError as exc:
            message = errors.answered_message(log, f"{request.method} {request.raw_path[:200]}", exc)
            return _failure(
                http_status_for(exc), message, RETRY_AFTER if isinstance(exc, errors.Overloaded) else None
            )
        except web.HTTPRequestEntityTooLarge:
            # Its body was read only up to the limit: the rest is never read (as another request).
            response = _failure(413, self._too_large(None))
            response.force_close()
            return response
        except web.HTTPException as exc:
            if exc.status == 404:
                path = request.path
                if path == "/v2" or path.startswith("/v2/"):
                    return _failure(404, f"nothing at {path[:200]}")
                return _failure(404, f"nothing at {path[:200]}; the protocol's paths start with /v2")
            if exc.status == 405:
                return _failure(
                    405,
                    f"{request.method} is not served at {request.path[:200]}",
                    {hdrs.ALLOW: exc.headers[hdrs.ALLOW]},
                )
            raise
        except Exception as exc:
            return _failure(500, errors.logged_internal(log, "an HTTP inference request", exc).message)

    def _route(
        self, method: str, path: str, rpc: str, handler: Handler, required: Role | None = None
    ) -> web.RouteDef:
        """`handler` at `method` `path`, behind the checks the gRPC RPC `rpc` gets: who may call
        (`_admit`; `required`: the role, when not the RPC's own), the body's declared size and
        content coding, and a slot of limits.max_concurrent_calls shared with gRPC's calls (429
        with gRPC's RESOURCE_EXHAUSTED message when none is free), all before a 100 Continue too.
        Health probes take no slot, as on gRPC."""
        calls = self._calls
        limited = f"/{_SERVICE}/{rpc}" not in HEALTH_METHODS
        revocable = self._revocable if rpc == "ModelInfer" else None
        needed = ROLE_TABLE[_SERVICE][rpc] if required is None else required
        if self._audit is not None and self._audit.writes and needed > Role.READER:
            handler = self._audited(handler, self._audit, f"{_SERVICE}/{rpc}")

        def refusal(request: web.Request) -> web.Response | None:
            try:
                self._check_host(request)
                self._admit_declared(request, rpc, needed)
                if limited:
                    calls.check()
            except Refused as exc:
                return _refused(exc)
            except errors.TesseraError as exc:
                return _failure(http_status_for(exc), exc.message)
            return None

        async def compressed_answer(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            await self._compress(request, response)
            return response

        async def admitted(request: web.Request) -> web.StreamResponse:
            digest = self._admit_declared(request, rpc, needed)
            if not limited:
                return await handler(request)
            # The answer, an error's too, is compressed before the slot is let go of: its CPU and
            # memory count against limits.max_concurrent_calls, and a revocation ends it.
            calls.enter()
            try:
                if revocable is None or digest is None:
                    response = await self._errors_answered(request, compressed_answer)
                else:
                    entry = _Revocable(digest, needed)
                    response = await self._errors_answered(
                        request, lambda r: _revoked_at_reload(revocable, entry, compressed_answer, r)
                    )
                await self._compress(request, response)
                return response
            finally:
                calls.leave()

        return web.route(method, path, admitted, expect_handler=self._expecting(refusal))

    @staticmethod
    def _audited(handler: Handler, audit: Audit, rpc: str) -> Handler:
        """`handler` logging the audit line of each request it answers (tesserad.api.audit), as a
        gRPC call of `rpc` logs its own; its X-Request-ID rides on the line."""

        async def audited(request: web.Request) -> web.StreamResponse:
            objects = {key: value[:200] for key, value in request.match_info.items()}
            try:
                response = await handler(request)
                code = str(response.status)
                return response
            except BaseException as exc:
                code = _status_of(exc)
                raise
            finally:
                audit.wrote(
                    rpc,
                    request.get(_CALLER, ANONYMOUS),
                    request.remote or "",
                    objects,
                    code,
                    request_id=request_id_of(request.headers),
                )

        return audited

    def _admit_declared(self, request: web.Request, rpc: str, required: Role) -> bytes | None:
        """`_admit`, then 413 for a Content-Length over max_message_size and 415 for a body in a
        content coding not taken: refused before a byte of the body is read, or a slot taken
        while it (never) arrives; the connection closes, the body left unread."""
        digest = self._admit(request, rpc, required)
        length = request.content_length
        if length is not None and length > self._max_message_size:
            raise Refused(413, self._too_large(length), close=True)
        coding = _coding(request)
        if request.body_exists and coding not in _CODINGS:
            raise Refused(415, self._not_taken(coding), close=True, headers=_ACCEPT_ENCODING)
        return digest

    def _not_taken(self, coding: str) -> str:
        """What a request body in a content coding not taken (`coding`) is told."""
        return (
            f"the request body is compressed with {coding[:40]} (its Content-Encoding header), which "
            f"tesserad does not take; send it compressed with gzip or deflate{self._compression_setting}, "
            "or uncompressed"
        )

    def _not_as_encoded(self, encoding: str) -> str:
        """What a request body that is not the `encoding` data its Content-Encoding says is told."""
        return (
            f"the request body is not valid {encoding[:40]} data, as its Content-Encoding header says "
            f"it is; send it compressed with {encoding[:40]}{self._compression_setting}, or "
            "uncompressed without the header"
        )

    def _too_large(self, size: int | None, decompressed: bool = False) -> str:
        """What a body over max_message_size is told; `size` when its Content-Length says it;
        `decompressed` when its coding's data is small but decompresses to more."""
        over = "over" if size is None else f"{format_size(size)}, over"
        body = "decompresses to over" if decompressed else f"is {over}"
        return (
            f"the request body {body} max_message_size = {format_size(self._max_message_size)}, "
            "the largest request this tesserad accepts (gRPC's too); send fewer rows per request, or ask "
            "the operator to raise max_message_size (env TESSERA_MAX_MESSAGE_SIZE)"
        )

    def _refuse_declared_json(self, request: web.Request, header_length: str | None) -> None:
        """413 before a byte of the body is read, when its headers already say that its JSON is
        over oip_http_max_json_size: Inference-Header-Content-Length, or without that header
        the Content-Length of an uncompressed body."""
        whole = request.content_length if _coding(request) == "identity" else None
        declared = whole
        if header_length is not None:
            # A header past the body's own length is refused as that, once the body is read.
            valid = header_length.isascii() and header_length.isdigit()
            declared = (
                int(header_length) if valid and (whole is None or int(header_length) <= whole) else None
            )
        if declared is not None and declared > self._max_json_size:
            raise Refused(413, self._json_too_large(declared), close=True)

    def _read_ahead(self, request: web.Request, declared_length: str | None) -> int | None:
        """The length of the JSON to read ahead of the binary data after it, for a request whose
        batch size may then be refused before megabytes of tensors arrive (a 60 MiB body takes
        seconds): an uncompressed body whose Content-Length and Inference-Header-Content-Length
        leave over _READ_AHEAD_BINARY bytes of binary data. None: read the body whole."""
        whole = request.content_length
        if declared_length is None or whole is None or _coding(request) != "identity":
            return None
        if not (declared_length.isascii() and declared_length.isdigit()):
            return None
        length = int(declared_length)
        return length if length > 0 and whole - length >= _READ_AHEAD_BINARY else None

    def _json_too_large(self, size: int) -> str:
        """What an inference request whose JSON is `size` bytes, over oip_http_max_json_size, is told."""
        return (
            f"the request's JSON is {format_size(size)}, over serving.oip_http_max_json_size = "
            f"{format_size(self._max_json_size)}: send large tensors as binary data (Triton's binary "
            "tensor data extension: raw bytes after the JSON, with the header "
            f"{HEADER_LENGTH}; tritonclient.http: set_data_from_numpy(..., binary_data=True)), "
            "which is smaller and takes no parsing; or ask the operator to raise "
            "serving.oip_http_max_json_size (env TESSERA_SERVING_OIP_HTTP_MAX_JSON_SIZE)"
        )

    async def _body(self, request: web.Request) -> bytes:
        """The request's body, once it has all arrived (408 after limits.http_request_timeout_s:
        a body that never all arrives would otherwise hold its slot of limits.max_concurrent_calls),
        decompressed as its Content-Encoding says (gzip or deflate, as Triton takes; 400 when it is
        not such data, 413 when it decompresses to over max_message_size)."""
        async with self._receiving_body(request):
            body = await request.read()
        coding = _coding(request)
        if coding == "identity" or not body:
            return body
        assert coding in _CODINGS, "a body in another coding is refused before it is read"
        # Up to max_message_size of decompression is CPU the event loop (gRPC's and the
        # dashboard's too) must not wait on.
        return await asyncio.to_thread(self._decompressed, body, coding)

    def _decompressed(self, body: bytes, coding: str) -> bytes:
        """`body` decompressed from `coding` (gzip or deflate)."""
        if coding == "gzip":
            window = 16 + zlib.MAX_WBITS
        else:
            # deflate is zlib's format (RFC 9110), but some clients send raw deflate data, which
            # aiohttp's decompression took too: a zlib stream's first byte names its method, 8.
            window = zlib.MAX_WBITS if body[0] & 0x0F == 8 else -zlib.MAX_WBITS
        view = memoryview(body)
        parts: list[bytes] = []
        room = self._max_message_size
        offset = members = 0
        # A gzip body may be several members one after another (RFC 1952), as `cat a.gz b.gz`
        # makes it. Input goes in bounded slices, so what a member leaves unused (copied by zlib
        # on each call) stays small; and members are counted, since an empty one is 20 bytes.
        while offset < len(body):
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise Refused(
                    400,
                    f"the request body is over {MAX_GZIP_MEMBERS} gzip members one after another; "
                    "send it compressed as one",
                )
            decompressor = zlib.decompressobj(window)
            while not decompressor.eof:
                if offset >= len(body):
                    raise Refused(400, self._not_as_encoded(coding))
                piece = view[offset : offset + _DECOMPRESS_SLICE]
                try:
                    part = decompressor.decompress(piece, room + 1)
                except zlib.error:
                    raise Refused(400, self._not_as_encoded(coding)) from None
                if len(part) > room:
                    raise Refused(413, self._too_large(None, decompressed=True))
                parts.append(part)
                room -= len(part)
                offset += len(piece) - len(decompressor.unused_data)
            if coding != "gzip" and offset < len(body):
                raise Refused(400, self._not_as_encoded(coding))
        return b"".join(parts)

    async def stop(self) -> None:
        if self._parsers is not None:
            # First: a request in a parse (of a process that hangs, even) is answered at once, and
            # does not hold up the wait for requests in progress.
            await self._parsers.close()
        await super().stop()
        # Every request has ended, having waited out its compression: the threads are idle.
        self._compressing.shutdown(wait=False, cancel_futures=True)

    def end_revoked(self, table: TokenTable) -> int:
        """Answer each inference request in progress whose token `table` no longer admits to
        ModelInfer with its refusal, now; how many."""
        ended = 0
        for task, entry in list(self._revocable.items()):
            if entry.refusal is not None:
                continue
            refusal = entry.refusal_under(table, "this inference request")
            if refusal is not None:
                entry.refusal = refusal
                task.cancel()
                ended += 1
        return ended

    def _admit(self, request: web.Request, rpc: str, required: Role) -> bytes | None:
        """Refuse (401/403) a caller the gRPC RPC `rpc` would refuse, or whose role is below
        `required`; the SHA-256 of the token that admitted it (its name is the request's
        `_CALLER`), or None when none was needed. Without a tokens file every caller is
        admitted: mutual TLS has checked the certificate, and without it the daemon serves
        loopback only (or the operator said --insecure)."""
        if self._tokens is None or (self._health_open and f"/{_SERVICE}/{rpc}" in HEALTH_METHODS):
            return None
        header = request.headers.get("Authorization")
        if header is None:
            raise Refused(
                401,
                "this tesserad needs a token: send the header 'Authorization: Bearer <token>' "
                "(a token made with `tesserad tokens add`)",
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "the Authorization header must be 'Bearer <token>'")
        digest = token_digest(token.strip())
        identity = self._tokens.table.identify_digest(digest)
        if identity is None:
            raise Refused(
                401,
                "the token is not valid for this tesserad (mistyped, or removed from its tokens "
                "file); ask the operator for a token made with `tesserad tokens add`",
            )
        if identity.expires is not None and identity.expired(utc_now()):
            raise Refused(401, expired_message(identity))
        if identity.role < required:
            raise Refused(
                403,
                f"{request.method} {request.path[:200]} needs the {required.label} role; the token "
                f"{identity.name!r} has the {identity.role.label} role",
            )
        request[_CALLER] = identity.name
        return digest

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _ready(self, request: web.Request) -> web.Response:
        # The protocol's health answers: the status is the boolean, 200 true and 4xx false (Triton
        # answers 400), with no body.
        return web.Response(status=200 if self._core.server_ready() else 400)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "tesserad", "version": __version__, "extensions": EXTENSIONS})

    async def _model_ready(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        if await self._core.model_ready(model, version):
            return web.Response()
        # 400 as for the server; as Triton, with an error saying so. What the registry does not
        # hold is said so (a load would be NOT_FOUND), else why no version is ready (a load that
        # failed, with its reason); asked only on this path, never when ready.
        reason = f"not loaded, or still loading; load it with POST /v2/repository/models/{model}/load"
        try:
            await self._core.describe(model, version)
            reason = await self._core.not_ready_reason(model, version)
        except errors.TesseraError as exc:
            # Any other failure (a replica's primary out of reach) leaves the probe's answer 400.
            if isinstance(exc, errors.NotFound):
                reason = exc.message
        named = f"model {model!r} version {version}" if version else f"model {model!r}"
        return _failure(400, f"{named} is not ready: {reason}")

    async def _model_metadata(self, request: web.Request) -> web.Response:
        described = await self._core.describe(
            request.match_info["model"], request.match_info.get("version", "")
        )
        return web.json_response(message_json(metadata_of(*described)))

    async def _config(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        described, _ = await self._core.describe(model, version)
        split = await self._core.traffic_split(model, version)
        # As Triton's: the config itself, not wrapped as gRPC's ModelConfigResponse wraps it.
        config = model_config_of(described, split, self._core.version_policy(model))
        return web.json_response(message_json(config))

    async def _statistics(self, request: web.Request) -> web.Response:
        entries = await self._core.statistics(
            request.match_info.get("model", ""), request.match_info.get("version", "")
        )
        return web.json_response(message_json(statistics_response(entries)))

    async def _json_object(self, request: web.Request) -> dict[str, object]:
        """The body of a request that is no inference request, as `settings_object` reads it."""
        return settings_object(await self._body(request))

    async def _index(self, request: web.Request) -> web.Response:
        refuse_repository_name(request.match_info.get("repository", ""))
        ready = (await self._json_object(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise errors.InvalidArgument("'ready' must be true or false")
        # As Triton's: the list itself.
        return web.json_response([_index_entry(row) for row in await self._core.index(ready)])

    async def _load(self, request: web.Request) -> web.Response:
        refuse_repository_name(request.match_info.get("repository", ""))
        parameters = json_parameters(await self._json_object(request), "the request")
        await self._core.load(request.match_info["model"], parameters, KIND_NAMES, serving_config_of)
        return web.Response()

    async def _unload(self, request: web.Request) -> web.Response:
        refuse_repository_name(request.match_info.get("repository", ""))
        parameters = json_parameters(await self._json_object(request), "the request")
        await self._core.unload(request.match_info["model"], parameters, KIND_NAMES)
        return web.Response()

    async def _shm_status(self, request: web.Request) -> web.Response:
        regions = self._core.shared_memory.status(request.match_info.get("name", ""))
        # As Triton's: a list of the regions, not gRPC's map by name.
        return web.json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def _shm_register(self, request: web.Request) -> web.Response:
        document = await self._json_object(request)
        key = document.get("key")
        if not isinstance(key, str):
            raise errors.InvalidArgument("the request needs 'key': the name of the shared-memory object")
        offset = document.get("offset", 0)
        byte_size = document.get("byte_size")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise errors.InvalidArgument(f"the request needs '{field}': a whole number of bytes")
        assert isinstance(offset, int) and isinstance(byte_size, int)
        await asyncio.to_thread(
            self._core.shared_memory.register, request.match_info["name"], key, offset, byte_size
        )
        return web.Response()

    async def _shm_unregister(self, request: web.Request) -> web.Response:
        self._core.shared_memory.unregister(request.match_info.get("name", ""))
        return web.Response()

    async def _log_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self._core.logs.settings())

    async def _update_log_settings(self, request: web.Request) -> web.Response:
        changes = await self._json_object(request)
        return web.json_response(self._core.logs.update(changes, request.get(_CALLER, ANONYMOUS)))

    async def _trace_settings(self, request: web.Request) -> web.Response:
        settings = await self._core.trace_settings(request.match_info.get("model", ""))
        return web.json_response(_trace_settings_json(settings))

    async def _update_trace_settings(self, request: web.Request) -> web.Response:
        changes = await self._json_object(request)
        settings = await self._core.update_trace_settings(
            request.match_info.get("model", ""), changes, request.get(_CALLER, ANONYMOUS)
        )
        return web.json_response(_trace_settings_json(settings))

    async def _no_cuda(self, request: web.Request) -> web.Response:
        raise errors.Unimplemented(NO_CUDA_SHARED_MEMORY)

    async def _infer(self, request: web.Request) -> web.Response:
        declared_length = request.headers.get(HEADER_LENGTH)
        self._refuse_declared_json(request, declared_length)
        ahead = self._read_ahead(request, declared_length)
        if ahead is None:
            body = await self._body(request)
        else:
            async with self._receiving_body(request):
                try:
                    body = await request.content.readexactly(ahead)
                except asyncio.IncompleteReadError:
                    raise Refused(400, "the connection closed before the request body arrived") from None
            request[_BODY_UNREAD] = True
        started = time.perf_counter_ns()
        target = self._core.target(request.match_info["model"], request.match_info.get("version", ""))
        try:
            length = json_length(body, declared_length)
            if length > self._max_json_size:
                raise Refused(413, self._json_too_large(length))
            if self._parsers is not None and length >= self._json_process_min_size:
                # A view: the JSON is not copied out of a body that carries binary data after it.
                document = await self._parsers.parse(
                    memoryview(body)[:length], declared_length is None, len(body)
                )
            else:
                document = parse_document(body[:length], declared_length is None)
            if ahead is not None and (
                refusal := self._core.over_max_batch(target, declared_shapes(document))
            ):
                # Answered now, the binary data left unread (the connection closes).
                raise Refused(400, refusal.message)
        except (errors.TesseraError, Refused):
            self._core.refused(target, started)
            raise
        if ahead is None:
            binary = body[length:]
        else:
            async with self._receiving_body(request):
                binary = await request.read()
            request[_BODY_UNREAD] = False
        with self._core.shared_memory.lease() as lease:
            try:
                # A shared-memory input's read copies as many bytes as the tensor has, letting go of
                # the interpreter meanwhile.
                parsed = (
                    await off_the_loop(lambda: infer_request(document, binary, lease))
                    if reads_shared_memory(document)
                    else infer_request(document, binary, lease)
                )
                timeout = timeout_of(parsed.parameters, KIND_NAMES) if parsed.parameters else None
            except errors.TesseraError:
                self._core.refused(target, started)
                raise
            decoded = time.perf_counter_ns()
            try:
                version, prediction = await self._core.infer(
                    target, parsed.inputs, parsed.output_names, None, timeout, parsed.id, started
                )
            except errors.NotFound as exc:
                raise in_oip_words(exc) from None
            except errors.QueueFull as exc:
                raise errors.Overloaded(exc.message) from None
            answered = time.perf_counter_ns()
            # As for the inputs: an output's write into shared memory copies as many bytes as the
            # tensor has.
            answer, header_length = (
                await off_the_loop(
                    lambda: infer_response(target.model, version, parsed, prediction.outputs, lease)
                )
                if parsed.output_places
                else infer_response(target.model, version, parsed, prediction.outputs, lease)
            )
        encoded = time.perf_counter_ns()
        self._core.record_io(target.model, version, prediction, decoded - started, encoded - answered)
        if self._tracer.on:
            self._tracer.trace(target.model, version, parsed.id, started, prediction, parsed.inputs, encoded)
        if header_length is None:
            return web.Response(body=answer, content_type="application/json")
        return web.Response(
            body=answer,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )


def _status_of(exc: BaseException) -> str:
    """The HTTP status a request that raised `exc` is answered with (the error middleware's)."""
    if isinstance(exc, errors.TesseraError):
        return str(http_status_for(exc))
    if isinstance(exc, web.HTTPException | Refused):
        return str(exc.status)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "500"


def _vary(response: web.StreamResponse, header: str) -> None:
    """Add `header` to `response`'s Vary."""
    said = response.headers.get(hdrs.VARY)
    if said is None:
        response.headers[hdrs.VARY] = header
    elif header.lower() not in (name.strip().lower() for name in said.split(",")):
        response.headers[hdrs.VARY] = f"{said}, {header}"


class _AccessLog(AbstractAccessLogger):
    """A DEBUG line per answer, with its X-Request-ID when the request carried one: written at
    log_level debug, or from log_verbose_level 1 (POST /v2/logging), as Triton's verbose log has
    a line per HTTP request."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        fields: dict[str, object] = {"status": response.status, "duration_ms": round(time * 1000, 3)}
        request_id = request_id_of(request.headers)
        if request_id is not None:
            fields["request_id"] = request_id
        # The path as sent (percent-encoded; decoded, a %0A in it would forge a line of the log),
        # without its query.
        path = request.raw_path.partition("?")[0]
        self.logger.debug("%s %s %d", request.method, path[:200], response.status, extra=fields)


def _index_entry(row: IndexRow) -> dict[str, str]:
    """A row of the repository index as Triton's HTTP answer writes it: a version only when there
    is one, a reason only when there is one (not gRPC's fields at their empty defaults)."""
    entry = {"name": row.name}
    if row.version:
        entry["version"] = row.version
    entry["state"] = row.state
    if row.reason:
        entry["reason"] = row.reason
    return entry


def _trace_settings_json(settings: Mapping[str, list[str]]) -> dict[str, str | list[str]]:
    """As Triton's HTTP answers them: trace_level a list, each other setting a string."""
    return {name: values if name == TRACE_LEVEL else values[0] for name, values in settings.items()}


async def _revoked_at_reload(
    revocable: dict[asyncio.Task[Any], _Revocable],
    entry: _Revocable,
    handler: Handler,
    request: web.Request,
) -> web.StreamResponse:
    """`handler(request)`, tracked while it runs so that `end_revoked` can end it: cancelled there
    (which takes a queued request off the batcher's queue), it is answered with its refusal."""
    task = asyncio.current_task()
    assert task is not None, "aiohttp runs each request in a task"
    revocable[task] = entry
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if entry.refusal is None:
            raise
        task.uncancel()
        raise entry.refusal from None
    finally:
        del revocable[task]

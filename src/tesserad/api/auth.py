"""Who may call, what they may call, how many calls at once, and what a request must look like.

`AuthInterceptor` wraps every RPC outermost (tesserad.api.interceptors.ServerInterceptor):
- authentication: with a tokens file, every call needs `authorization: Bearer <token>`
  (UNAUTHENTICATED without one or with an unknown one); health probes stay open by setting;
- authorization: the caller's role must reach the role the RPC needs (security/roles.py),
  else PERMISSION_DENIED naming that role. A refused call's request is never read;
- admission: calls and streams in flight are counted against `limits.*` (RESOURCE_EXHAUSTED
  naming the setting); health Watch streams, open without a token, are counted apart;
- decoding: it takes over (de)serialisation, so a request that is not a valid protobuf
  message is INVALID_ARGUMENT (gRPC itself would answer UNKNOWN and leak the parser's
  exception), and a request or response over `max_message_size` is RESOURCE_EXHAUSTED naming
  it (gRPC's own receive limit is set to its ceiling, so its size check, whose message names
  no setting, never runs first; a refused caller's request is never read at all).

Servicers read the caller with `caller(context)`, e.g. for audit logs.

Revocation: `reload_tokens` (on SIGHUP, or when the daemon's periodic check sees the file change) swaps
in the file's tokens, so a removed token's next call is UNAUTHENTICATED at once. Streaming calls
opened with a token are tracked, and those whose token is gone (or whose role no longer reaches
the RPC's) end with UNAUTHENTICATED (or PERMISSION_DENIED) at the reload: at once when the
stream is waiting, or as soon as the message being sent is handed to gRPC; a client that stops
reading gets its stream cancelled after REVOKED_SEND_GRACE_S. So do the inference calls
(`REVOKED_IN_FLIGHT`): one waiting in a batcher's queue leaves it unrun, one whose batch runs has
its answer dropped. Any other unary call already running finishes: it is short, and a change
cut off half-way would be applied all the same.

Expiry: a token past its `expires` is refused on every call (UNAUTHENTICATED, saying when it
expired), whether or not the file was read again since; a stream opened with an expiring token
holds a timer that ends it at that moment, as a reload ends a revoked one.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from tesserad.api import aio_handlers
from tesserad.api.aio_handlers import Context, ErrorListener, Handler, split_method
from tesserad.api.audit import Audit
from tesserad.api.errors import status_for
from tesserad.config import LimitsSettings, SecuritySettings, format_size
from tesserad.errors import InvalidArgument, ResourceExhausted
from tesserad.replica.refusals import MAX_ADDRESS_CHARS, REPLICA_HEADER
from tesserad.security import (
    Identity,
    MissingRoleError,
    TokensFileError,
    TokenTable,
    required_roles,
)
from tesserad.security.limits import ConcurrencyGate
from tesserad.security.roles import HEALTH_METHODS, ROLE_TABLE, Role
from tesserad.security.tokens import TokenFile, format_time, token_digest, utc_now

if TYPE_CHECKING:
    # tesserad.metrics imports the dashboard, which imports this module.
    from tesserad.metrics import DaemonMetrics

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"

# How long a revoked stream's message already on its way out may take before the stream is
# cancelled outright (a client that stopped reading would otherwise hold it open).
REVOKED_SEND_GRACE_S = 5.0

# Unary calls tracked as streams are, so that a reload ends them: they may wait in a queue.
REVOKED_IN_FLIGHT = frozenset({"/inference.GRPCInferenceService/ModelInfer", "/tessera.v1.Inference/Predict"})

# What to do about an inference request over max_message_size: it has no chunked form, as
# uploads have (the advice for every other RPC).
_FEWER_ROWS = "send fewer rows per request"
_FEWER_ROWS_OR_SHM = (
    f"{_FEWER_ROWS}, or put the inputs in system shared memory (register_system_shared_memory)"
)
_SMALLER_REQUEST = {
    "/inference.GRPCInferenceService/ModelInfer": _FEWER_ROWS_OR_SHM,
    "/inference.GRPCInferenceService/ModelStreamInfer": _FEWER_ROWS_OR_SHM,
    "/tessera.v1.Inference/Predict": _FEWER_ROWS,
    "/tessera.v1.Inference/PredictStream": _FEWER_ROWS,
    "/tessera.v1.Inference/Explain": _FEWER_ROWS,
}

# Each RPC runs in its own asyncio task, whose context is a copy made when the task starts,
# so a value set here is seen by the servicer (and by asyncio.to_thread calls it makes) and
# by nothing outside this call.
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("tessera_caller", default=ANONYMOUS)
# The caller's role, for an RPC whose role depends on what its request asks (LogSettings,
# TraceSetting).
_CALLER_ROLE: contextvars.ContextVar[Role] = contextvars.ContextVar(
    "tessera_caller_role", default=Role.READER
)
# The call's record while a reload may revoke it, for `revoked_code`.
_OPEN_STREAM: contextvars.ContextVar[_OpenStream | None] = contextvars.ContextVar(
    "tessera_open_stream", default=None
)


def revoked_code() -> str | None:
    """The name of the status a reload (or its token's expiry) ends the current call with, once
    it revoked it: its task is cancelled, and the client gets this status, not CANCELLED."""
    stream = _OPEN_STREAM.get()
    if stream is None or stream.refusal is None:
        return None
    return stream.refusal[0].name


def encoded(response: Any, serialize: Callable[[Any], bytes] | None, max_size: int, rpc: str) -> Any:
    """`response` serialised, or as it is without a serializer; ResourceExhausted over `max_size`."""
    if response is None or serialize is None:
        return response
    data = serialize(response)
    if len(data) > max_size:
        raise ResourceExhausted(
            f"the response of {rpc} is {format_size(len(data))}, over max_message_size = "
            f"{format_size(max_size)}; ask for smaller pages or chunks, or raise "
            "max_message_size (env TESSERA_MAX_MESSAGE_SIZE)"
        )
    return data


def caller(context: Context) -> str:
    """The identity of the caller of the RPC `context` belongs to, for audit logs.

    The token's name from the tokens file; "cert:<common name>" under mutual TLS without
    tokens; "anonymous" when the daemon has no authentication (or for open health checks).
    Call it from inside the servicer method that received `context`.
    """
    return _CALLER.get()


def caller_role(context: Context) -> Role:
    """The role of the caller of the RPC `context` belongs to: its token's; admin without tokens
    (mutual TLS alone, or no authentication on loopback, admits every caller as admin)."""
    return _CALLER_ROLE.get()


_SET_ALIAS_ROLE = ROLE_TABLE["tessera.v1.Registry"]["SetAlias"]


def alias_move_denied(context: Context) -> str:
    """Why the caller may not move an alias onto an existing version, as a call that adds one
    would where it finds the version already there (RegisterJobWeights, ExportOnnx): that is
    SetAlias's; "" where the caller's role may call it."""
    role = caller_role(context)
    if role >= _SET_ALIAS_ROLE:
        return ""
    return (
        f"SetAlias needs the {_SET_ALIAS_ROLE.label} role (the caller {caller(context)!r} has the "
        f"{role.label} role)"
    )


def presented_authorization(context: Context) -> str:
    """The authorization metadata the caller of `context`'s RPC sent ("" without one)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return ""


class AuthSetupError(Exception):
    """The security settings cannot be used; the message names the setting and the fix."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorises and admits every call; see the module docstring.

    The wrapper of an admitted call is built once per (method, identity) and reused: gRPC asks
    for a handler on every call, and building its closures and handler each time cost 41-71 us
    per call on the dev box (tiny-model Predict, concurrency 1).
    """

    def __init__(
        self,
        security: SecuritySettings,
        limits: LimitsSettings,
        max_message_size: int,
        services: Iterable[ServiceDescriptor],
        refused: ErrorListener | None = None,
        metrics: DaemonMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        """`refused`: told of each call refused here (unauthenticated, or without the role) whose
        caller this daemon knows from any other: by a token of its tokens file (one expired
        too), or by the client certificate mutual TLS checked. A caller with no token, or one
        the file lacks, could be anyone: what it says of itself (a replica's address, for the
        primary's list of refused replicas) is not to be believed, so `refused` is not told.
        `metrics`: where every call refused here is counted with its code (the calls admitted
        are counted by the CallInterceptor inside). `audit`: where each call refused for its
        credentials is logged (rate-limited)."""
        try:
            self._roles = required_roles(services)
            self._tokens = None if security.tokens_file is None else TokenFile(security.tokens_file)
        except MissingRoleError as exc:
            raise AuthSetupError(str(exc)) from None
        except TokensFileError as exc:
            # The file's own message names the file, not the setting that names it.
            raise AuthSetupError(f"security.tokens_file: {exc}") from None
        self._certificates_identify = self._tokens is None and security.tls_client_ca_file is not None
        # Mutual TLS admits only callers whose certificate its CA signed.
        self._certificates_checked = security.tls_client_ca_file is not None
        self._health_open = security.health_open
        self._max_message_size = max_message_size
        self._calls = ConcurrencyGate(limits.max_concurrent_calls, "limits.max_concurrent_calls", "calls")
        self._streams = ConcurrencyGate(
            limits.max_concurrent_streams, "limits.max_concurrent_streams", "streaming calls"
        )
        self._health_watches = ConcurrencyGate(
            limits.max_concurrent_streams, "limits.max_concurrent_streams", "health Watch streams"
        )
        # (method, identity or None, token digest or None) -> (the handler wrapped, its wrapper).
        # Identities come from the tokens file and a reload drops those it no longer has, so
        # the table is bounded by methods x token holders.
        self._admitted_handlers: dict[_HandlerKey, tuple[Handler, Handler]] = {}
        self._open_streams: set[_OpenStream] = set()
        self._reloading = asyncio.Lock()
        self._revokers: list[Callable[[TokenTable], int]] = []
        self._refused = refused
        self._metrics = metrics
        self._audit = audit
        # Whether the tokens file's last read applied it, and when one last did (wall clock, for
        # /metrics); the start's read applied it, or the start failed.
        self._reload: tuple[bool, float] | None = None if self._tokens is None else (True, time.time())

    @property
    def tokens_reload(self) -> tuple[bool, float] | None:
        """(whether the last read of the tokens file applied it, when one last did); None without
        a tokens file."""
        return self._reload

    @property
    def roles(self) -> dict[str, Role]:
        """The role each served method path needs."""
        return self._roles

    @property
    def tokens(self) -> TokenFile | None:
        """The daemon's tokens (None without a tokens file); the dashboard checks the same ones."""
        return self._tokens

    @property
    def calls(self) -> ConcurrencyGate:
        """The calls in flight counted against limits.max_concurrent_calls; the HTTP inference
        listener's requests take their slots here too."""
        return self._calls

    @property
    def token_holders(self) -> list[str]:
        return [] if self._tokens is None else self._tokens.table.names

    def also_revoke(self, revoker: Callable[[TokenTable], int]) -> None:
        """Have each reload also call `revoker(new table)`, which ends what the new tokens no
        longer allow elsewhere (the dashboard's requests) and says how many it ended."""
        self._revokers.append(revoker)

    async def reload_tokens(self, trigger: str) -> None:
        """Read the tokens file again and apply it; log what changed by name, or why the file
        cannot be used (the tokens in use then stay as they were)."""
        tokens = self._tokens
        if tokens is None:
            return
        async with self._reloading:
            fields: dict[str, Any] = {"trigger": trigger, "tokens_file": str(tokens.path)}
            try:
                changes = await asyncio.to_thread(tokens.reload)
            except TokensFileError as exc:
                log.error(
                    "tokens file not applied: the tokens in use stay as they were until it is fixed",
                    extra={**fields, "error": str(exc), "tokens": len(tokens.table.names)},
                )
                if self._reload is not None:
                    self._reload = (False, self._reload[1])
                return
            self._reload = (True, time.time())
            if not changes:
                log.info("tokens file read again: no change", extra=fields)
                return
            table = tokens.table
            self._admitted_handlers = {
                key: value
                for key, value in self._admitted_handlers.items()
                if key[2] is None or table.identify_digest(key[2]) == key[1]
            }
            ended = self._end_revoked_streams(table) + sum(revoke(table) for revoke in self._revokers)
            log.info(
                "tokens reloaded",
                extra={
                    **fields,
                    "added": list(changes.added),
                    "removed": list(changes.removed),
                    "role_changed": list(changes.role_changed),
                    "replaced": list(changes.replaced),
                    "expiry_changed": list(changes.expiry_changed),
                    "tokens": len(table.names),
                    "streams_ended": ended,
                },
            )

    def _end_revoked_streams(self, table: TokenTable) -> int:
        """End each open stream whose token `table` no longer admits to its RPC (re-arming the
        expiry timers of the others, whose expiry may have moved); how many ended."""
        ended = 0
        now = utc_now()
        for stream in list(self._open_streams):
            if stream.refusal is not None:
                continue
            refusal = stream.refusal_under(table, now)
            if refusal is None:
                if stream.streaming:
                    self._watch_expiry(stream, table)
                continue
            ended += 1
            _end_stream(stream, refusal)
        return ended

    def _watch_expiry(self, stream: _OpenStream, table: TokenTable) -> None:
        """Arm the timer that ends `stream` when its token expires under `table` (none when it
        never does), replacing the one it had."""
        if stream.expiry_timer is not None:
            stream.expiry_timer.cancel()
            stream.expiry_timer = None
        identity = table.identify_digest(stream.digest)
        if identity is None or identity.expires is None:
            return
        delay = max(0.0, (identity.expires - utc_now()).total_seconds())
        stream.expiry_timer = asyncio.get_running_loop().call_later(delay, self._on_expiry, stream)

    def _on_expiry(self, stream: _OpenStream) -> None:
        stream.expiry_timer = None
        tokens = self._tokens
        if tokens is None or stream.refusal is not None or stream not in self._open_streams:
            return
        refusal = stream.refusal_under(tokens.table, utc_now())
        if refusal is None:
            # The loop's clock ran ahead of the wall clock, or a reload moved the expiry.
            self._watch_expiry(stream, tokens.table)
            return
        log.info("token expired: its stream ended", extra={"rpc": stream.rpc})
        _end_stream(stream, refusal)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        return self.handler_for(await continuation(handler_call_details), handler_call_details)

    def handler_for(
        self, handler: Handler | None, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """The handler a call gets: `handler` admitted (wrapped) or a refusal; None stays None
        (an unknown method). Plain code, so a chain of interceptors can call it in line."""
        if handler is None:
            return handler
        method = handler_call_details.method
        if self._tokens is None:
            # Without tokens the decision depends on the method alone: a cached wrapper means
            # the method has a role and was admitted before.
            cached = self._admitted_handlers.get((method, None, None))
            if cached is not None and cached[0] is handler:
                return cached[1]
        required = self._roles.get(method)
        if required is None:
            return _refusal(
                handler,
                self._refusal_counter(method),
                self._refused,
                method,
                self._warner(method, grpc.StatusCode.PERMISSION_DENIED, "no role", None),
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.lstrip('/')} has no role in this tesserad's role table, so no caller may use it",
            )
        is_health = method in HEALTH_METHODS
        # A probe's one-shot check is never turned away; a Watch holds a stream open like any
        # other, so it counts (open to callers without a token, uncounted it would be unbounded),
        # apart from the other calls (counted with them, anyone could take every slot from the
        # token holders).
        limited = not is_health or bool(handler.response_streaming)
        if self._tokens is None or (is_health and self._health_open):
            return self._admitted(handler, method, None, None, required, limited=limited)

        token, problem = _bearer_token(handler_call_details.invocation_metadata)
        digest = None if token is None else token_digest(token)
        identity = None if digest is None else self._tokens.table.identify_digest(digest)
        if identity is None:
            return _refusal(
                handler,
                self._refusal_counter(method),
                self._refused if self._certificates_checked else None,
                method,
                self._warner(
                    method,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no token" if token is None else "unknown token",
                    None,
                ),
                grpc.StatusCode.UNAUTHENTICATED,
                problem
                or "the token is not valid for this tesserad (mistyped, or removed from its tokens "
                "file); ask the operator for a token made with `tesserad tokens add`",
            )
        if identity.expires is not None and identity.expired(utc_now()):
            return _refusal(
                handler,
                self._refusal_counter(method),
                self._refused,
                method,
                self._warner(method, grpc.StatusCode.UNAUTHENTICATED, "expired token", identity.name),
                grpc.StatusCode.UNAUTHENTICATED,
                expired_message(identity),
            )
        if identity.role < required:
            return _refusal(
                handler,
                self._refusal_counter(method),
                self._refused,
                method,
                self._warner(method, grpc.StatusCode.PERMISSION_DENIED, "role", identity.name),
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.lstrip('/')} needs the {required.label} role; the token {identity.name!r} has "
                f"the {identity.role.label} role",
            )
        return self._admitted(handler, method, identity, digest, required, limited=limited)

    def _warner(
        self, method: str, code: grpc.StatusCode, reason: str, caller_name: str | None
    ) -> WarnRefusal | None:
        """What logs a call of `method` refused here with `code` for `reason`; None without audit."""
        audit = self._audit
        if audit is None:
            return None
        rpc = method.lstrip("/")

        def warn(context: Context) -> None:
            # What an unknown caller says it is is not to be believed (see ReplicaRefusals).
            replica = None if caller_name is None else _replica_of(context)
            audit.refused(rpc, caller_name, context.peer(), code.name, reason, replica=replica)

        return warn

    def _refusal_counter(self, method: str) -> CountRefusal | None:
        """What counts a call of `method` refused here; None without metrics. `method` is one this
        daemon serves (gRPC answers any other itself), so a caller cannot add label values."""
        if self._metrics is None:
            return None
        return self._metrics.rpc_recorder(*split_method(method)).refused

    def _admitted(
        self,
        handler: Handler,
        method: str,
        identity: Identity | None,
        digest: bytes | None,
        required: Role,
        limited: bool,
    ) -> Handler:
        """`handler` wrapped for `identity`, from the cache when `handler` is the one it wraps."""
        key = (method, identity, digest)
        cached = self._admitted_handlers.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapper = self._wrap(handler, method, identity, digest, required, limited)
        self._admitted_handlers[key] = (handler, wrapper)
        return wrapper

    def _wrap(
        self,
        handler: Handler,
        method: str,
        identity: Identity | None,
        digest: bytes | None,
        required: Role,
        limited: bool,
    ) -> Handler:
        """`handler` wrapped to bind the caller, count it against the limits and (de)serialise;
        a stream opened with a token is tracked while it lasts, so a reload can end it.

        The per-call steps are plain functions that raise domain errors; the wrapper awaits
        `context.abort` only on a refusal, so an admitted call pays no extra awaits.
        """
        streaming = bool(handler.request_streaming or handler.response_streaming)
        gates: tuple[ConcurrencyGate, ...] = ()
        if limited and method in HEALTH_METHODS:
            gates = (self._health_watches,)
        elif limited:
            gates = (self._calls, self._streams) if streaming else (self._calls,)
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        caller_name = None if identity is None else identity.name
        # Only a health probe is admitted without an identity when there are tokens.
        role = identity.role if identity is not None else Role.ADMIN if self._tokens is None else Role.READER
        certificates_identify = self._certificates_identify
        max_size = self._max_message_size
        rpc = method.lstrip("/")
        open_streams = self._open_streams
        tokens = self._tokens
        tracked_digest = digest if streaming or method in REVOKED_IN_FLIGHT else None
        expires = streaming and identity is not None and identity.expires is not None
        # The tokens under which a unary call through this wrapper was last admitted: until a
        # reload swaps them, the next call's check in handler_for stands (every call here has the
        # same token and RPC), so it skips a second scan of the table.
        admitted_under: list[TokenTable | None] = [None]
        count_refusal = self._refusal_counter(method)

        async def refuse(refusal: _Refused, context: Context) -> NoReturn:
            if count_refusal is not None:
                count_refusal(refusal.code.name)
            await context.abort(refusal.code, refusal.message)

        async def refuse_request(exc: InvalidArgument | ResourceExhausted, context: Context) -> NoReturn:
            """Refuse a request that `decode` did not take; counted as the other refusals here,
            since the call interceptor inside never sees it."""
            await refuse(_Refused(status_for(exc), exc.message), context)

        def enter(context: Context) -> _OpenStream | None:
            """Bind the caller and count the call in, or raise _Refused (nothing counted) when the
            limits are reached. The stream's record when it is tracked for revocation."""
            if caller_name is not None:
                _CALLER.set(caller_name)
            elif certificates_identify:
                _CALLER.set(_certificate_name(context))
            _CALLER_ROLE.set(role)
            for index, gate in enumerate(gates):
                try:
                    gate.enter()
                except ResourceExhausted as exc:
                    for entered in gates[:index]:
                        entered.leave()
                    raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message) from None
            if tracked_digest is None or tokens is None:
                return None
            stream = _OpenStream(asyncio.current_task(), tracked_digest, required, rpc, streaming)
            # The token was checked before the request was read; a reload may have come between.
            table = tokens.table
            if streaming or table is not admitted_under[0]:
                refusal = stream.refusal_under(table, utc_now())
                if refusal is not None:
                    for gate in gates:
                        gate.leave()
                    raise _Refused(*refusal)
                admitted_under[0] = table
            open_streams.add(stream)
            _OPEN_STREAM.set(stream)
            if expires:
                self._watch_expiry(stream, table)
            return stream

        def leave(stream: _OpenStream | None) -> None:
            for gate in gates:
                gate.leave()
            if stream is not None:
                open_streams.discard(stream)
                if stream.expiry_timer is not None:
                    stream.expiry_timer.cancel()

        smaller = _SMALLER_REQUEST.get(method, "send large data in chunks (the SDK's upload calls do)")

        def decode(raw: bytes) -> Any:
            if len(raw) > max_size:
                raise ResourceExhausted(
                    f"the request to {rpc} is {format_size(len(raw))}, over max_message_size = "
                    f"{format_size(max_size)}; {smaller}, or ask the operator to raise "
                    "max_message_size (env TESSERA_MAX_MESSAGE_SIZE)"
                )
            if deserialize is None:
                return raw
            try:
                return deserialize(raw)
            except DecodeError:
                raise InvalidArgument(
                    f"the request to {rpc} is not a valid protobuf message of its request type; "
                    "check that the client was built from the same .proto files as this tesserad"
                ) from None

        def encode(response: Any) -> Any:
            # The call interceptor inside has encoded it (and counted a refusal), when there is one.
            return encoded(response, serialize, max_size, rpc)

        def decoded_stream(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async def generate() -> AsyncIterator[Any]:
                async for raw in requests:
                    # Raised inside the servicer's loop; the call interceptor maps it.
                    yield decode(raw)

            return generate()

        inner_writer = aio_handlers.writing_stream(handler)
        if inner_writer is not None:
            request_streaming = handler.request_streaming

            async def writing(raw: Any, context: Context) -> None:
                try:
                    stream = enter(context)
                except _Refused as exc:
                    await refuse(exc, context)
                try:
                    if request_streaming:
                        request = decoded_stream(raw)
                    else:
                        try:
                            request = decode(raw)
                        except (InvalidArgument, ResourceExhausted) as exc:
                            await refuse_request(exc, context)
                    await inner_writer(request, context)
                except asyncio.CancelledError:
                    await _end_if_refused(stream, context)
                    raise
                finally:
                    leave(stream)

            # Its responses go out through context.write, which serialises with the handler's
            # serializer; gRPC's send limit (set to max_message_size) bounds them.
            return aio_handlers.handler_factory(handler)(writing, response_serializer=serialize)

        inner_uu = aio_handlers.unary_unary(handler)
        if inner_uu is not None:

            async def unary_unary(raw: bytes, context: Context) -> Any:
                try:
                    stream = enter(context)
                except _Refused as exc:
                    await refuse(exc, context)
                try:
                    try:
                        request = decode(raw)
                    except (InvalidArgument, ResourceExhausted) as exc:
                        await refuse_request(exc, context)
                    response = await inner_uu(request, context)
                    try:
                        return encode(response)
                    except ResourceExhausted as exc:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
                except asyncio.CancelledError:
                    await _end_if_refused(stream, context)
                    raise
                finally:
                    leave(stream)

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        inner_su = aio_handlers.stream_unary(handler)
        if inner_su is not None:

            async def stream_unary(requests: AsyncIterator[bytes], context: Context) -> Any:
                try:
                    stream = enter(context)
                except _Refused as exc:
                    await refuse(exc, context)
                try:
                    response = await inner_su(decoded_stream(requests), context)
                    try:
                        return encode(response)
                    except ResourceExhausted as exc:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
                except asyncio.CancelledError:
                    await _end_if_refused(stream, context)
                    raise
                finally:
                    leave(stream)

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        inner_us = aio_handlers.unary_stream(handler)
        if inner_us is not None:

            async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
                try:
                    stream = enter(context)
                except _Refused as exc:
                    await refuse(exc, context)
                try:
                    try:
                        request = decode(raw)
                    except (InvalidArgument, ResourceExhausted) as exc:
                        await refuse_request(exc, context)
                    async for data in _sent(inner_us(request, context), encode, stream, context):
                        yield data
                except asyncio.CancelledError:
                    await _end_if_refused(stream, context)
                    raise
                finally:
                    leave(stream)

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        inner_ss = aio_handlers.stream_stream(handler)
        assert inner_ss is not None, f"{rpc} has no behaviour"

        async def stream_stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            try:
                stream = enter(context)
            except _Refused as exc:
                await refuse(exc, context)
            try:
                async for data in _sent(inner_ss(decoded_stream(requests), context), encode, stream, context):
                    yield data
            except asyncio.CancelledError:
                await _end_if_refused(stream, context)
                raise
            finally:
                leave(stream)

        return grpc.stream_stream_rpc_method_handler(stream_stream)


_HandlerKey = tuple[str, Identity | None, bytes | None]
# Counts one call of an RPC refused here by its status code's name (CallRecorder.refused).
CountRefusal = Callable[[str], None]
# Logs one call refused here, given its context.
WarnRefusal = Callable[[Context], None]


def _replica_of(context: Context) -> str | None:
    """The address a replica calling names itself by (REPLICA_HEADER), as it says: None for
    another caller."""
    for key, value in context.invocation_metadata() or ():
        if key == REPLICA_HEADER and isinstance(value, str):
            return value[:MAX_ADDRESS_CHARS]
    return None


class _OpenStream:
    """A streaming call (or one of REVOKED_IN_FLIGHT) made with a token, while it lasts: what a
    reload needs to end it."""

    __slots__ = (
        "digest",
        "expiry_timer",
        "refusal",
        "required",
        "rpc",
        "sending",
        "streaming",
        "task",
    )

    def __init__(
        self, task: asyncio.Task[Any] | None, digest: bytes, required: Role, rpc: str, streaming: bool
    ) -> None:
        assert task is not None, "a gRPC call's handler runs in its own task"
        self.task = task
        self.digest = digest
        self.required = required
        self.rpc = rpc
        # Only a stream ends when its token expires; a unary call was checked when it came.
        self.streaming = streaming
        # True while a response it yielded is with gRPC, on its way out.
        self.sending = False
        # The status the stream ends with, once a reload (or its token's expiry) has revoked it.
        self.refusal: tuple[grpc.StatusCode, str] | None = None
        # Ends the stream when its token expires; None when the token never does.
        self.expiry_timer: asyncio.TimerHandle | None = None

    def _what(self) -> str:
        """How a refusal names the call's token."""
        if self.streaming:
            return f"this {self.rpc} stream was opened with"
        return f"this {self.rpc} call was sent with"

    def refusal_under(self, table: TokenTable, now: datetime.datetime) -> tuple[grpc.StatusCode, str] | None:
        """The status ending this stream if `table` were the tokens at `now`, or None when it
        admits it."""
        identity = table.identify_digest(self.digest)
        if identity is None:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                f"the token {self._what()} was removed from the tesserad's tokens file (or replaced); "
                "make the call again with a valid token",
            )
        if identity.expired(now):
            return (grpc.StatusCode.UNAUTHENTICATED, f"{expired_message(identity)}; {self._what()} it")
        if identity.role < self.required:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{self.rpc} needs the {self.required.label} role; the token "
                f"{identity.name!r} now has the {identity.role.label} role",
            )
        return None


def expired_message(identity: Identity) -> str:
    """What a caller presenting `identity`'s expired token is told."""
    assert identity.expires is not None
    return (
        f"the token {identity.name!r} expired at {format_time(identity.expires)}; ask the "
        "operator for a new one (`tesserad tokens add`)"
    )


def _end_stream(stream: _OpenStream, refusal: tuple[grpc.StatusCode, str]) -> None:
    """End `stream` with `refusal`: at once when it waits, after its send when it sends."""
    stream.refusal = refusal
    if stream.sending:
        # Cancelling now would land in gRPC's send, which ends the call as CANCELLED;
        # the stream checks its refusal as soon as the send is done.
        asyncio.get_running_loop().call_later(REVOKED_SEND_GRACE_S, stream.task.cancel)
    else:
        stream.task.cancel()


class _Refused(Exception):
    """A call turned away as it begins: the status and message it ends with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _sent(
    responses: AsyncIterator[Any],
    encode: Callable[[Any], bytes],
    stream: _OpenStream | None,
    context: Context,
) -> AsyncIterator[bytes]:
    """A streaming call's responses, encoded (RESOURCE_EXHAUSTED past the send limit); a stream
    whose token a reload refused while a response went out ends once that response is sent."""
    async for response in responses:
        try:
            data = encode(response)
        except ResourceExhausted as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
        if stream is None:
            yield data
            continue
        stream.sending = True
        yield data
        stream.sending = False
        if stream.refusal is not None:
            await context.abort(*stream.refusal)


async def _end_if_refused(stream: _OpenStream | None, context: Context) -> None:
    """After a CancelledError: when a reload cancelled the call, end it with its refusal instead
    (the client would otherwise see CANCELLED); otherwise return, and the caller re-raises."""
    if stream is None or stream.refusal is None:
        return
    # Cancelled inside an abort already under way (a servicer's error, mapped by the call
    # interceptor): that status goes out, and gRPC refuses a second abort with UsageError.
    if context.done():
        return
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    await context.abort(*stream.refusal)


def _bearer_token(metadata: Iterable[Any] | None) -> tuple[str | None, str | None]:
    """(token, None) from `authorization: Bearer <token>`, or (None, what is wrong)."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None, (
            "this tesserad needs a token: send the metadata 'authorization: Bearer <token>' "
            "(tessera CLI: --token or TESSERA_TOKEN)"
        )
    scheme, _, token = str(values[0]).strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "the authorization metadata must be 'Bearer <token>'"
    return token.strip(), None


def _certificate_name(context: Context) -> str:
    names = list(context.auth_context().get("x509_common_name") or context.peer_identities() or [])
    return f"cert:{names[0].decode(errors='replace')}" if names else "cert:unknown"


def _refusal(
    handler: Handler,
    count_refusal: CountRefusal | None,
    refused: ErrorListener | None,
    method: str,
    warn: WarnRefusal | None,
    code: grpc.StatusCode,
    message: str,
) -> Handler:
    """A handler of the call's response kind that refuses it without reading the request,
    counting it with `count_refusal`, logging it with `warn` and telling `refused` first.

    Declared request-streaming whatever the RPC is, so gRPC never receives or parses the
    request of a caller we turn away.
    """

    if handler.response_streaming:

        async def refuse_stream(requests: Any, context: Context) -> AsyncIterator[bytes]:
            if count_refusal is not None:
                count_refusal(code.name)
            if warn is not None:
                warn(context)
            if refused is not None:
                refused(context, method, code, message)
            await context.abort(code, message)
            yield b""  # unreachable; makes this an async generator, as a streaming handler must be

        return grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def refuse(requests: Any, context: Context) -> None:
        if count_refusal is not None:
            count_refusal(code.name)
        if warn is not None:
            warn(context)
        if refused is not None:
            refused(context, method, code, message)
        await context.abort(code, message)

    return grpc.stream_unary_rpc_method_handler(refuse)


__all__ = [
    "ANONYMOUS",
    "AuthInterceptor",
    "AuthSetupError",
    "caller",
    "caller_role",
    "presented_authorization",
]

"""Audit lines: who changed what, and who was turned away; written by the logger `tesserad.audit`.

- Each call of an RPC that changes state (one whose role is above reader in the role table, less
  AUDIT_EXEMPT) logs one INFO line when it ends, `write call`, with the RPC, the caller (its
  token's name, "cert:<CN>" or "anonymous"), the peer, the objects its request (and a unary
  answer) names (`objects`, as {"model": "m", "version": 3}) and the status code. Only the code: a failure's message may quote what the
  caller sent. Read calls (Predict, ModelInfer and every other reader RPC) log nothing. The
  setting `log_audit` (default true) turns these lines off. The OIP HTTP listener's writes log the
  same line with the HTTP status and the request's X-Request-ID.
- A call refused for its credentials (UNAUTHENTICATED, PERMISSION_DENIED; HTTP 401 and 403 of
  both HTTP listeners, but the dashboard's login prompt) or for a full disk logs a WARNING, whatever `log_audit` says: at most one a REFUSAL_WINDOW_S per
  peer host and reason, the next one counting those left out (`suppressed`), so a client retrying
  with a bad token cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from tesserad.api.aio_handlers import Context, StreamResponse, UnaryResponse
from tesserad.api.errors import status_for
from tesserad.errors import TesseraError

log = logging.getLogger("tesserad.audit")

REFUSAL_WINDOW_S = 10.0
# Peers and reasons remembered at most; the oldest is forgotten first.
REFUSAL_KEYS_LIMIT = 1024

# Writes that come as a stream of data points, as Predict is a stream of reads: a line each would
# drown the log (an external trainer logs metrics every step).
AUDIT_EXEMPT = frozenset(
    {
        "/tessera.v1.Training/LogMetrics",
        "/tessera.v1.Training/LogMetricsStream",
    }
)

# The fields that name what a call acts on, read from the request, from its `header`, `source` or
# `target` message, and from a unary answer (a new version's number, a submitted job's id).
_TARGET_FIELDS = (
    "model",
    "model_name",
    "name",
    "version",
    "alias",
    "dataset",
    "experiment",
    "job_id",
    "run_id",
    "sweep_id",
)
_NESTED = ("header", "source", "target")
_MAX_VALUE_CHARS = 200


def targets(message: Any, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """The objects `message` names (its set fields of _TARGET_FIELDS, its nested ones'), added to
    `into` where it lacks them."""
    found = {} if into is None else into
    if not isinstance(message, Message):
        return found
    for outer in (message, *(_nested(message, name) for name in _NESTED)):
        if outer is None:
            continue
        for field, value in outer.ListFields():
            if field.name in _TARGET_FIELDS and field.name not in found and isinstance(value, str | int):
                found[field.name] = value[:_MAX_VALUE_CHARS] if isinstance(value, str) else value
    return found


def _nested(message: Message, name: str) -> Message | None:
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None or field.message_type is None or not message.HasField(name):
        return None
    nested: Message = getattr(message, name)
    return nested


def host_of(peer: str) -> str:
    """The host of a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") or an HTTP remote: the
    port changes with each connection, so refusals are counted per host."""
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    host, colon, port = address.rpartition(":")
    return host if colon and port.isdigit() and ":" not in host else address


class RefusalWarnings:
    """At most one WARNING per (peer host, reason) per `window_s`; thread-safe."""

    def __init__(
        self,
        window_s: float = REFUSAL_WINDOW_S,
        limit: int = REFUSAL_KEYS_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # (host, reason) -> [when its last line was written, lines left out since]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def warn(self, message: str, peer: str, reason: str, fields: Mapping[str, Any]) -> bool:
        """Log `message` with `fields` unless this peer's host had a line for `reason` within the
        window; whether it was logged."""
        key = (host_of(peer), reason)
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self._window_s:
                entry[1] += 1
                return False
            suppressed = 0 if entry is None else int(entry[1])
            self._seen.pop(key, None)
            self._seen[key] = [now, 0]
            if len(self._seen) > self._limit:
                del self._seen[next(iter(self._seen))]
        log.warning(message, extra={**fields, "peer": peer, "reason": reason, "suppressed": suppressed})
        return True


class Audit:
    """The daemon's audit lines; `writes`: whether successful and failed writes are logged."""

    def __init__(self, writes: bool, refusals: RefusalWarnings | None = None) -> None:
        self.writes = writes
        self._refusals = RefusalWarnings() if refusals is None else refusals

    def wrote(
        self, rpc: str, caller: str, peer: str, objects: Mapping[str, Any], code: str, **named: str | None
    ) -> None:
        """A write call ended with `code`; `named`: more fields, those None left out (an HTTP
        request's X-Request-ID)."""
        fields: dict[str, Any] = {
            "rpc": rpc,
            "caller": caller,
            "peer": peer,
            "objects": dict(objects),
            "code": code,
        }
        fields.update((key, value) for key, value in named.items() if value is not None)
        log.info("write call", extra=fields)

    def refused(
        self, rpc: str, caller: str | None, peer: str, code: str, reason: str, **named: str | None
    ) -> None:
        """A call turned away for its credentials: `reason` says which check failed (no token,
        unknown token, expired token, role); `named`: more fields, those None left out (a
        replica's own address, an HTTP request's listener and X-Request-ID)."""
        fields: dict[str, Any] = {"rpc": rpc, "code": code}
        if caller is not None:
            fields["caller"] = caller
        fields.update((key, value) for key, value in named.items() if value is not None)
        self._refusals.warn("call refused", peer, reason, fields)

    def disk_full(self, rpc: str, caller: str, peer: str) -> None:
        self._refusals.warn(
            "write refused: no room on the data directory's disk",
            peer,
            "disk full",
            {"rpc": rpc, "caller": caller, "code": "RESOURCE_EXHAUSTED"},
        )


def outcome(exc: BaseException, context: Context, revoked: Callable[[], str | None]) -> str:
    """The status code name a call that raised `exc` ends with. `revoked`: the status a reload
    of the tokens file (or its token's expiry) ends the call with once it revoked it, or None; the
    revocation cancels the call's task, but its client gets that status, not CANCELLED."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return revoked() or "CANCELLED"
    if isinstance(exc, TesseraError):
        return status_for(exc).name
    return "INTERNAL"


Caller = Callable[[Context], str]
Revoked = Callable[[], str | None]


def audited_unary(
    inner: UnaryResponse,
    rpc: str,
    audit: Audit,
    caller: Caller,
    request_streaming: bool,
    revoked: Revoked,
) -> UnaryResponse:
    """`inner` (a behaviour awaited for its one answer, or one writing its answers) logging its
    call's audit line as it ends."""

    async def behaviour(request: Any, context: Context) -> Any:
        # Read before the call: grpc.aio's context of a call the client cancelled crashed the
        # process (SIGSEGV in cygrpc) when its peer was read after the cancellation.
        who, peer = caller(context), context.peer()
        objects: dict[str, Any] = {}
        if request_streaming:
            request = _first_noted(request, objects)
        else:
            targets(request, objects)
        try:
            response = await inner(request, context)
        except BaseException as exc:
            audit.wrote(rpc, who, peer, objects, outcome(exc, context, revoked))
            raise
        audit.wrote(rpc, who, peer, targets(response, objects), "OK")
        return response

    return behaviour


def audited_stream(
    inner: StreamResponse,
    rpc: str,
    audit: Audit,
    caller: Caller,
    request_streaming: bool,
    revoked: Revoked,
) -> StreamResponse:
    """`inner` (a behaviour streaming its answers) logging its call's audit line as it ends."""

    async def behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
        who, peer = caller(context), context.peer()  # before the call, as audited_unary's
        objects: dict[str, Any] = {}
        if request_streaming:
            request = _first_noted(request, objects)
        else:
            targets(request, objects)
        try:
            async for item in inner(request, context):
                yield item
        except BaseException as exc:
            audit.wrote(rpc, who, peer, objects, outcome(exc, context, revoked))
            raise
        audit.wrote(rpc, who, peer, objects, "OK")

    return behaviour


def _first_noted(requests: AsyncIterator[Any], objects: dict[str, Any]) -> AsyncIterator[Any]:
    """`requests` as they come, the objects the first names noted in `objects` (an upload's
    header comes first)."""

    async def generate() -> AsyncIterator[Any]:
        first = True
        async for request in requests:
            if first:
                targets(request, objects)
                first = False
            yield request

    return generate()

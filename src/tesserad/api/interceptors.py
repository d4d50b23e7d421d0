"""Cross-cutting call handling, applied once to every RPC of every service.

`CallInterceptor` wraps each handler so that:
- a domain error (tesserad.errors) becomes its status code and message, from the one table;
- any other exception becomes INTERNAL with an error id that is logged with the traceback,
  while the client sees only the id (no internals leak);
- every call's latency and final status code are recorded in the Prometheus metrics;
- a listener, when given, is told of each call a domain error ends (a primary notes there the
  calls it refuses its replicas: tesserad.replica.refusals);
- each call of an audited (state-changing) RPC logs its audit line as it ends, and a write the
  full disk refused its rate-limited WARNING (tesserad.api.audit); reads pay nothing for it.

`ServerInterceptor`, the daemon server's one interceptor, runs AuthInterceptor and then this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from tesserad.api import aio_handlers
from tesserad.api.aio_handlers import Context, ErrorListener, Handler, split_method
from tesserad.api.audit import Audit, audited_stream, audited_unary
from tesserad.api.auth import AuthInterceptor, caller, encoded, revoked_code
from tesserad.api.errors import status_for, trailers_for
from tesserad.errors import NoSpace, TesseraError, answered_message, logged_internal
from tesserad.metrics import DaemonMetrics
from tesserad.serving.service import CallCounter

log = logging.getLogger(__name__)


def _status_of(exc: Exception) -> grpc.StatusCode:
    return status_for(exc) if isinstance(exc, TesseraError) else grpc.StatusCode.INTERNAL


async def _abort_for(exc: Exception, context: Context, rpc: str) -> NoReturn:
    """Abort the call with `exc`'s status: a domain error's message, else an error id only."""
    if isinstance(exc, TesseraError):
        trailers = trailers_for(exc)
        if trailers:
            # Not as abort's argument: abort without one keeps those the handler set before.
            context.set_trailing_metadata(trailers)
        await context.abort(status_for(exc), answered_message(log, rpc, exc))
    await context.abort(grpc.StatusCode.INTERNAL, logged_internal(log, rpc, exc).message)


def _code_name(context: Context) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each RPC's handler once and reuses the wrapper: gRPC asks for a handler on every
    call, and building closures and a handler per call cost ~15 us of the daemon's one thread."""

    def __init__(
        self,
        metrics: DaemonMetrics,
        max_message_size: int,
        calls: CallCounter | None = None,
        failed: ErrorListener | None = None,
        audit: Audit | None = None,
        audited: frozenset[str] = frozenset(),
    ) -> None:
        """`failed`: told of each call that a domain error ends. Responses are encoded here, so
        that one over `max_message_size` is counted RESOURCE_EXHAUSTED, as its client gets it.
        `audit`: where refused writes, and with its `writes` on the calls of the methods
        `audited`, are logged."""
        self._metrics = metrics
        self._audit = audit
        self._audited = audited
        self._max_message_size = max_message_size
        self._failed = failed
        # Counts each call as it begins: inference holds requests for a burst on it.
        self._calls = calls
        # method -> (the handler wrapped, its wrapper)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        return self.handler_for(await continuation(handler_call_details), handler_call_details.method)

    def handler_for(self, handler: Handler | None, method: str) -> Handler | None:
        """`handler` wrapped (None stays None: an unknown method); counts the call as begun.
        Called in the call's task, before its request is read."""
        if self._calls is not None:
            self._calls.begin()
        if handler is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapper = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapper)
        return wrapper

    def _wrap(self, handler: Handler, method: str) -> Handler:
        service, name = split_method(method)
        recorder = self._metrics.rpc_recorder(service, name)
        record = recorder.record
        rpc = f"{service}/{name}"
        clock = time.perf_counter
        failed = self._failed
        serialize = handler.response_serializer
        max_size = self._max_message_size
        audit = self._audit
        logs_writes = audit is not None and audit.writes and method in self._audited

        async def abort_for(exc: Exception, context: Context, start: float) -> NoReturn:
            """Abort with `exc`'s status and record the call: under that status once sent; when
            gRPC could not send it (its client cancelled meanwhile), a domain error as CANCELLED
            and a handler's bug as INTERNAL still, so that an alert on INTERNAL sees every bug."""
            if failed is not None and isinstance(exc, TesseraError):
                failed(context, method, status_for(exc), exc.message)
            if audit is not None and isinstance(exc, NoSpace):
                audit.disk_full(rpc, caller(context), context.peer())
            try:
                await _abort_for(exc, context, rpc)
            except (grpc.aio.InternalError, asyncio.CancelledError):
                # The cancel reached gRPC's core after the handler's last await (no
                # CancelledError came, and the status's send failed: gRPC drops that failure), or
                # while the status's send was awaited.
                record("CANCELLED" if isinstance(exc, TesseraError) else "INTERNAL", clock() - start)
                raise
            except BaseException:
                record(_status_of(exc).name, clock() - start)
                raise

        # A behaviour that streams with context.write is awaited like a unary one; its writes are
        # serialised by gRPC, whose send limit (set to max_message_size) bounds them.
        writer = aio_handlers.writing_stream(handler)
        inner = aio_handlers.unary_unary(handler) or aio_handlers.stream_unary(handler) or writer
        if inner is not None:
            if logs_writes:
                assert audit is not None
                inner = audited_unary(inner, rpc, audit, caller, handler.request_streaming, revoked_code)
            # gRPC encodes what a writer writes; the wrapper encodes any other's response.
            encode_with, grpc_encodes_with = (None, serialize) if writer is not None else (serialize, None)

            async def unary_response(request: Any, context: Context) -> Any:
                start = clock()
                try:
                    response = encoded(await inner(request, context), encode_with, max_size, rpc)
                except grpc.aio.AbortError:
                    record(_code_name(context), clock() - start)
                    raise
                except asyncio.CancelledError:
                    record(revoked_code() or "CANCELLED", clock() - start)
                    raise
                except Exception as exc:
                    await abort_for(exc, context, start)
                record("OK", clock() - start)
                return response

            return aio_handlers.handler_factory(handler)(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=grpc_encodes_with,
            )

        inner_stream = aio_handlers.unary_stream(handler) or aio_handlers.stream_stream(handler)
        assert inner_stream is not None, f"{method} has no behaviour"
        if logs_writes:
            assert audit is not None
            inner_stream = audited_stream(
                inner_stream, rpc, audit, caller, handler.request_streaming, revoked_code
            )

        async def stream_response(request: Any, context: Context) -> AsyncIterator[Any]:
            start = clock()
            try:
                async for item in inner_stream(request, context):
                    yield encoded(item, serialize, max_size, rpc)
            except grpc.aio.AbortError:
                record(_code_name(context), clock() - start)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                record(revoked_code() or "CANCELLED", clock() - start)
                raise
            except Exception as exc:
                await abort_for(exc, context, start)
            record("OK", clock() - start)

        return aio_handlers.handler_factory(handler)(
            stream_response, request_deserializer=handler.request_deserializer, response_serializer=None
        )


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """AuthInterceptor then CallInterceptor as one interceptor: the daemon's server has only this.

    gRPC runs each interceptor of a call as coroutines of its own (the interceptor's and a
    continuation's, with a functools.partial): finding a call's handler through the two took
    2.1 us of the event loop's thread hot, through this one 1.65 (0.5 with none; grpcio 1.85's
    `_find_method_handler` timed alone on the dev box), and more in the served path, where
    caches are cold.
    """

    def __init__(self, auth: AuthInterceptor, calls: CallInterceptor) -> None:
        self._auth = auth
        self._calls = calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = self._calls.handler_for(
            await continuation(handler_call_details), handler_call_details.method
        )
        # Auth wraps outermost, as when it ran first: a refused call reaches nothing else.
        return self._auth.handler_for(handler, handler_call_details)

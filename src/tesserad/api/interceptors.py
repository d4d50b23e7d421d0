"""Cross-cutting call handling, applied once to every RPC of every service.

`CallInterceptor` wraps each handler so that:
- a domain error (tesserad.errors) becomes its status code and message, from the one table;
- any other exception becomes INTERNAL with an error id that is logged with the traceback,
  while the client sees only the id (no internals leak);
- every call's latency and final status code are recorded in the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tesserad.api.errors import status_for
from tesserad.errors import TesseraError
from tesserad.metrics import DaemonMetrics

log = logging.getLogger(__name__)


def _split_method(full: str) -> tuple[str, str]:
    """ "/tessera.v1.Registry/GetModel" -> ("tessera.v1.Registry", "GetModel")."""
    _, service, method = full.split("/", 2)
    return service, method


class _CallOutcome:
    """Turns how a handler ended into a status, aborting the call where needed."""

    def __init__(self, metrics: DaemonMetrics, service: str, method: str) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method
        self._start = time.perf_counter()
        self.code = grpc.StatusCode.OK

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Abort the call for `exc` (always raises)."""
        if isinstance(exc, TesseraError):
            self.code = status_for(exc)
            await context.abort(self.code, exc.message)
        error_id = uuid.uuid4().hex[:12]
        self.code = grpc.StatusCode.INTERNAL
        log.error(
            "unexpected error in %s/%s",
            self._service,
            self._method,
            exc_info=exc,
            extra={"error_id": error_id},
        )
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (id {error_id}); the daemon's log has the details under that id",
        )

    def aborted(self, context: grpc.aio.ServicerContext) -> None:
        self.code = context.code() or grpc.StatusCode.UNKNOWN

    def finish(self) -> None:
        code = self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)
        self._metrics.observe_rpc(self._service, self._method, code, time.perf_counter() - self._start)


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        metrics = self._metrics
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                outcome = _CallOutcome(metrics, service, method)
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    outcome.aborted(context)
                    raise
                except asyncio.CancelledError:
                    outcome.code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    await outcome.fail(exc, context)
                finally:
                    outcome.finish()

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            outcome = _CallOutcome(metrics, service, method)
            try:
                async for item in inner_stream(request, context):
                    yield item
            except grpc.aio.AbortError:
                outcome.aborted(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                await outcome.fail(exc, context)
            finally:
                outcome.finish()

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            stream_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

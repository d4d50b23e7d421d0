"""An RpcMethodHandler's behaviours typed as grpc.aio runs them.

types-grpcio describes RpcMethodHandler for the synchronous server: behaviours take a
grpc.ServicerContext and plain iterators. Under grpc.aio they are coroutine functions or
async generators taking a grpc.aio.ServicerContext and async iterators of requests. These
accessors state that once, so the interceptors that wrap handlers are checked against what
really runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

# Strings: grpc's runtime classes are not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# The first argument is the request, or an async iterator of requests for request streaming.
UnaryResponse: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"
StreamResponse: TypeAlias = "Callable[[Any, Context], AsyncIterator[Any]]"
# Told of each call that ends in an error as it ends: (its context, its method's full name, the
# status code and the message the caller gets).
ErrorListener: TypeAlias = "Callable[[Context, str, grpc.StatusCode, str], None]"


def unary_unary(handler: Handler) -> UnaryResponse | None:
    return handler.unary_unary  # type: ignore[return-value]  # the stubs type the sync server


def stream_unary(handler: Handler) -> UnaryResponse | None:
    return handler.stream_unary  # type: ignore[return-value]  # the stubs type the sync server


def unary_stream(handler: Handler) -> StreamResponse | None:
    behaviour = handler.unary_stream
    return None if _writes(behaviour) else behaviour  # type: ignore[return-value]  # the stubs type the sync server


def stream_stream(handler: Handler) -> StreamResponse | None:
    behaviour = handler.stream_stream
    return None if _writes(behaviour) else behaviour  # type: ignore[return-value]  # the stubs type the sync server


def writing_stream(handler: Handler) -> UnaryResponse | None:
    """A response-streaming behaviour that sends with `context.write` and returns None (a
    coroutine function, not an async generator), as grpc_health's Watch does; else None."""
    behaviour = handler.unary_stream or handler.stream_stream
    return behaviour if _writes(behaviour) else None  # type: ignore[return-value]  # the stubs type the sync server


def _writes(behaviour: object) -> bool:
    return behaviour is not None and not inspect.isasyncgenfunction(behaviour)


def handler_factory(handler: Handler) -> Callable[..., Handler]:
    """The grpc function that makes a handler of `handler`'s kind (request and response arity)."""
    if handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler
        return grpc.stream_unary_rpc_method_handler
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler
    return grpc.unary_unary_rpc_method_handler


def split_method(full: str) -> tuple[str, str]:
    """ "/tessera.v1.Registry/GetModel" -> ("tessera.v1.Registry", "GetModel")."""
    _, service, method = full.split("/", 2)
    return service, method

"""An RpcMethodHandler's behaviours typed as grpc.aio runs them.

types-grpcio describes RpcMethodHandler for the synchronous server: behaviours take a
grpc.ServicerContext and plain iterators. Under grpc.aio they are coroutine functions or
async generators taking a grpc.aio.ServicerContext and async iterators of requests. These
accessors state that once, so the interceptors that wrap handlers are checked against what
really runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

# Strings: grpc's runtime classes are not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# The first argument is the request, or an async iterator of requests for request streaming.
UnaryResponse: TypeAlias = "Callable[[Any, Context], Awaitable[Any]]"
StreamResponse: TypeAlias = "Callable[[Any, Context], AsyncIterator[Any]]"


def unary_unary(handler: Handler) -> UnaryResponse | None:
    return handler.unary_unary  # type: ignore[return-value]  # the stubs type the sync server


def stream_unary(handler: Handler) -> UnaryResponse | None:
    return handler.stream_unary  # type: ignore[return-value]  # the stubs type the sync server


def unary_stream(handler: Handler) -> StreamResponse | None:
    return handler.unary_stream  # type: ignore[return-value]  # the stubs type the sync server


def stream_stream(handler: Handler) -> StreamResponse | None:
    return handler.stream_stream  # type: ignore[return-value]  # the stubs type the sync server

"""Servicers for contract RPCs whose feature is not built yet.

Every RPC of such a service answers UNIMPLEMENTED with a message naming the feature, rather
than gRPC's generic "Method not implemented!".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from tesserad.errors import Unimplemented


def _unary(message: str):
    async def handler(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return handler


def _streaming(message: str):
    async def handler(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield  # unreachable; it makes this an async generator, which gRPC needs for a stream

    return handler


def unimplemented_servicer(base: type, service: ServiceDescriptor, feature: str) -> Any:
    """An instance of `base` (a generated *Servicer) whose every RPC is UNIMPLEMENTED."""
    methods = {}
    for method in service.methods:
        message = (
            f"{service.name}.{method.name} is not available yet: {feature} is not built into this tesserad"
        )
        methods[method.name] = (_streaming if method.server_streaming else _unary)(message)
    return type(f"Unimplemented{service.name}Servicer", (base,), methods)()

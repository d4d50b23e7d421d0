"""`tessera.aio.Client`: the asyncio twin of `tessera.Client`, with the same parts and names.

    async with tessera.aio.Client("127.0.0.1:50051") as client:
        info = await client.system.info()
        async for model in client.models.list():
            ...

The parts are the blocking client's own classes on an asyncio connection: each method is
written once (see `tessera.calls`) and here returns a coroutine, an async iterator where
the blocking client returns an iterator, or a `tessera.AioListing` where it returns a `Listing`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from tessera.datasets import Datasets
from tessera.inference import Inference
from tessera.models import Models
from tessera.sweeps import Sweep
from tessera.system import System
from tessera.training import Job, Training
from tessera.transport import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    TLS,
    AioConnection,
    RetryPolicy,
    resolve_target,
)

__all__ = ["Client", "Datasets", "Inference", "Job", "Models", "Sweep", "System", "Training"]


class Client:
    """The asyncio client: `async with tessera.aio.Client(target) as client: ...`. Same
    arguments and parts as `tessera.Client`; create it inside a running event loop."""

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        keepalive: float | None = None,
    ) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # gRPC would bind the channel to another loop and fail every call with a riddle.
            raise RuntimeError(
                "tessera.aio.Client must be made inside a running event loop (in an async function, "
                "e.g. `async with tessera.aio.Client(...)`); use tessera.Client from blocking code"
            ) from None
        self._conn = AioConnection(
            resolve_target(target), token, tls, timeout, transfer_timeout, retry, keepalive=keepalive
        )
        self.models: Models[AioConnection] = Models(self._conn)
        self.datasets: Datasets[AioConnection] = Datasets(self._conn)
        self.training: Training[AioConnection] = Training(self._conn)
        self.inference: Inference[AioConnection] = Inference(self._conn)
        self.system: System[AioConnection] = System(self._conn)

    @property
    def target(self) -> str:
        """The daemon address this client talks to."""
        return self._conn.target

    @property
    def tls(self) -> TLS | None:
        """The TLS settings this client connects with (None: plaintext)."""
        return self._conn.tls

    async def close(self) -> None:
        """Close the channel."""
        await self._conn.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

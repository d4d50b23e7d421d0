"""Channels, credentials, deadlines, retries and error mapping, shared by every client part.

One `Op` describes a unary call (service, method, request, whether retrying it is safe, how
to turn the response into what the caller gets); `Connection` runs it on a blocking channel,
`AioConnection` on an asyncio one, with the same deadline and retry rules.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from tessera.errors import error_from_rpc
from tessera.v1 import (
    datasets_pb2_grpc,
    inference_pb2_grpc,
    registry_pb2_grpc,
    system_pb2_grpc,
    training_pb2_grpc,
)

T = TypeVar("T")

TOKEN_ENV = "TESSERA_TOKEN"
DEFAULT_TIMEOUT_S = 30.0
# Uploads and downloads move whole artifacts and datasets: a deadline sized for them.
DEFAULT_TRANSFER_TIMEOUT_S = 3600.0
MAX_MESSAGE_BYTES = 64 * 2**20

_STUBS: dict[str, type] = {
    "Registry": registry_pb2_grpc.RegistryStub,
    "Datasets": datasets_pb2_grpc.DatasetsStub,
    "Training": training_pb2_grpc.TrainingStub,
    "Inference": inference_pb2_grpc.InferenceStub,
    "System": system_pb2_grpc.SystemStub,
}


@dataclass(frozen=True)
class TLS:
    """TLS settings: the CA that signed the daemon's certificate (None: the system's roots),
    an optional client certificate and key for mutual TLS, and an optional name to check the
    server certificate against (when the address is an IP or differs from the cert's name)."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; ValueError when only one of cert_file and key_file is set."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS: a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls that fail UNAVAILABLE: exponential backoff with full jitter,
    at most `attempts` tries in all, always within the call's deadline."""

    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoff_s(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        # Full jitter spreads reconnecting clients apart after a daemon restart.
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Op(Generic[T]):
    """One unary call: `convert` turns the response message into the caller's result."""

    service: str
    method: str
    request: Message
    idempotent: bool
    convert: Callable[[Any], T] = field(default=lambda response: response)


def resolve_token(token: str | None) -> str | None:
    """The token given, else TESSERA_TOKEN from the environment, else None."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


def _channel_options(tls: TLS | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.primary_user_agent", "tessera-client/0.1"),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


class _Settings:
    """What both connections share: target, metadata, deadlines and the retry policy."""

    def __init__(
        self,
        target: str,
        token: str | None,
        tls: TLS | bool | None,
        timeout: float,
        transfer_timeout: float,
        retry: RetryPolicy,
    ) -> None:
        if timeout <= 0 or transfer_timeout <= 0:
            raise ValueError(f"timeouts must be > 0 seconds, got {timeout} and {transfer_timeout}")
        self.target = target
        self.tls = TLS() if tls is True else (tls or None)
        token = resolve_token(token)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self.retry = retry
        self.options = _channel_options(self.tls)

    def deadline(self, timeout: float | None, default: float) -> float:
        return time.monotonic() + (default if timeout is None else timeout)

    def should_retry(self, op: Op[Any], err: grpc.RpcError, tries: int, deadline: float) -> float | None:
        """Seconds to wait before retrying `op`, or None when it must not be retried."""
        if not op.idempotent or err.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            return None
        if tries >= self.retry.attempts:
            return None
        pause = self.retry.backoff_s(tries)
        return pause if time.monotonic() + pause < deadline else None


class Connection(_Settings):
    """A blocking channel to tesserad with the SDK's call rules."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(target, token, tls, timeout, transfer_timeout, retry or RetryPolicy())
        if self.tls is None:
            self.channel = grpc.insecure_channel(target, options=self.options)
        else:
            self.channel = grpc.secure_channel(target, self.tls.credentials(), options=self.options)
        self._stubs = {name: stub(self.channel) for name, stub in _STUBS.items()}

    def method(self, service: str, method: str) -> Any:
        return getattr(self._stubs[service], method)

    def call(self, op: Op[T], timeout: float | None = None) -> T:
        """Run a unary op within its deadline, retrying UNAVAILABLE when the op is idempotent."""
        deadline = self.deadline(timeout, self.timeout)
        rpc = self.method(op.service, op.method)
        tries = 0
        while True:
            tries += 1
            try:
                response = rpc(
                    op.request, timeout=max(0.0, deadline - time.monotonic()), metadata=self.metadata
                )
            except grpc.RpcError as err:
                pause = self.should_retry(op, err, tries, deadline)
                if pause is None:
                    raise error_from_rpc(err) from None
                time.sleep(pause)
                continue
            return op.convert(response)

    def server_stream(
        self, service: str, method: str, request: Message, timeout: float | None
    ) -> Iterator[Any]:
        """The responses of a server stream; errors raise as SDK exceptions; `timeout` None: no deadline."""
        call = self.method(service, method)(request, timeout=timeout, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        finally:
            call.cancel()

    def client_stream(self, service: str, method: str, requests: Iterable[Message], timeout: float) -> Any:
        try:
            return self.method(service, method)(iter(requests), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def close(self) -> None:
        self.channel.close()


class AioConnection(_Settings):
    """An asyncio channel to tesserad with the same call rules as `Connection`."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: TLS | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(target, token, tls, timeout, transfer_timeout, retry or RetryPolicy())
        if self.tls is None:
            self.channel = grpc.aio.insecure_channel(target, options=self.options)
        else:
            self.channel = grpc.aio.secure_channel(target, self.tls.credentials(), options=self.options)
        self._stubs = {name: stub(self.channel) for name, stub in _STUBS.items()}

    def method(self, service: str, method: str) -> Any:
        return getattr(self._stubs[service], method)

    async def call(self, op: Op[T], timeout: float | None = None) -> T:
        """Run a unary op within its deadline, retrying UNAVAILABLE when the op is idempotent."""
        deadline = self.deadline(timeout, self.timeout)
        rpc = self.method(op.service, op.method)
        tries = 0
        while True:
            tries += 1
            try:
                response = await rpc(
                    op.request, timeout=max(0.0, deadline - time.monotonic()), metadata=self.metadata
                )
            except grpc.RpcError as err:
                pause = self.should_retry(op, err, tries, deadline)
                if pause is None:
                    raise error_from_rpc(err) from None
                await asyncio.sleep(pause)
                continue
            return op.convert(response)

    async def server_stream(
        self, service: str, method: str, request: Message, timeout: float | None
    ) -> AsyncIterator[Any]:
        """The responses of a server stream; errors raise as SDK exceptions; `timeout` None: no deadline."""
        call = self.method(service, method)(request, timeout=timeout, metadata=self.metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        finally:
            call.cancel()

    async def client_stream(
        self, service: str, method: str, requests: Iterable[Message], timeout: float
    ) -> Any:
        try:
            return await self.method(service, method)(iter(requests), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    async def close(self) -> None:
        await self.channel.close()


def pages(conn: Connection, make_op: Callable[[str], Op[Any]], items: str) -> Iterator[Any]:
    """Every item of a paginated list, fetching the next page only when the caller gets there."""
    token = ""
    while True:
        response = conn.call(make_op(token))
        yield from getattr(response, items)
        token = response.next_page_token
        if not token:
            return


async def aio_pages(conn: AioConnection, make_op: Callable[[str], Op[Any]], items: str) -> AsyncIterator[Any]:
    """The asyncio twin of `pages`."""
    token = ""
    while True:
        response = await conn.call(make_op(token))
        for item in getattr(response, items):
            yield item
        token = response.next_page_token
        if not token:
            return

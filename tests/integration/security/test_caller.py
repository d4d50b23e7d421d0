"""`caller(context)`: what a servicer sees as the identity of the call it is serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tessera.v1 import system_pb2
from tesserad.api.auth import AuthInterceptor, caller
from tesserad.api.tls import server_certificates
from tesserad.config import Settings, load_settings
from tesserad.security import Role
from tests.integration.security.conftest import Pki, Tokens, bearer

PATH = "/tessera.v1.System/GetServerInfo"


class CallerEcho:
    """A grpc.aio server whose GetServerInfo path answers `caller(context)` as bytes, behind AuthInterceptor."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(settings), self.loop).result(30)

    async def _start(self, settings: Settings) -> int:
        async def echo_caller(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # Also from a worker thread, as servicers call domain code.
            in_thread = await asyncio.to_thread(caller, context)
            assert in_thread == caller(context)
            return caller(context).encode()

        service = system_pb2.DESCRIPTOR.services_by_name["System"]
        interceptor = AuthInterceptor(
            settings.security, settings.limits, settings.max_message_size, [service]
        )
        self.server = grpc.aio.server(interceptors=[interceptor])
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "tessera.v1.System", {"GetServerInfo": grpc.unary_unary_rpc_method_handler(echo_caller)}
                )
            ]
        )
        certificates = server_certificates(settings.security)
        if certificates is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", certificates.credentials)
        await self.server.start()
        return port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator:
    servers: list[CallerEcho] = []

    def start(**overrides: str) -> CallerEcho:
        server = CallerEcho(load_settings(env={}, overrides=overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_caller_is_the_token_holder_name(echo_server, tokens: Tokens):
    server = echo_server(**{"security.tokens_file": str(tokens.file)})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        answer = channel.unary_unary(PATH)(b"", metadata=bearer(tokens.token[Role.TRAINER]), timeout=10)
    assert answer == b"trainer-holder"


def test_caller_is_anonymous_without_authentication(echo_server):
    server = echo_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert channel.unary_unary(PATH)(b"", timeout=10) == b"anonymous"


def test_caller_is_the_certificate_name_under_mutual_tls(echo_server, pki: Pki):
    server = echo_server(
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(pki.client_ca),
        }
    )
    credentials = pki.channel_credentials("client")
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        assert channel.unary_unary(PATH)(b"", timeout=10) == b"cert:alice-client"


def test_calls_do_not_see_each_others_caller(echo_server, tokens: Tokens):
    server = echo_server(**{"security.tokens_file": str(tokens.file)})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        method = channel.unary_unary(PATH)
        futures = [
            (role, method.future(b"", metadata=bearer(tokens.token[role]), timeout=10))
            for role in [*Role, *Role, *Role]
        ]
        for role, future in futures:
            assert future.result() == f"{role.label}-holder".encode()

"""`tessera.Client()` and `tessera.aio.Client()` without a target connect where `tessera` would:
TESSERA_TARGET, else the CLI's default address, as the token comes from TESSERA_TOKEN."""

from __future__ import annotations

import asyncio

import tessera
import tessera.aio
from tessera.cli.parser import build_parser


def test_a_client_made_without_a_target_calls_the_daemon_in_tessera_target(daemon, monkeypatch):
    monkeypatch.setenv("TESSERA_TARGET", daemon.target)
    with tessera.Client() as client:
        assert client.target == daemon.target == build_parser().parse_args(["info"]).target
        assert client.system.info().version

    async def scenario() -> str:
        async with tessera.aio.Client() as aio_client:
            assert aio_client.target == daemon.target
            return (await aio_client.system.info()).version

    assert asyncio.run(asyncio.wait_for(scenario(), 60))


def test_without_target_or_tessera_target_a_client_takes_the_clis_default_address(monkeypatch):
    monkeypatch.delenv("TESSERA_TARGET", raising=False)
    with tessera.Client() as client:
        assert client.target == build_parser().parse_args(["info"]).target == "127.0.0.1:50051"

"""The SDK's refusal of a timeout past what gRPC keeps writes the limit out as the CLI's does
(1,000,000,000): "1e+09" reads as a formula."""

from __future__ import annotations

import asyncio

import pytest

import tessera
import tessera.aio
from tessera.cli.parser import build_parser
from tessera.transport import call_timeout

LIMIT = "at most 1,000,000,000"


def test_a_method_s_timeout_past_the_limit_names_it_written_out():
    with pytest.raises(ValueError, match=f"timeout must be seconds above 0 \\({LIMIT}\\), got "):
        call_timeout(2e9)


@pytest.mark.parametrize("timeouts", [{"timeout": 2e9}, {"transfer_timeout": 2e9}])
def test_a_client_s_timeout_past_the_limit_names_it_written_out(timeouts):
    with pytest.raises(ValueError, match=f"seconds above 0 \\({LIMIT}\\)"):
        tessera.Client("127.0.0.1:1", **timeouts)

    async def make() -> None:
        tessera.aio.Client("127.0.0.1:1", **timeouts)

    with pytest.raises(ValueError, match=f"seconds above 0 \\({LIMIT}\\)"):
        asyncio.run(make())


def test_the_sdk_and_the_cli_write_the_limit_alike(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--timeout", "2e9", "models", "ls"])
    assert LIMIT in capsys.readouterr().err

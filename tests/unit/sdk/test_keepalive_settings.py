"""The SDK's keepalive: the values it takes (argument, TESSERA_KEEPALIVE_S, --keepalive) and
refuses before anything is sent, the gRPC channel arguments they make, and their agreement with
the pings tesserad takes (gRPC answers a client that pings more often with GOAWAY)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import tessera
import tessera.aio
from tessera.cli import EXIT_USAGE
from tessera.cli.parser import build_parser
from tessera.transport import (
    DEFAULT_KEEPALIVE_S,
    KEEPALIVE_ENV,
    KEEPALIVE_TIMEOUT_S,
    MIN_KEEPALIVE_S,
    RetryPolicy,
    _channel_options,
    resolve_keepalive,
)
from tesserad.api.follow import MIN_PING_INTERVAL_MS
from tesserad.cli import SERVE_FLAGS
from tesserad.config import Settings

KEEPALIVE_KEYS = {
    "grpc.keepalive_time_ms",
    "grpc.keepalive_timeout_ms",
    "grpc.http2.ping_timeout_ms",
    "grpc.keepalive_permit_without_calls",
    "grpc.http2.max_pings_without_data",
}
REFUSED = [-1.0, 0.5, 3601.0, float("nan"), float("inf"), float("-inf")]


def test_the_default_pings_a_silent_call_and_drops_a_connection_that_does_not_answer():
    options = dict(_channel_options(None, RetryPolicy(), resolve_keepalive(None)))
    assert options["grpc.keepalive_time_ms"] == DEFAULT_KEEPALIVE_S * 1000 == 30_000
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 20_000
    # Only while a call is in flight: an idle client (a notebook's) costs the daemon nothing.
    assert options["grpc.keepalive_permit_without_calls"] == 0
    # gRPC's default stops after two pings on a stream that sends nothing, as a watch does.
    assert options["grpc.http2.max_pings_without_data"] == 0


def test_a_short_interval_gives_up_on_a_silent_connection_as_soon():
    options = dict(_channel_options(None, RetryPolicy(), 2.0))
    assert options["grpc.keepalive_time_ms"] == options["grpc.keepalive_timeout_ms"] == 2000


def test_zero_sends_no_pings_for_a_proxy_that_limits_them():
    assert KEEPALIVE_KEYS.isdisjoint(dict(_channel_options(None, RetryPolicy(), 0.0)))


def test_every_interval_the_sdk_takes_is_one_the_daemon_takes():
    # tesserad closes a connection that pings more often than every MIN_PING_INTERVAL_MS; the
    # SDK's shortest leaves twice that for the slack of the timers.
    assert MIN_KEEPALIVE_S * 1000 >= 2 * MIN_PING_INTERVAL_MS
    assert DEFAULT_KEEPALIVE_S >= MIN_KEEPALIVE_S and KEEPALIVE_TIMEOUT_S < DEFAULT_KEEPALIVE_S
    with pytest.raises(ValueError, match="tesserad refuses pings more often than twice a second"):
        resolve_keepalive(MIN_KEEPALIVE_S / 2)


def test_the_daemon_says_how_often_it_takes_pings():
    said = f"as often as every {MIN_PING_INTERVAL_MS / 1000:g} s"
    assert said in SERVE_FLAGS["--listen"][2]
    listen = next(field for field in dataclasses.fields(Settings) if field.name == "listen")
    assert said in listen.metadata["help"]


@pytest.mark.parametrize("keepalive", REFUSED)
def test_a_keepalive_out_of_range_is_refused_before_anything_is_sent(keepalive):
    with pytest.raises(ValueError, match=r"^keepalive: .*must be 0 \(no pings\) or from 1 to 3600") as raised:
        tessera.Client("127.0.0.1:1", keepalive=keepalive)
    assert str(keepalive) in str(raised.value)

    async def make() -> None:
        tessera.aio.Client("127.0.0.1:1", keepalive=keepalive)

    with pytest.raises(ValueError, match=r"^keepalive: "):
        asyncio.run(make())


@pytest.mark.parametrize("keepalive", [True, False, "30", b"30"])
def test_a_keepalive_that_is_not_a_number_is_refused(keepalive):
    with pytest.raises(ValueError, match=r"^keepalive: .*must be a number: 0 \(no pings\) or from 1 to 3600"):
        tessera.Client("127.0.0.1:1", keepalive=keepalive)


@pytest.mark.parametrize("keepalive", [0, 1, 45.5, 3600])
def test_a_keepalive_in_range_is_taken(keepalive):
    assert resolve_keepalive(keepalive) == keepalive


def test_the_environment_sets_the_keepalive_a_client_is_not_given(monkeypatch):
    monkeypatch.setenv(KEEPALIVE_ENV, " 0 ")
    assert resolve_keepalive(None) == 0
    assert resolve_keepalive(10) == 10
    monkeypatch.setenv(KEEPALIVE_ENV, "")
    assert resolve_keepalive(None) == DEFAULT_KEEPALIVE_S
    for text in ("soon", "-5", "nan"):
        monkeypatch.setenv(KEEPALIVE_ENV, text)
        with pytest.raises(ValueError, match=rf"^{KEEPALIVE_ENV}: .*, got {text!r}$"):
            resolve_keepalive(None)


@pytest.mark.parametrize("text", ["-1", "0.5", "nan", "inf", "soon", "3601"])
def test_the_cli_refuses_a_keepalive_out_of_range_as_a_usage_error(capsys, monkeypatch, text):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--keepalive", text, "info"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --keepalive: seconds between keepalive pings must be 0 (no pings)" in err, err
    assert err.endswith(f"got {text!r} from --keepalive\n"), err
    monkeypatch.setenv(KEEPALIVE_ENV, text)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["info"])
    assert capsys.readouterr().err.endswith(f"got {text!r} from env {KEEPALIVE_ENV}\n")


def test_the_cli_takes_its_keepalive_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(KEEPALIVE_ENV, raising=False)
    assert build_parser().parse_args(["info"]).keepalive is None  # the SDK's default
    assert build_parser().parse_args(["--keepalive", "0", "info"]).keepalive == 0
    monkeypatch.setenv(KEEPALIVE_ENV, "12")
    assert build_parser().parse_args(["info"]).keepalive == 12
    assert build_parser().parse_args(["--keepalive", "5", "info"]).keepalive == 5

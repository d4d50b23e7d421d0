"""Tokens with an expiry, on a real daemon: refused once expired on every call and ending their
open streams at that moment, with no reload of the tokens file in between."""

from __future__ import annotations

import contextlib
import datetime
import http.client
from pathlib import Path

import grpc
import pytest

from tessera.v1 import system_pb2
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry, format_time
from tests.integration.security.conftest import bearer

INFO = "/tessera.v1.System/GetServerInfo"
PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


def info(channel: grpc.Channel, token: str) -> tuple[grpc.StatusCode, str]:
    try:
        channel.unary_unary(INFO)(b"", metadata=bearer(token), timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def write(path: Path, **expires: datetime.datetime | None) -> dict[str, str]:
    """A tokens file of reader tokens, one per name, with its expiry; the clear tokens by name."""
    clear = {name: new_token() for name in expires}
    path.write_text(
        "".join(format_entry(n, Role.READER, hash_token(clear[n]), expires=e) for n, e in expires.items())
    )
    return clear


def test_expired_tokens_are_refused_saying_when_and_end_their_streams_as_they_expire(start_daemon, tmp_path):
    path = tmp_path / "tokens.toml"
    far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    clear = write(path, soon=far, forever=None, old=PAST)
    daemon = start_daemon(**{"security.tokens_file": str(path), "security.tokens_reload_interval_s": "0"})
    channel = daemon.channel()
    code, details = info(channel, clear["old"])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"the token 'old' expired at {format_time(PAST)}" in details
    # The dashboard checks the same tokens.
    dashboard = http.client.HTTPConnection("127.0.0.1", daemon.daemon.http_port, timeout=30)
    dashboard.request("GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {clear['old']}"})
    answer = dashboard.getresponse()
    assert answer.status == 401 and f"expired at {format_time(PAST)}" in answer.read().decode()
    dashboard.close()
    assert info(channel, clear["soon"]) == (grpc.StatusCode.OK, "")
    # The expiry comes closer by a reload before the stream opens; nothing is read after it.
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    path.write_text(
        format_entry("soon", Role.READER, hash_token(clear["soon"]), expires=soon)
        + format_entry("forever", Role.READER, hash_token(clear["forever"]))
        + format_entry("old", Role.READER, hash_token(clear["old"]), expires=PAST)
    )
    daemon.run(daemon.daemon.reload())

    def watch(token: str) -> grpc.Call:
        return channel.unary_stream(
            "/tessera.v1.System/WatchSystem", response_deserializer=system_pb2.SystemSample.FromString
        )(
            system_pb2.WatchSystemRequest(interval_ms=100).SerializeToString(),
            metadata=bearer(token),
            timeout=60,
        )

    expiring, kept = watch(clear["soon"]), watch(clear["forever"])
    assert isinstance(next(expiring), system_pb2.SystemSample)
    with pytest.raises(grpc.RpcError) as err:
        for _ in expiring:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"the token 'soon' expired at {format_time(soon)}" in err.value.details()
    assert "WatchSystem stream was opened with it" in err.value.details()
    code, details = info(channel, clear["soon"])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired at" in details
    assert isinstance(next(kept), system_pb2.SystemSample)
    kept.cancel()


def test_a_dashboard_event_stream_ends_when_its_token_expires(start_daemon, tmp_path):
    path = tmp_path / "tokens.toml"
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    clear = write(path, soon=soon, forever=None)
    daemon = start_daemon(**{"security.tokens_file": str(path), "security.tokens_reload_interval_s": "0"})

    def events(token: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", daemon.daemon.http_port, timeout=30)
        connection.request(
            "GET", "/api/v1/system/events?interval_ms=250", headers={"Authorization": f"Bearer {token}"}
        )
        answer = connection.getresponse()
        assert answer.status == 200
        return answer

    expiring, kept = events(clear["soon"]), events(clear["forever"])
    # The stream ends (its connection closes, mid-chunked-body) once the token has expired: no
    # reload comes.
    received = b""
    with contextlib.suppress(http.client.IncompleteRead):
        while chunk := expiring.read1(65536):
            received += chunk
            assert datetime.datetime.now(datetime.UTC) < soon + datetime.timedelta(seconds=60), (
                "the event stream went on long after its token expired"
            )
    assert b"event: sample" in received
    # The other token's stream goes on.
    more = b""
    while b"event: sample" not in more:
        more += kept.read1(65536)
    kept.close()

"""The dashboard's login form against a real daemon: failed logins are throttled per client
address, and a session ends at logout."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tesserad.dashboard import access
from tesserad.dashboard.access import LOGIN_FAILURES_AT_ONCE, LOGIN_RETRY_S, SESSION_COOKIE
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.conftest import HttpAnswer, http_get

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FROM_PAGE = {"X-Tessera-Dashboard": "1"}


@pytest.fixture
def guarded(tmp_path) -> Iterator[tuple[int, dict[Role, str]]]:
    """A daemon with a tokens file: its dashboard's port, and a token of each role."""
    clear = {role: new_token() for role in Role}
    path = tmp_path / "tokens.toml"
    path.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in clear.items()))
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        assert port is not None
        yield port, clear
    finally:
        daemon.stop()


def log_in(port: int, token: str, source: str = "127.0.0.1") -> HttpAnswer:
    """POST /login from the loopback address `source` (any of 127.0.0.0/8 reaches the daemon)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", "/login", urllib.parse.urlencode({"token": token}), headers=FORM)
        response = connection.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def session_of(answer: HttpAnswer) -> str:
    assert answer.status == 303, answer.body[:200]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    return cookie.partition("=")[2].partition(";")[0]


def test_failed_logins_beyond_the_burst_are_429_with_retry_after(guarded):
    port, clear = guarded
    for _ in range(LOGIN_FAILURES_AT_ONCE):
        assert log_in(port, new_token()).status == 401
    refused = log_in(port, new_token())
    assert refused.status == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert 1 <= int(refused.headers["retry-after"]) <= LOGIN_RETRY_S
    assert (
        f"too many failed logins from 127.0.0.1: try again in {refused.headers['retry-after']} s (an "
        f"address may fail {LOGIN_FAILURES_AT_ONCE} times in a row, then once every {LOGIN_RETRY_S:g} s"
    ).encode() in refused.body
    # Not even a good token is tried meanwhile, or the throttle would tell which guess was good.
    assert log_in(port, clear[Role.READER]).status == 429
    # A token in a header is not held back (test_bad_tokens_in_a_header_...), nor other addresses.
    assert bearer_get(port, "/api/v1/jobs", clear[Role.READER]).status == 200
    assert session_of(log_in(port, clear[Role.READER], source="127.0.0.2"))
    assert bearer_get(port, "/api/v1/jobs", clear[Role.READER], source="127.0.0.2").status == 200


def test_good_logins_are_never_throttled_and_never_forgive_earlier_failures(guarded):
    """Else a holder of any token (a reader's) could guess LOGIN_FAILURES_AT_ONCE - 1 times, log
    in, and guess again, for ever."""
    port, clear = guarded
    for _ in range(3 * LOGIN_FAILURES_AT_ONCE):
        session_of(log_in(port, clear[Role.READER]))
    for _ in range(LOGIN_FAILURES_AT_ONCE - 1):
        assert log_in(port, new_token()).status == 401
    session_of(log_in(port, clear[Role.READER]))
    assert log_in(port, new_token()).status == 401
    assert log_in(port, new_token()).status == 429


def bearer_get(port: int, path: str, token: str, source: str = "127.0.0.1") -> HttpAnswer:
    """GET `path` with `token` in an Authorization header, from the loopback address `source`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def test_logins_sent_at_once_are_tried_no_more_often_than_one_after_another(guarded):
    """Each login is counted after its body arrives: connections that all passed the check
    before theirs arrived, with one try left, do not each get that try."""
    port, _ = guarded
    for _ in range(LOGIN_FAILURES_AT_ONCE - 1):
        assert log_in(port, new_token()).status == 401
    connections = []
    for _ in range(20):
        body = urllib.parse.urlencode({"token": new_token()}).encode()
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection.sendall(
            b"POST /login HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        connections.append((connection, body))
    # Every one has passed the check made before its body, and waits for it.
    for connection, _ in connections:
        assert connection.recv(100).startswith(b"HTTP/1.1 100 ")
    for connection, body in connections:
        connection.sendall(body)
    statuses = []
    for connection, _ in connections:
        with connection:
            statuses.append(int(connection.recv(100).split(b" ")[1]))
    assert statuses.count(401) <= 1 and statuses.count(401) + statuses.count(429) == len(statuses), statuses


def test_bad_tokens_in_a_header_hold_back_neither_good_ones_nor_the_form(guarded):
    # A script with a revoked token, behind the same NAT as every other, must not lock them out:
    # header tokens are 256-bit secrets, not guessed, and gRPC does not count them either.
    port, clear = guarded
    for _ in range(3 * LOGIN_FAILURES_AT_ONCE):
        assert bearer_get(port, "/api/v1/jobs", new_token()).status == 401
    assert bearer_get(port, "/api/v1/jobs", clear[Role.ADMIN]).status == 200
    assert session_of(log_in(port, clear[Role.READER]))


def test_a_throttled_address_is_refused_before_100_continue(guarded):
    port, _ = guarded
    for _ in range(LOGIN_FAILURES_AT_ONCE):
        assert log_in(port, new_token()).status == 401
    head = (
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    # Each read waits 5 s at most: the connection closes soon after the answer, its body unsent
    # (aiohttp's own wait for the body held it 10 s).
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(head)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 429 "), answer[:80]
    assert b"\r\nretry-after: " in answer.partition(b"\r\n\r\n")[0].lower()


def test_logout_ends_the_session_and_clears_the_cookie(guarded):
    port, clear = guarded
    session = session_of(log_in(port, clear[Role.READER]))
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    assert http_get(port, "/api/v1/session", cookie).json()["can_log_out"] is True
    bearer = {"Authorization": f"Bearer {clear[Role.READER]}"}
    assert http_get(port, "/api/v1/session", bearer).json()["can_log_out"] is False

    # As a restore: only the dashboard's own page can send it (a cross-site form cannot).
    refused = http_get(port, "/logout", cookie, "POST")
    assert refused.status == 403
    assert b"a logout must carry the header X-Tessera-Dashboard: 1" in refused.body
    elsewhere = {**cookie, **FROM_PAGE, "Origin": "http://elsewhere.example"}
    assert http_get(port, "/logout", elsewhere, "POST").status == 403
    assert http_get(port, "/api/v1/jobs", cookie).status == 200

    answer = http_get(port, "/logout", {**cookie, **FROM_PAGE, "Origin": f"http://127.0.0.1:{port}"}, "POST")
    assert answer.status == 303 and answer.headers["location"] == "/login"
    cleared = answer.headers["set-cookie"]
    assert cleared.startswith(f'{SESSION_COOKIE}=""') and "Max-Age=0" in cleared
    ended = http_get(port, "/api/v1/jobs", cookie)
    assert ended.status == 401 and "the dashboard session has ended" in ended.json()["error"]
    # Logging out again (a second tab) or without a session still clears the cookie.
    assert http_get(port, "/logout", {**cookie, **FROM_PAGE}, "POST").status == 303
    assert http_get(port, "/logout", FROM_PAGE, "POST").status == 303


def open_event_stream(port: int, session: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A system event stream read with the cookie of `session`, its first line read."""
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    stream.request(
        "GET", "/api/v1/system/events?interval_ms=250", headers={"Cookie": f"{SESSION_COOKIE}={session}"}
    )
    response = stream.getresponse()
    assert response.status == 200 and response.readline() == b"retry: 1000\n"
    return stream, response


def assert_ends(stream: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    # Reading runs to the stream's end (or breaks off); a stream that goes on sends a sample
    # every 250 ms, so it would never time out.
    gives_up = time.monotonic() + 60
    with contextlib.suppress(http.client.IncompleteRead):
        while response.readline():
            assert time.monotonic() < gives_up, "the event stream went on"
    stream.close()


def assert_goes_on(stream: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    assert response.readline()
    stream.close()


def test_logout_ends_the_event_streams_of_its_session_in_other_tabs(guarded):
    port, clear = guarded
    session = session_of(log_in(port, clear[Role.READER]))
    ended = open_event_stream(port, session)
    kept = open_event_stream(port, session_of(log_in(port, clear[Role.READER])))

    answer = http_get(port, "/logout", {"Cookie": f"{SESSION_COOKIE}={session}", **FROM_PAGE}, "POST")
    assert answer.status == 303

    assert_ends(*ended)
    assert_goes_on(*kept)


def test_a_session_pushed_out_by_newer_logins_ends_its_event_streams(guarded, monkeypatch):
    monkeypatch.setattr(access, "MAX_SESSIONS_PER_TOKEN", 1)
    port, clear = guarded
    pushed_out = open_event_stream(port, session_of(log_in(port, clear[Role.READER])))
    other_token = open_event_stream(port, session_of(log_in(port, clear[Role.TRAINER])))

    newer = session_of(log_in(port, clear[Role.READER]))

    assert_ends(*pushed_out)
    assert_goes_on(*other_token)
    assert_goes_on(*open_event_stream(port, newer))


def test_a_session_that_reaches_its_end_ends_its_event_streams(guarded, monkeypatch):
    port, clear = guarded
    monkeypatch.setattr(access, "SESSION_SECONDS", 2)
    ending = open_event_stream(port, session_of(log_in(port, clear[Role.READER])))
    monkeypatch.setattr(access, "SESSION_SECONDS", 3600)
    lasting = open_event_stream(port, session_of(log_in(port, clear[Role.READER])))

    assert_ends(*ending)
    assert_goes_on(*lasting)


def test_the_pages_offer_a_logout_button(guarded):
    port, _ = guarded
    script = http_get(port, "/static/dashboard.js").body
    assert b'"/logout"' in script and b"Log out" in script

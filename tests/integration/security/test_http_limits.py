"""The HTTP listeners' limits on a real daemon over real sockets: each listener (dashboard, OIP over
HTTP, metrics) holds at most limits.http_max_connections connections open, and the dashboard's
login form has limits.http_request_timeout_s to send its body, as OIP's requests have."""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, Tokens
from tests.integration.security.conftest import pki as pki  # the session's throwaway PKI
from tests.integration.security.conftest import tokens as tokens  # one token per role
from tests.integration.security.test_tls import tls_settings

LIMIT = 3
PATHS = {"dashboard": "/jobs", "oip_http": "/v2/health/live", "metrics": "/metrics"}


def _until(check: Callable[[], bool]) -> None:
    """Wait for `check` to hold (30 s at most: the bound of a daemon that never gets there)."""
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the daemon never reached the state waited for")
        time.sleep(0.02)


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def _answer(connection: socket.socket, path: str) -> bytes:
    """The answer to a GET of `path` on `connection`, read until the listener closes it."""
    with connection:
        connection.sendall(_request(path))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _refused(connection: socket.socket, path: str) -> bool:
    """Whether the listener closes `connection` without an answer to a request on it."""
    with connection:
        try:
            connection.sendall(_request(path))
            return connection.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _sample(daemon: InProcessDaemon, name: str, listener: str) -> float | None:
    return daemon.daemon.metrics.registry.get_sample_value(name, {"listener": listener})


# A connection still open this long after its request was sent was held for the rest of a body by
# aiohttp's own wait (10 s, as long as it never comes): the listener closes it after 1 s of
# silence, which leaves 7 s to spare on a loaded machine.
CLOSED_WITHIN_S = 8


def _answer_then_close(connection: socket.socket) -> bytes:
    """What the listener sends on `connection` until it closes it, CLOSED_WITHIN_S at most in all
    (pytest.fail past it)."""
    deadline = time.monotonic() + CLOSED_WITHIN_S
    answer = b""
    while True:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            pytest.fail(f"the connection was still open {CLOSED_WITHIN_S} s after its request")
        if not chunk:
            return answer
        answer += chunk


def test_each_listener_refuses_a_connection_beyond_the_limit_and_reuses_a_freed_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{"serving.oip_http_listen": "127.0.0.1:0", "limits.http_max_connections": LIMIT},
    )
    daemon = InProcessDaemon(settings).start()
    caplog.set_level(logging.WARNING, logger="tesserad.security.limits")
    try:
        ports = {
            "dashboard": daemon.daemon.http_port,
            "oip_http": daemon.daemon.oip_http_port,
            "metrics": daemon.daemon.metrics_port,
        }
        for listener, port in ports.items():
            assert port is not None
            path = PATHS[listener]

            def open_now(listener: str = listener) -> float | None:
                return _sample(daemon, "tessera_http_connections", listener)

            # Connections that send nothing yet: what an idle or slow client holds.
            held = [_connect(port) for _ in range(LIMIT)]
            _until(lambda: open_now() == LIMIT)
            assert _refused(_connect(port), path), listener
            assert _refused(_connect(port), path), listener
            assert _sample(daemon, "tessera_http_connections_refused_total", listener) == 2
            # The connections held keep working; one answered and closed frees its place.
            assert _status(_answer(held.pop(), path)) == 200, listener
            _until(lambda: open_now() == LIMIT - 1)
            assert _status(_answer(_connect(port), path)) == 200, listener
            for connection in held:
                assert _status(_answer(connection, path)) == 200, listener
            _until(lambda: open_now() == 0)
        # One line per listener for its two refusals.
        lines = [r for r in caplog.records if r.getMessage().startswith("HTTP connections refused")]
        assert sorted((r.__dict__["listener"], r.__dict__["refused"]) for r in lines) == [
            ("dashboard", 1),
            ("metrics", 1),
            ("oip_http", 1),
        ]
    finally:
        daemon.stop()


def test_a_connection_over_tls_is_refused_beyond_the_limit(tmp_path: Path, pki: Pki, tokens: Tokens) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tokens_file": str(tokens.file),
            "limits.http_max_connections": LIMIT,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.http_port
        assert port is not None
        context = ssl.create_default_context(cafile=str(pki.ca))

        def tls() -> socket.socket:
            return context.wrap_socket(_connect(port), server_hostname="localhost")

        held = [tls() for _ in range(LIMIT)]
        _until(lambda: _sample(daemon, "tessera_http_connections", "dashboard") == LIMIT)
        try:
            refused = _refused(tls(), "/login")
        except (ssl.SSLError, ConnectionResetError):
            # The close may reach the client while its handshake ends.
            refused = True
        assert refused
        assert _status(_answer(held.pop(), "/login")) == 200
        for connection in held:
            connection.close()
    finally:
        daemon.stop()


def test_a_login_whose_body_never_all_arrives_is_answered_408_and_its_connection_closed(
    tmp_path: Path, tokens: Tokens
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{"security.tokens_file": str(tokens.file), "limits.http_request_timeout_s": 1},
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.http_port
        assert port is not None
        head = (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        )
        with _connect(port) as connection:
            connection.sendall(head + b"token=")
            # The listener closes the connection soon after its answer, the body's rest unsent.
            answer = _answer_then_close(connection)
        header, _, body = answer.partition(b"\r\n\r\n")
        assert _status(answer) == 408, answer
        assert b"\r\nconnection: close" in header.lower()
        assert (
            b"the request body did not all arrive within limits.http_request_timeout_s = 1 s; send it "
            b"at once, and no fewer bytes than its Content-Length says"
        ) in body
        # A login sent at once still goes through.
        form = urllib.parse.urlencode({"token": tokens.token[Role.READER], "then": "/jobs"}).encode()
        with _connect(port) as connection:
            connection.sendall(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                + f"Content-Length: {len(form)}\r\n\r\n".encode()
                + form
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        assert _status(answer) == 303 and b"tessera_session=" in answer
    finally:
        daemon.stop()


def test_the_metrics_port_closes_a_silent_connection_and_frees_its_place(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{"limits.http_max_connections": 1, "limits.http_request_timeout_s": 1},
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.metrics_port
        assert port is not None
        with _connect(port) as silent:
            # Closed by the listener (recv returns b""), not by this socket's own 30 s timeout.
            assert silent.recv(65536) == b""
        _until(lambda: _sample(daemon, "tessera_http_connections", "metrics") == 0)
        assert _status(_answer(_connect(port), "/metrics")) == 200
        assert "Traceback" not in capfd.readouterr().err
    finally:
        daemon.stop()


def test_the_metrics_port_closes_a_connection_whose_request_trickles_past_the_timeout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A byte well within every per-read timeout, over and over: the whole request's deadline
    # (limits.http_request_timeout_s from the connection's start) is what closes it.
    settings = daemon_settings(
        tmp_path / "data",
        **{"limits.http_max_connections": 1, "limits.http_request_timeout_s": 1},
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.metrics_port
        assert port is not None
        # A request that never ends: 100 bytes of it, a byte each 0.1 s (ten times the timeout).
        request = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 100)[:100]
        closed = False
        with _connect(port) as trickling:
            for byte in request:
                try:
                    trickling.sendall(bytes([byte]))
                    readable, _, _ = select.select([trickling], [], [], 0.1)
                    if readable and trickling.recv(65536) == b"":
                        closed = True
                        break
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
        assert closed, "the listener kept a connection whose request never completed"
        _until(lambda: _sample(daemon, "tessera_http_connections", "metrics") == 0)
        assert _status(_answer(_connect(port), "/metrics")) == 200
        assert "Traceback" not in capfd.readouterr().err
    finally:
        daemon.stop()


def test_a_client_resetting_mid_request_prints_no_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    daemon = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    try:
        port = daemon.daemon.metrics_port
        assert port is not None
        resetting = _connect(port)
        resetting.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        _until(lambda: _sample(daemon, "tessera_http_connections", "metrics") == 1)
        # Linger 0: the close sends a reset, which the listener's read of the request meets.
        resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resetting.close()
        _until(lambda: _sample(daemon, "tessera_http_connections", "metrics") == 0)
        assert _status(_answer(_connect(port), "/metrics")) == 200
        assert "Traceback" not in capfd.readouterr().err
    finally:
        daemon.stop()


def test_a_tls_handshake_spends_the_metrics_request_timeout_it_does_not_extend_it(
    tmp_path: Path, pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    # limits.http_request_timeout_s counts from the connection's acceptance: a client that took
    # most of it to shake hands has only the rest to send its request, not the whole timeout anew.
    settings = daemon_settings(
        tmp_path / "data",
        **tls_settings(pki),
        **{"security.metrics_tls": "true", "limits.http_request_timeout_s": 2},
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.metrics_port
        assert port is not None
        context = ssl.create_default_context(cafile=str(pki.ca))
        accepted = _connect(port)
        # The margins are wide for a loaded machine: the handshake has 1.2 s to spare, and the
        # request goes 2.3 s or more after the acceptance, past its deadline, and ~1.5 s after
        # the handshake, within the 2 s a deadline started anew after it would have given.
        time.sleep(0.8)
        with context.wrap_socket(accepted, server_hostname="localhost") as late:
            time.sleep(1.5)
            try:
                late.sendall(_request("/metrics"))
                answered = late.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                answered = b""
        assert answered == b"", "the listener read a request sent past its connection's deadline"
        with context.wrap_socket(_connect(port), server_hostname="localhost") as prompt:
            assert _status(_answer(prompt, "/metrics")) == 200
        # A client gone after the answer's first bytes: the rest of it meets an EOF.
        with context.wrap_socket(_connect(port), server_hostname="localhost") as leaving:
            leaving.sendall(_request("/metrics"))
            assert leaving.recv(65536).startswith(b"HTTP/1.0 200")
        _until(lambda: _sample(daemon, "tessera_http_connections", "metrics") == 0)
        assert "Traceback" not in capfd.readouterr().err
    finally:
        daemon.stop()


def test_a_refusal_before_the_body_reaches_a_client_still_uploading_and_frees_its_place_soon(
    tmp_path: Path,
) -> None:
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "max_message_size": "1MiB",
            "limits.http_max_connections": 1,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        assert port is not None
        infer = b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        too_large = b"HTTP/1.1 413 "

        def open_now() -> float | None:
            return _sample(daemon, "tessera_http_connections", "oip_http")

        # Refused on its Content-Length while it uploads on: the body is read on (the upload ends)
        # and the answer, read only then, arrives whole rather than lost to a reset. (aiohttp's own
        # drain reads it to its end too: this part guards the listener's against a reset.)
        body = b" " * (8 << 20)
        with _connect(port) as uploading:
            uploading.sendall(infer + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert _answer_then_close(uploading).startswith(too_large)
        _until(lambda: open_now() == 0)
        # Refused in place of 100 Continue, its body never sent, the connection left open by its
        # client: the listener closes it soon (aiohttp's own drain waited 10 s for that body), and
        # its place takes a new connection.
        with _connect(port) as waiting:
            waiting.sendall(infer + b"Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
            assert _answer_then_close(waiting).startswith(too_large)
            _until(lambda: open_now() == 0)
            assert _status(_answer(_connect(port), PATHS["oip_http"])) == 200
    finally:
        daemon.stop()


def test_an_answer_to_a_request_whose_body_is_unread_closes_its_connection_after_the_body_stops(
    tmp_path: Path, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    # The body's wait is no part of the answer's logged time.
    caplog.set_level(logging.DEBUG, logger="tesserad.oip_http.access")
    settings = daemon_settings(
        tmp_path / "data",
        **{
            "serving.oip_http_listen": "127.0.0.1:0",
            "security.tokens_file": str(tokens.file),
            "limits.http_max_connections": 1,
        },
    )
    daemon = InProcessDaemon(settings).start()
    try:
        port = daemon.daemon.oip_http_port
        assert port is not None
        for path, status in (("/nope", 404), ("/v2/models/nope/infer", 401)):
            # No Expect: the client sends part of its body, then waits for the answer.
            with _connect(port) as connection:
                sent = time.monotonic()
                connection.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: unread-{status}\r\n"
                    "Content-Length: 1000\r\n\r\n".encode()
                    + b"x" * 10
                )
                head = b""
                while b"\r\n\r\n" not in head and (chunk := connection.recv(65536)):
                    head += chunk
                assert _status(head) == status
                # Kept alive, the connection was aiohttp's to close, after waiting 10 s for the body.
                assert b"\r\nconnection: close\r\n" in head.lower()
                _answer_then_close(connection)
                waited_ms = (time.monotonic() - sent) * 1000
            (logged,) = [
                record
                for record in caplog.records
                if record.name == "tesserad.oip_http.access"
                and getattr(record, "request_id", None) == f"unread-{status}"
            ]
            # The listener waited 1 s of silence for the body after the answer, before it closed
            # the connection: the client waited that second on top of the logged time (a clock's
            # grain aside), whatever the machine's load.
            assert logged.duration_ms + 900 <= waited_ms
        _until(lambda: _sample(daemon, "tessera_http_connections", "oip_http") == 0)
    finally:
        daemon.stop()

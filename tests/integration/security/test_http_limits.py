"""The HTTP listeners' limits on a real daemon over real sockets: the dashboard's login form has
limits.http_request_timeout_s to send its body, as OIP's requests have."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens
from tests.integration.security.conftest import tokens as tokens  # one token per role


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


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
            answer = b""
            # Read until the listener closes the connection (recv then returns b"").
            while chunk := connection.recv(65536):
                answer += chunk
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
        assert _status(answer) == 303 and b"tessera_token=" in answer
    finally:
        daemon.stop()

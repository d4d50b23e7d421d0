"""The dashboard over the gRPC listener's TLS: the same certificate, the same client-certificate
rule, and a login cookie that only travels over TLS."""

from __future__ import annotations

import http.client
import ssl
import urllib.parse

import pytest

from tesserad.dashboard.access import SESSION_SECONDS
from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, Tokens
from tests.integration.security.conftest import pki as pki  # the session's throwaway PKI
from tests.integration.security.conftest import tokens as tokens  # one token per role


def tls_daemon(tmp_path, pki: Pki, tokens: Tokens, mutual: bool) -> InProcessDaemon:
    settings = {
        "security.tls_cert_file": str(pki.server_cert),
        "security.tls_key_file": str(pki.server_key),
        "security.tokens_file": str(tokens.file),
    }
    if mutual:
        settings["security.tls_client_ca_file"] = str(pki.client_ca)
    return InProcessDaemon(daemon_settings(tmp_path / "data", **settings)).start()


def https(port: int, pki: Pki, client: bool = False) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return http.client.HTTPSConnection("localhost", port, context=context, timeout=30)


def status_of(connection: http.client.HTTPConnection, method: str, path: str, **kwargs) -> tuple[int, str]:
    try:
        connection.request(method, path, **kwargs)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Set-Cookie", "")
    finally:
        connection.close()


def test_tls_serves_the_dashboard_and_its_login_cookie_is_secure(tmp_path, pki, tokens):
    daemon = tls_daemon(tmp_path, pki, tokens, mutual=False)
    try:
        port = daemon.daemon.http_port
        reader = tokens.token[Role.READER]
        assert status_of(https(port, pki), "GET", "/api/v1/jobs")[0] == 401
        bearer = {"Authorization": f"Bearer {reader}"}
        assert status_of(https(port, pki), "GET", "/api/v1/jobs", headers=bearer)[0] == 200
        form = urllib.parse.urlencode({"token": reader, "then": "/jobs"})
        status, cookie = status_of(
            https(port, pki),
            "POST",
            "/login",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 303
        assert "Secure" in cookie and "HttpOnly" in cookie and f"Max-Age={SESSION_SECONDS}" in cookie
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with pytest.raises((http.client.HTTPException, OSError)):
            status_of(plain, "GET", "/api/v1/jobs", headers=bearer)
    finally:
        daemon.stop()


def test_mutual_tls_asks_the_browser_for_a_client_certificate(tmp_path, pki, tokens):
    daemon = tls_daemon(tmp_path, pki, tokens, mutual=True)
    try:
        port = daemon.daemon.http_port
        bearer = {"Authorization": f"Bearer {tokens.token[Role.READER]}"}
        assert status_of(https(port, pki, client=True), "GET", "/api/v1/jobs", headers=bearer)[0] == 200
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            status_of(https(port, pki), "GET", "/api/v1/jobs", headers=bearer)
    finally:
        daemon.stop()

"""/metrics behind a token (security.metrics_role) and TLS (security.metrics_tls), and the
settings that cannot serve them; without either, /metrics stays open (the other metrics tests)."""

from __future__ import annotations

import logging
import ssl
import urllib.error
import urllib.request

import pytest

from tesserad.security import Role, hash_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon
from tests.integration.security.conftest import Pki, Tokens
from tests.integration.security.test_tls import start_fails, tls_settings


def scrape(
    daemon: InProcessDaemon, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of GET /metrics, with `token` as a bearer token, over TLS with
    `context`."""
    scheme, host = ("https", "localhost") if context is not None else ("http", "127.0.0.1")
    request = urllib.request.Request(f"{scheme}://{host}:{daemon.daemon.metrics_port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_metrics_with_a_role_need_a_token_of_that_role(
    start_daemon, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.audit")
    daemon = start_daemon(**{"security.tokens_file": str(tokens.file), "security.metrics_role": "trainer"})
    status, headers, body = scrape(daemon)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in body and "trainer role" in body
    assert "tessera_" not in body

    status, headers, body = scrape(daemon, "tsr_not-a-token-of-this-daemon")
    assert (status, headers["WWW-Authenticate"].split()[0]) == (401, "Bearer")
    assert "not valid for this tesserad" in body

    status, headers, body = scrape(daemon, tokens.token[Role.READER])
    assert status == 403 and "WWW-Authenticate" not in headers
    assert "needs the trainer role" in body and "'reader-holder' has the reader role" in body

    status, _, body = scrape(daemon, tokens.token[Role.TRAINER])
    assert status == 200 and "tessera_rpc_total" in body
    assert scrape(daemon, tokens.token[Role.ADMIN])[0] == 200
    # Refusals are logged as the other listeners' are, once per peer and reason in the window.
    refused = [r.__dict__ for r in caplog.records if r.getMessage() == "call refused"]
    assert [(r["listener"], r["rpc"], r["code"], r["reason"]) for r in refused] == [
        ("metrics", "GET /metrics", "401", "no token"),
        ("metrics", "GET /metrics", "401", "token refused"),
        ("metrics", "GET /metrics", "403", "forbidden"),
    ]

    # A token the tokens file no longer holds is refused at the next scrape.
    admin = tokens.token[Role.ADMIN]
    tokens.file.write_text(format_entry("admin-holder", Role.ADMIN, hash_token(admin)))
    daemon.run(daemon.daemon.reload())
    assert scrape(daemon, tokens.token[Role.TRAINER])[0] == 401
    assert scrape(daemon, admin)[0] == 200


def test_metrics_over_tls_with_a_token(start_daemon, pki: Pki, tokens: Tokens) -> None:
    daemon = start_daemon(
        **tls_settings(pki),
        **{
            "security.tokens_file": str(tokens.file),
            "security.metrics_role": "reader",
            "security.metrics_tls": "true",
        },
    )
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    assert scrape(daemon, tokens.token[Role.READER], trusting)[0] == 200
    assert scrape(daemon, None, trusting)[0] == 401
    # Plain HTTP gets no answer at all (a closed connection, a reset or a URLError, as it
    # happens), nor does a client that does not trust the certificate.
    with pytest.raises((ConnectionError, urllib.error.URLError, ssl.SSLError)):
        scrape(daemon, tokens.token[Role.READER])
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        scrape(daemon, tokens.token[Role.READER], ssl.create_default_context())


def test_metrics_under_mutual_tls_need_a_client_certificate(start_daemon, pki: Pki) -> None:
    daemon = start_daemon(**tls_settings(pki, mutual=True), **{"security.metrics_tls": "true"})
    without = ssl.create_default_context(cafile=str(pki.ca))
    # Under TLS 1.3 the refusal may come during the handshake or at the first read (SSLError).
    with pytest.raises((ConnectionError, urllib.error.URLError, ssl.SSLError)):
        scrape(daemon, None, without)
    with_certificate = ssl.create_default_context(cafile=str(pki.ca))
    with_certificate.load_cert_chain(pki.client_cert, pki.client_key)
    status, _, body = scrape(daemon, None, with_certificate)
    assert status == 200 and "tessera_rpc_total" in body


def test_a_metrics_role_without_a_tokens_file_stops_the_start(data_dir) -> None:
    message = start_fails(data_dir, **{"security.metrics_role": "reader"})
    assert "security.metrics_role = reader needs security.tokens_file" in message


def test_metrics_tls_without_a_certificate_stops_the_start(data_dir) -> None:
    message = start_fails(data_dir, **{"security.metrics_tls": "true"})
    assert "set security.tls_cert_file and security.tls_key_file" in message

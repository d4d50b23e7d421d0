"""Replacing the TLS files of a running daemon: new handshakes get the new certificate (and client
CA) after SIGHUP or the periodic check; files that cannot be used leave the old ones serving."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest

from tests.integration.security.conftest import Pki, encrypt_key
from tests.integration.security.test_tls import secure_call


def served_certificate(port: int, pki: Pki) -> bytes:
    """The DER certificate a fresh TLS handshake with the daemon's gRPC (or HTTP) port gets."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def logged_error(caplog: pytest.LogCaptureFixture) -> str:
    """The reason the last "TLS files not applied" entry gives."""
    entries = [r for r in caplog.records if r.getMessage().startswith("TLS files not applied")]
    assert entries, "no TLS error was logged"
    return str(entries[-1].error)


def install(source: Path, target: Path) -> None:
    """Replace `target` as deployment tools do: a new file renamed over it, with the source's mode."""
    shutil.copy(source, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)


def test_sighup_rotates_the_certificate_and_a_broken_pair_keeps_the_old(start_daemon, pki, tmp_path, caplog):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server_cert, cert)
    install(pki.server_key, key)
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(cert),
            "security.tls_key_file": str(key),
            "security.tokens_reload_interval_s": "0",
            "security.metrics_tls": "true",
        }
    )
    port = daemon.daemon.port
    with grpc.secure_channel(f"localhost:{port}", pki.channel_credentials()) as open_channel:
        open_channel.unary_unary("/tessera.v1.System/GetServerInfo")(b"", timeout=10)
        assert served_certificate(port, pki) == der(pki.server_cert)
        assert served_certificate(daemon.daemon.http_port, pki) == der(pki.server_cert)
        assert served_certificate(daemon.daemon.metrics_port, pki) == der(pki.server_cert)

        # The new certificate with the old key: refused, the old pair goes on serving.
        install(pki.next_cert, cert)
        with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
            daemon.run(daemon.daemon.reload())
        assert "not a usable certificate and matching private key" in logged_error(caplog)
        assert served_certificate(port, pki) == der(pki.server_cert)

        install(pki.next_key, key)
        daemon.run(daemon.daemon.reload())
        assert served_certificate(port, pki) == der(pki.next_cert)
        # The dashboard's and the metrics' listeners serve the same files.
        assert served_certificate(daemon.daemon.http_port, pki) == der(pki.next_cert)
        assert served_certificate(daemon.daemon.metrics_port, pki) == der(pki.next_cert)
        assert secure_call(port, pki.channel_credentials()) == grpc.StatusCode.OK
        # A connection made before the rotation goes on working.
        open_channel.unary_unary("/tessera.v1.System/GetServerInfo")(b"", timeout=10)

        cert.unlink()
        with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
            daemon.run(daemon.daemon.reload())
        assert f"security.tls_cert_file {cert} cannot be read" in logged_error(caplog)
        assert served_certificate(port, pki) == der(pki.next_cert)


def test_the_periodic_check_applies_a_new_client_ca_without_a_signal(start_daemon, pki, tmp_path):
    client_ca = tmp_path / "client-ca.pem"
    install(pki.client_ca, client_ca)
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(client_ca),
            "security.tokens_reload_interval_s": "0.05",
        }
    )
    port = daemon.daemon.port
    assert secure_call(port, pki.channel_credentials("client")) == grpc.StatusCode.OK
    assert secure_call(port, pki.channel_credentials("rogue")) == grpc.StatusCode.UNAVAILABLE

    # The rogue CA's client certificates are trusted from now on, the old CA's no longer.
    install(pki.rogue_cert.parent / "rogue-ca.pem", client_ca)
    deadline = time.monotonic() + 30
    while secure_call(port, pki.channel_credentials("rogue")) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the new client CA was never applied"
        time.sleep(0.05)
    assert secure_call(port, pki.channel_credentials("client")) == grpc.StatusCode.UNAVAILABLE


def test_an_encrypted_key_is_refused_and_the_periodic_check_goes_on(start_daemon, pki, tmp_path, caplog):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server_cert, cert)
    install(pki.server_key, key)
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(cert),
            "security.tls_key_file": str(key),
            "security.tokens_reload_interval_s": "0.05",
        }
    )
    port = daemon.daemon.port
    encrypted = tmp_path / "next-encrypted.key"
    encrypt_key(pki.next_key, encrypted)
    with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
        install(pki.next_cert, cert)
        install(encrypted, key)
        deadline = time.monotonic() + 30
        while not any(r.getMessage().startswith("TLS files not applied") for r in caplog.records):
            assert time.monotonic() < deadline, "the encrypted key was never reported"
            time.sleep(0.05)
    assert "is encrypted" in logged_error(caplog)
    assert served_certificate(port, pki) == der(pki.server_cert)

    # The check still runs: the plain key is applied when it lands.
    install(pki.next_key, key)
    deadline = time.monotonic() + 30
    while served_certificate(port, pki) != der(pki.next_cert):
        assert time.monotonic() < deadline, "the periodic check stopped after the encrypted key"
        time.sleep(0.05)

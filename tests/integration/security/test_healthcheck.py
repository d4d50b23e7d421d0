"""`python -m tesserad.tools.healthcheck`, as the container images and exec probes run it."""

from __future__ import annotations

import socket

from tesserad.security import Role
from tesserad.tools import healthcheck


def test_a_serving_daemon_is_healthy(daemon, capsys):
    assert healthcheck.main(["--address", daemon.target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_health_of_one_service(daemon):
    assert healthcheck.main(["--address", daemon.target, "--service", "tessera.v1.Inference"]) == 0


def test_no_daemon_is_unhealthy(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert healthcheck.main(["--address", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert capsys.readouterr().err.startswith("unhealthy: ")


def test_healthy_over_mutual_tls(start_daemon, pki):
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(pki.client_ca),
        }
    )
    args = ["--address", f"127.0.0.1:{daemon.daemon.port}", "--tls-ca", str(pki.ca)]
    args += [
        "--tls-server-name",
        "localhost",
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
    ]
    assert healthcheck.main(args) == 0


def test_a_token_file_reaches_health_that_is_not_open(start_daemon, tokens, tmp_path, capsys):
    daemon = start_daemon(**{"security.tokens_file": str(tokens.file), "security.health_open": "false"})
    assert healthcheck.main(["--address", daemon.target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    token_file = tmp_path / "probe-token"
    token_file.write_text(tokens.token[Role.READER] + "\n")  # as a mounted secret often ends
    assert healthcheck.main(["--address", daemon.target, "--token-file", str(token_file)]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"

"""`python -m tesserad.tools.healthcheck`, as the container images and exec probes run it."""

from __future__ import annotations

import socket

from tesserad.api.health import LIVENESS_SERVICE
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


def test_without_an_address_it_checks_the_listener_of_the_daemons_settings_over_its_tls(
    start_daemon, pki, capsys
):
    tls = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(pki.server_key)}
    daemon = start_daemon(**tls)
    # As the image's environment gives them: every address, the port moved, TLS turned on.
    environ = {
        "TESSERA_LISTEN": f"0.0.0.0:{daemon.daemon.port}",
        "TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert),
        "TESSERA_SECURITY_TLS_KEY_FILE": str(pki.server_key),
    }
    assert healthcheck.main([], environ) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert healthcheck.main(["--tls-ca", str(pki.ca)], environ) == 0


def test_without_an_address_it_reads_the_daemons_config_file(daemon, tmp_path):
    config = tmp_path / "tesserad.toml"
    config.write_text(f'listen = "127.0.0.1:{daemon.daemon.port}"\n')
    assert healthcheck.main(["--config", str(config)], {}) == 0
    # The environment wins over the file, as for the daemon.
    assert healthcheck.main(["--config", str(config)], {"TESSERA_LISTEN": daemon.target}) == 0


def test_settings_it_cannot_use_say_what_to_fix(start_daemon, pki, tmp_path, capsys):
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(pki.client_ca),
        }
    )
    environ = {
        "TESSERA_LISTEN": f"127.0.0.1:{daemon.daemon.port}",
        "TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert),
        "TESSERA_SECURITY_TLS_KEY_FILE": str(pki.server_key),
        "TESSERA_SECURITY_TLS_CLIENT_CA_FILE": str(pki.client_ca),
    }
    assert healthcheck.main([], environ) == 1
    assert "security.tls_client_ca_file): give --tls-cert and --tls-key" in capsys.readouterr().err
    client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert healthcheck.main(client, environ) == 0
    assert healthcheck.main([], {"TESSERA_LISTEN": "nowhere"}) == 1
    assert capsys.readouterr().err.startswith("unhealthy: the daemon's settings: invalid settings:")


def test_tls_flags_are_honoured_when_the_settings_it_reads_turn_tls_off(start_daemon, pki, capsys):
    """TLS set in a config file the tool was not given: its flags still say to speak TLS."""
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(pki.server_cert),
            "security.tls_key_file": str(pki.server_key),
            "security.tls_client_ca_file": str(pki.client_ca),
        }
    )
    environ = {"TESSERA_LISTEN": f"127.0.0.1:{daemon.daemon.port}"}
    client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    tls = ["--tls-ca", str(pki.ca), "--tls-server-name", "localhost", *client]
    assert healthcheck.main(tls, environ) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    # Without the roots to check the server against, it says what to give.
    assert healthcheck.main(client, environ) == 1
    assert "give --tls-ca" in capsys.readouterr().err


def test_tls_flags_without_tls_ca_beside_an_address_say_what_to_give(daemon, pki, capsys):
    """They alone would probe in plaintext, the TLS asked for silently dropped."""
    for flags in (
        ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)],
        ["--tls-server-name", "localhost"],
    ):
        assert healthcheck.main(["--address", daemon.target, *flags]) == 1
        assert capsys.readouterr().err == (
            f"unhealthy: --tls-* flags ask for TLS to {daemon.target} without --tls-ca: give --tls-ca, "
            "the CA that signed the server certificate\n"
        )


def test_liveness_of_a_daemon(daemon, capsys):
    assert healthcheck.main(["--address", daemon.target, "--service", LIVENESS_SERVICE]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


def test_a_plaintext_probe_of_a_tls_port_says_it_speaks_tls_and_the_flag_to_give(start_daemon, pki, capsys):
    daemon = start_daemon(
        **{"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(pki.server_key)}
    )
    address = f"127.0.0.1:{daemon.daemon.port}"
    assert healthcheck.main(["--address", address, "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: {address} speaks TLS, and this probe sent plaintext: give --tls-ca"), (
        err
    )
    assert "gRPC said: " in err, err


def test_a_plaintext_probe_of_a_port_where_nothing_listens_says_no_tls(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert healthcheck.main(["--address", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert "speaks TLS" not in capsys.readouterr().err

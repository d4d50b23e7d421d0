"""The `tessera` command line the demo's closing suggestions start with."""

from __future__ import annotations

from tessera.demo import tessera_command
from tessera.transport import DEFAULT_TARGET, TLS


def test_the_default_address_without_tls_needs_no_options():
    assert tessera_command(DEFAULT_TARGET, None) == "tessera"


def test_an_address_a_shell_would_glob_is_quoted():
    """`[::1]:50051` unquoted is a glob pattern in zsh ("no matches found")."""
    assert tessera_command("[::1]:50051", None) == "tessera --target '[::1]:50051'"


def test_the_tls_files_the_demo_used_are_repeated():
    tls = TLS(ca_file="ca dir/ca.pem", cert_file="client.pem", key_file="client.key", server_name="tesserad")
    assert tessera_command("10.0.0.5:50051", tls) == (
        "tessera --target 10.0.0.5:50051 --tls-ca 'ca dir/ca.pem' --tls-cert client.pem "
        "--tls-key client.key --tls-server-name tesserad"
    )


def test_tls_with_the_systems_cas_is_said_with_tls_alone():
    assert tessera_command(DEFAULT_TARGET, TLS()) == "tessera --tls"

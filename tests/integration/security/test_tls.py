"""TLS and mutual TLS with certificates made for the test, and the checks on TLS settings at start."""

from __future__ import annotations

import asyncio
import json
import socket

import grpc
import pytest

import tessera
import tessera.aio
from tessera.cli import EXIT_DAEMON
from tessera.cli import main as tessera_main
from tessera.errors import Unavailable, explain_unreachable, listener_beside_refused, unreachable_message
from tesserad.security import Role
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, bearer, encrypt_key

PATH = "/tessera.v1.System/GetServerInfo"


def tls_settings(pki: Pki, mutual: bool = False) -> dict[str, str]:
    settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(pki.server_key)}
    if mutual:
        settings["security.tls_client_ca_file"] = str(pki.client_ca)
    return settings


def secure_call(port: int, credentials: grpc.ChannelCredentials, metadata=None) -> grpc.StatusCode:
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        try:
            channel.unary_unary(PATH)(b"", metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def plaintext_call(port: int) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(PATH)(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_serves_clients_that_trust_the_ca(start_daemon, pki):
    daemon = start_daemon(**tls_settings(pki))
    assert secure_call(daemon.daemon.port, pki.channel_credentials()) == grpc.StatusCode.OK


def test_tls_refuses_plaintext_clients(start_daemon, pki):
    daemon = start_daemon(**tls_settings(pki))
    assert plaintext_call(daemon.daemon.port) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_signed_by_another_ca(start_daemon, pki):
    daemon = start_daemon(**tls_settings(pki))
    wrong_trust = grpc.ssl_channel_credentials(root_certificates=pki.client_ca.read_bytes())
    assert secure_call(daemon.daemon.port, wrong_trust) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_admits_a_client_certificate_from_the_client_ca(start_daemon, pki):
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    assert secure_call(daemon.daemon.port, pki.channel_credentials("client")) == grpc.StatusCode.OK


@pytest.mark.parametrize("client", [None, "rogue"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(start_daemon, pki, client):
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    assert secure_call(daemon.daemon.port, pki.channel_credentials(client)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_tokens_needs_both(start_daemon, pki, tokens):
    daemon = start_daemon(**tls_settings(pki, mutual=True), **{"security.tokens_file": str(tokens.file)})
    port = daemon.daemon.port
    assert secure_call(port, pki.channel_credentials("client")) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        secure_call(port, pki.channel_credentials("client"), bearer(tokens.token[Role.READER]))
        == grpc.StatusCode.OK
    )
    assert (
        secure_call(port, pki.channel_credentials(None), bearer(tokens.token[Role.READER]))
        == grpc.StatusCode.UNAVAILABLE
    )


def start_fails(data_dir, **overrides: str) -> str:
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(data_dir, **overrides)).start()
    return str(err.value)


def test_a_certificate_without_its_key_stops_the_start(data_dir, pki):
    message = start_fails(data_dir, **{"security.tls_cert_file": str(pki.server_cert)})
    assert "set security.tls_key_file too" in message


def test_a_client_ca_without_tls_stops_the_start(data_dir, pki):
    message = start_fails(data_dir, **{"security.tls_client_ca_file": str(pki.client_ca)})
    assert "mutual TLS runs on top of TLS" in message


def test_a_key_of_another_certificate_stops_the_start(data_dir, pki):
    message = start_fails(
        data_dir,
        **{"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(pki.client_key)},
    )
    assert "not a usable certificate and matching private key" in message


def test_a_missing_certificate_file_stops_the_start(data_dir, pki, tmp_path):
    message = start_fails(
        data_dir,
        **{
            "security.tls_cert_file": str(tmp_path / "nope.pem"),
            "security.tls_key_file": str(pki.server_key),
        },
    )
    assert f"security.tls_cert_file {tmp_path / 'nope.pem'} cannot be read" in message


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "nope.pem",
            "cannot be read: No such file or directory; put the file there or point {setting} at it",
        ),
        ("a-directory", "cannot be read: Is a directory; point {setting} at a PEM file in it"),
    ],
    ids=["missing", "directory"],
)
@pytest.mark.parametrize("setting", ["security.tls_cert_file", "security.tls_key_file"])
def test_a_tls_file_that_cannot_be_read_names_the_setting_the_reason_and_the_fix(
    data_dir, pki, tmp_path, setting, name, said
):
    (tmp_path / "a-directory").mkdir()
    message = start_fails(data_dir, **{**tls_settings(pki), setting: str(tmp_path / name)})
    assert message == f"{setting} {tmp_path / name} {said.format(setting=setting)}"


def test_a_file_that_is_not_pem_stops_the_start(data_dir, pki, tmp_path):
    (tmp_path / "ca.txt").write_text("not a certificate")
    message = start_fails(
        data_dir, **tls_settings(pki), **{"security.tls_client_ca_file": str(tmp_path / "ca.txt")}
    )
    assert "is not a PEM file" in message


def test_a_bad_tokens_file_stops_the_start(data_dir, tmp_path):
    (tmp_path / "tokens.toml").write_text('[[tokens]]\nname = "ci"\nrole = "root"\nsha256 = "00"\n')
    message = start_fails(data_dir, **{"security.tokens_file": str(tmp_path / "tokens.toml")})
    assert "unknown role 'root'" in message


def test_an_encrypted_key_stops_the_start_saying_to_decrypt_it(data_dir, pki, tmp_path):
    key = tmp_path / "encrypted.key"
    encrypt_key(pki.server_key, key)
    message = start_fails(
        data_dir, **{"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
    )
    assert f"security.tls_key_file {key} is encrypted" in message and "openssl pkey" in message


def test_an_sdk_client_in_plaintext_to_a_tls_daemon_is_told_to_turn_tls_on(start_daemon, pki):
    daemon = start_daemon(**tls_settings(pki))
    target = f"127.0.0.1:{daemon.daemon.port}"
    with tessera.Client(target, timeout=5) as client, pytest.raises(tessera.Unavailable) as failed:
        client.system.info()
    message = failed.value.message
    assert message.startswith(f"is tesserad running at {target}? "), message
    assert "this client sends plaintext: a daemon serving TLS needs `tls=`" in message, message
    assert message.count("; gRPC said: ") == 1, message


def test_an_sdk_client_that_does_not_trust_the_daemon_is_told_to_check_its_tls_not_to_start_one(
    start_daemon, pki
):
    """A daemon serving TLS with a certificate this client's CA did not sign is running."""
    daemon = start_daemon(**tls_settings(pki))
    target = f"127.0.0.1:{daemon.daemon.port}"
    wrong_ca = tessera.TLS(ca_file=pki.client_ca)
    with (
        tessera.Client(target, tls=wrong_ca, timeout=5) as client,
        pytest.raises(tessera.Unavailable) as failed,
    ):
        client.system.info()
    message = failed.value.message
    assert message.startswith(f"the TLS handshake with {target} failed: "), message
    assert "`TLS(ca_file=)`" in message and "`TLS(server_name=)`" in message, message
    assert "`TLS(cert_file=, key_file=)`" in message, message
    assert "tesserad serve" not in message, message
    assert "CERTIFICATE_VERIFY_FAILED" in message.split("; gRPC said: ", 1)[1], message


def mutual_tls_failure(daemon, tls: tessera.TLS) -> str:
    """The message of a blocking and of an asyncio SDK client's call that `daemon` refuses (the
    two must say the same)."""
    target = f"127.0.0.1:{daemon.daemon.port}"
    with tessera.Client(target, tls=tls, timeout=5) as client, pytest.raises(tessera.Unavailable) as failed:
        client.system.info()

    async def aio_failure() -> str:
        async with tessera.aio.Client(target, tls=tls, timeout=5) as aio_client:
            with pytest.raises(tessera.Unavailable) as aio_failed:
                await aio_client.system.info()
            return aio_failed.value.message

    aio_message = asyncio.run(asyncio.wait_for(aio_failure(), 60))
    message = failed.value.message
    assert aio_message.split("; gRPC said: ")[0] == message.split("; gRPC said: ")[0], (message, aio_message)
    assert "tesserad serve" not in message, message
    assert message.count("; gRPC said: ") == 1, message
    return message


def test_an_sdk_client_without_a_certificate_is_told_the_daemon_may_require_one(start_daemon, pki):
    """Under TLS 1.3 a daemon checks the client's certificate after the client's side of the
    handshake ended: gRPC says only "Socket closed", which read as no daemon there."""
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    message = mutual_tls_failure(daemon, tessera.TLS(ca_file=pki.ca))
    assert message.startswith(
        f"the daemon at 127.0.0.1:{daemon.daemon.port} may require a client certificate (mutual TLS): "
    ), message
    assert "as `TLS(cert_file=, key_file=)`" in message, message


def test_an_sdk_client_with_a_certificate_the_daemon_does_not_trust_is_told_to_check_its_ca(
    start_daemon, pki
):
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    rogue = tessera.TLS(ca_file=pki.ca, cert_file=pki.rogue_cert, key_file=pki.rogue_key)
    message = mutual_tls_failure(daemon, rogue)
    assert message.startswith(
        f"the daemon at 127.0.0.1:{daemon.daemon.port} may not trust this client's certificate (mutual TLS): "
    ), message
    assert "check that the CA there signed the one given as `TLS(cert_file=, key_file=)`" in message, message


def test_the_cli_without_a_certificate_is_told_its_flags_for_one(start_daemon, pki, capsys):
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    target = f"127.0.0.1:{daemon.daemon.port}"
    code = tessera_main(["--target", target, "--tls-ca", str(pki.ca), "--timeout", "5", "info"])
    err = capsys.readouterr().err
    assert code == EXIT_DAEMON, err
    assert err.startswith(
        f"tessera: UNAVAILABLE: the daemon at {target} may require a client certificate (mutual TLS): "
    ), err
    assert "as --tls-cert FILE and --tls-key FILE; gRPC said: " in err, err
    client = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert tessera_main(["--target", target, "--tls-ca", str(pki.ca), *client, "info"]) == 0


# gRPC's words for a connection ::1 refused, and the skip where it has no ::1 to try.
REFUSED_AT_IPV6 = "ipv6:%5B::1%5D:"
needs_ipv6_localhost = pytest.mark.skipif(
    "::1" not in {str(info[4][0]) for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)},
    reason="localhost resolves to no ::1 here: nothing to refuse a connection beside the daemon's 127.0.0.1",
)


@needs_ipv6_localhost
def test_the_cli_without_a_certificate_for_localhost_is_told_so_whichever_address_failed_last(
    start_daemon, pki, capsys
):
    """gRPC tries `localhost` at ::1 and 127.0.0.1 and names only the last failure: ::1's refused
    connection, where nothing listens, read as no daemon there."""
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    target = f"localhost:{daemon.daemon.port}"
    for _ in range(6):
        code = tessera_main(["--target", target, "--tls-ca", str(pki.ca), "--timeout", "5", "info"])
        err = capsys.readouterr().err
        assert code == EXIT_DAEMON, err
        assert "tesserad serve" not in err, err
        if f"{REFUSED_AT_IPV6}{daemon.daemon.port}" in err:
            assert err.startswith(
                f"tessera: UNAVAILABLE: the daemon at {target} did not take this client's TLS connection: "
                f"it accepts connections at 127.0.0.1:{daemon.daemon.port} "
            ), err
        else:
            assert err.startswith(
                f"tessera: UNAVAILABLE: the daemon at {target} may require a client certificate (mutual TLS): "
            ), err


@needs_ipv6_localhost
@pytest.mark.parametrize("client_cert", [False, True])
def test_a_refused_address_beside_one_where_the_daemon_listens_is_not_read_as_no_daemon(
    start_daemon, pki, client_cert
):
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    port = daemon.daemon.port
    refused = (
        f"connections to all backends failing; last error: UNKNOWN: {REFUSED_AT_IPV6}"
        f"{port}: Failed to connect to remote host: Connection refused"
    )
    message = explain_unreachable(Unavailable(refused), f"localhost:{port}", True, client_cert).message
    assert message.startswith(
        f"the daemon at localhost:{port} did not take this client's TLS connection: it accepts "
        f"connections at 127.0.0.1:{port} (gRPC's words are for ::1, another address of the host"
    ), message
    assert "tesserad serve" not in message, message


@pytest.mark.parametrize(
    ("client_cert", "trust"),
    [
        (
            False,
            "where it requires a client certificate (mutual TLS), pass one signed by the CA in its "
            "security.tls_client_ca_file as `TLS(cert_file=, key_file=)`",
        ),
        (
            True,
            "where it does not trust this client's certificate (mutual TLS), check that the CA in its "
            "security.tls_client_ca_file signed the one given as `TLS(cert_file=, key_file=)`",
        ),
    ],
)
def test_a_daemon_found_beside_a_refused_address_is_not_assumed_to_want_a_client_certificate(
    client_cert, trust
):
    """Its own words are lost: a daemon serving plaintext (the default) to a client passed TLS
    by mistake is as likely as one whose CA is another, or one that asks for a certificate."""
    refused = (
        f"last error: UNKNOWN: {REFUSED_AT_IPV6}50051: Failed to connect to remote host: Connection refused"
    )
    message = unreachable_message("localhost:50051", refused, True, client_cert, listener="127.0.0.1:50051")
    assert message == (
        "the daemon at localhost:50051 did not take this client's TLS connection: it accepts connections "
        "at 127.0.0.1:50051 (gRPC's words are for ::1, another address of the host, where nothing "
        "listens); where it serves plaintext, connect without `tls=` (a tessera.TLS, or True for the "
        "system's CAs); where another CA signed its certificate, give that CA as `TLS(ca_file=)`; "
        f"{trust}; gRPC said: {refused}"
    )


def test_a_refusal_at_an_address_the_target_does_not_resolve_to_finds_no_daemon_beside_it(start_daemon, pki):
    """Behind a proxy (grpc_proxy) the address that refused the connection is the proxy's: the
    daemon listening at the target's own address is not beside it."""
    daemon = start_daemon(**tls_settings(pki, mutual=True))
    port = daemon.daemon.port
    refused = (
        f"last error: UNKNOWN: ipv4:192.0.2.7:{port}: Failed to connect to remote host: Connection refused"
    )
    assert listener_beside_refused(f"localhost:{port}", refused) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_tls_client_finding_no_daemon_is_still_told_to_start_one(pki, host):
    """Nothing listens: the connection is refused before any handshake."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        target = f"{host}:{unused.getsockname()[1]}"
        tls = tessera.TLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        with (
            tessera.Client(target, tls=tls, timeout=5) as client,
            pytest.raises(tessera.Unavailable) as failed,
        ):
            client.system.info()
    message = failed.value.message
    assert message.startswith(f"is tesserad running at {target}? "), message
    assert "this client uses TLS: a daemon serving plaintext does not answer it" in message, message


def test_a_plaintext_connection_to_a_tls_daemon_adds_no_line_that_is_not_json(spawn_daemon, pki, tmp_path):
    # gRPC core logs each failed handshake in a format of its own; a scanner would flood the log.
    daemon = spawn_daemon(
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        env={
            "TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert),
            "TESSERA_SECURITY_TLS_KEY_FILE": str(pki.server_key),
            # As unset: the test runner's own would be inherited.
            "GRPC_VERBOSITY": "",
        },
    )
    port = int(daemon.wait_serving().rsplit(":", 1)[1])
    assert plaintext_call(port) == grpc.StatusCode.UNAVAILABLE
    # A call the daemon answers after the refused one: gRPC core has logged what it would log.
    assert secure_call(port, pki.channel_credentials()) == grpc.StatusCode.OK
    daemon.terminate()
    lines = [line for line in daemon.output().splitlines() if line.strip()]
    assert lines
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            not_json.append(line)
    assert not_json == []


def test_the_cli_takes_its_tls_ca_from_the_environment(start_daemon, pki, monkeypatch, capsys):
    daemon = start_daemon(**tls_settings(pki))
    target = f"127.0.0.1:{daemon.daemon.port}"
    monkeypatch.setenv("TESSERA_TLS_CA", str(pki.ca))
    assert tessera_main(["--target", target, "--timeout", "5", "info"]) == 0, capsys.readouterr().err
    # A flag given wins: this CA did not sign the daemon's certificate.
    assert tessera_main(["--target", target, "--tls-ca", str(pki.client_ca), "--timeout", "5", "info"]) == (
        EXIT_DAEMON
    )
    assert "TLS handshake" in capsys.readouterr().err
    monkeypatch.setenv("TESSERA_TLS_CA", "")
    assert tessera_main(["--target", target, "--timeout", "5", "info"]) == EXIT_DAEMON
    assert "this client sends plaintext" in capsys.readouterr().err

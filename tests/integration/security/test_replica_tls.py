"""A replica reaches a TLS primary over TLS when given the CA, and a certificate that does not
verify stops the replica at start with the setting to fix."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tesserad.api import follow as follow_module
from tesserad.cli import EXIT_BAD_SETTINGS, EXIT_CANNOT_START
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import encrypt_key
from tests.integration.security.test_tls import tls_settings


@pytest.fixture
def tls_primary(start_daemon, pki) -> InProcessDaemon:
    return start_daemon(**tls_settings(pki))


def test_a_replica_given_the_primarys_ca_follows_it_over_tls(tls_primary, pki, tmp_path):
    # replica.tls is not set: the CA alone turns TLS on (the primary refuses plaintext).
    replica = InProcessDaemon(
        daemon_settings(
            tmp_path / "replica",
            **{"replica.primary": f"localhost:{tls_primary.daemon.port}", "replica.tls_ca_file": str(pki.ca)},
        )
    ).start()
    try:
        health = health_pb2_grpc.HealthStub(replica.channel())
        deadline = time.monotonic() + 60
        while (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            != health_pb2.HealthCheckResponse.SERVING
        ):
            assert time.monotonic() < deadline, "the replica never caught up with its TLS primary"
            time.sleep(0.05)
    finally:
        replica.stop()


def replica_start_error(tmp_path: Path, **overrides: str) -> str:
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "replica", **overrides)).start()
    return str(err.value)


def test_a_primary_certificate_that_does_not_verify_stops_the_replica_at_start(tls_primary, pki, tmp_path):
    primary = f"localhost:{tls_primary.daemon.port}"
    wrong_ca = replica_start_error(
        tmp_path, **{"replica.primary": primary, "replica.tls_ca_file": str(pki.client_ca)}
    )
    assert "presented a certificate that does not verify" in wrong_ca and "replica.tls_ca_file" in wrong_ca
    wrong_name = replica_start_error(
        tmp_path,
        **{
            "replica.primary": primary,
            "replica.tls_ca_file": str(pki.ca),
            "replica.tls_server_name": "elsewhere.example",
        },
    )
    assert "for the name 'elsewhere.example'" in wrong_name and "replica.tls_server_name" in wrong_name


def test_a_replica_set_for_tls_does_not_start_against_a_plaintext_primary(start_daemon, tmp_path):
    primary = start_daemon()
    message = replica_start_error(tmp_path, **{"replica.primary": primary.target, "replica.tls": "true"})
    assert "check that it serves TLS" in message


@pytest.mark.parametrize("given", ["replica.tls_cert_file", "replica.tls_key_file"])
def test_a_client_certificate_without_its_key_stops_the_replica_naming_both(
    tls_primary, pki, tmp_path, given
):
    path = pki.client_cert if given == "replica.tls_cert_file" else pki.client_key
    message = replica_start_error(
        tmp_path,
        **{
            "replica.primary": f"localhost:{tls_primary.daemon.port}",
            "replica.tls_ca_file": str(pki.ca),
            given: str(path),
        },
    )
    assert "replica.tls_cert_file and replica.tls_key_file go together" in message


def test_the_replicas_tls_files_are_checked_whatever_the_primarys_target(tmp_path):
    # A target that is not host:port skips the start-up handshake, not the files' check.
    missing = tmp_path / "missing-ca.pem"
    message = replica_start_error(
        tmp_path, **{"replica.primary": "dns:///primary.invalid", "replica.tls_ca_file": str(missing)}
    )
    assert f"replica.tls_ca_file {missing} cannot be read: No such file or directory" in message


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
@pytest.mark.parametrize("setting", ["replica.tls_ca_file", "replica.tls_cert_file", "replica.tls_key_file"])
def test_a_replica_tls_file_that_cannot_be_read_names_the_setting_the_reason_and_the_fix(
    pki, tmp_path, setting, name, said
):
    (tmp_path / "a-directory").mkdir()
    files = {
        "replica.tls_ca_file": str(pki.ca),
        "replica.tls_cert_file": str(pki.client_cert),
        "replica.tls_key_file": str(pki.client_key),
    }
    message = replica_start_error(
        tmp_path, **{"replica.primary": "127.0.0.1:1", **files, setting: str(tmp_path / name)}
    )
    assert message == f"{setting} {tmp_path / name} {said.format(setting=setting)}"


def test_a_client_key_of_another_certificate_stops_the_replica_naming_both(pki, tmp_path):
    message = replica_start_error(
        tmp_path,
        **{
            "replica.primary": "127.0.0.1:1",
            "replica.tls_cert_file": str(pki.client_cert),
            "replica.tls_key_file": str(pki.rogue_key),
        },
    )
    assert message.startswith(
        f"replica.tls_cert_file {pki.client_cert} and replica.tls_key_file {pki.rogue_key} are not a "
        "usable certificate and matching private key ("
    ), message


@pytest.mark.parametrize(
    ("files", "status", "said"),
    [
        (
            {"TESSERA_REPLICA_TLS_CA_FILE": "missing-ca.pem"},
            EXIT_CANNOT_START,
            "replica.tls_ca_file missing-ca.pem",
        ),
        ({"TESSERA_REPLICA_TLS_KEY_FILE": "client.key"}, EXIT_BAD_SETTINGS, "go together"),
        (
            {"TESSERA_REPLICA_TLS_CERT_FILE": "client", "TESSERA_REPLICA_TLS_KEY_FILE": "rogue"},
            EXIT_CANNOT_START,
            "not a usable certificate",
        ),
    ],
    ids=["ca-missing", "key-without-certificate", "key-of-another-certificate"],
)
def test_a_refused_replica_leaves_no_data_directory(spawn_daemon, pki, tmp_path, files, status, said):
    """As a refused primary: the replica.tls_* files are checked before the data directory is
    made, so no empty replica cache is left for the next start to find."""
    pair = {"client": str(pki.client_cert), "rogue": str(pki.rogue_key)}
    daemon = spawn_daemon(
        "--follow",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        "replica",
        env={name: pair.get(value, value) for name, value in files.items()},
        cwd=tmp_path,
    )
    assert daemon.process.wait(60) == status
    output = daemon.output()
    assert said in output and "Traceback" not in output, output
    assert not (tmp_path / "replica").exists()


def test_an_encrypted_client_key_stops_the_replica_saying_to_decrypt_it(tls_primary, pki, tmp_path):
    key = tmp_path / "encrypted.key"
    encrypt_key(pki.client_key, key)
    message = replica_start_error(
        tmp_path,
        **{
            "replica.primary": f"localhost:{tls_primary.daemon.port}",
            "replica.tls_ca_file": str(pki.ca),
            "replica.tls_cert_file": str(pki.client_cert),
            "replica.tls_key_file": str(key),
        },
    )
    assert f"replica.tls_key_file {key} is encrypted" in message and "openssl pkey" in message


@pytest.mark.parametrize("setting", ["replica.tls_ca_file", "replica.tls_cert_file", "replica.tls_key_file"])
def test_a_replica_tls_file_removed_between_its_read_and_its_load_names_the_setting(
    pki, tmp_path, monkeypatch, setting
):
    """A file read, then removed before ssl loaded it (a rotation under way), escaped as a bare
    OSError traceback instead of the start-up error."""
    files = {
        "replica.tls_ca_file": tmp_path / "ca.pem",
        "replica.tls_cert_file": tmp_path / "client.pem",
        "replica.tls_key_file": tmp_path / "client.key",
    }
    for path, source in zip(files.values(), (pki.ca, pki.client_cert, pki.client_key), strict=True):
        shutil.copyfile(source, path)
    read_pem = follow_module.read_pem

    def read_then_removed(name: str, path: Path) -> bytes:
        data = read_pem(name, path)
        if name == setting:
            path.unlink(missing_ok=True)
        return data

    monkeypatch.setattr(follow_module, "read_pem", read_then_removed)
    message = replica_start_error(
        tmp_path, **{"replica.primary": "127.0.0.1:1", **{name: str(path) for name, path in files.items()}}
    )
    assert message == (
        f"{setting} {files[setting]} cannot be read: No such file or directory; put the file there "
        f"or point {setting} at it"
    )

"""A TLS private key file that other users of the host may read is refused, at start and on a
reload, as PostgreSQL refuses its server key: 0600 at most, or 0640 when root owns it."""

from __future__ import annotations

import logging
import os
import shutil

import grpc
import pytest

from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki
from tests.integration.security.test_tls import secure_call
from tests.integration.security.test_tls_rotation import der, install, logged_error, served_certificate

# What the refusal tells the owner of a key the test writes to run: root may keep its group's read.
OWN_CHMOD = "640" if os.getuid() == 0 else "600"


def copy_key(pki: Pki, tmp_path, mode: int):
    key = tmp_path / "server.key"
    shutil.copyfile(pki.server_key, key)
    key.chmod(mode)
    return key


def test_a_key_every_user_can_read_stops_the_daemon_naming_the_file_and_the_chmod(
    spawn_daemon, pki, tmp_path
):
    key = copy_key(pki, tmp_path, 0o644)
    daemon = spawn_daemon(
        "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
        env={"TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert), "TESSERA_SECURITY_TLS_KEY_FILE": str(key)},
    )  # fmt: skip
    assert daemon.process.wait(60) == 1
    output = daemon.output()
    assert (
        f"security.tls_key_file {key}: the private key is open to every user of this host (mode 0644)"
        in output
    )
    assert f"`chmod {OWN_CHMOD} {key}`" in output
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a key file to another user")
def test_a_key_its_group_can_read_is_refused_unless_root_owns_it(start_daemon, pki, tmp_path):
    key = copy_key(pki, tmp_path, 0o640)
    settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
    # Owned by another user than root, as the daemon's own user would own it.
    os.chown(key, 65534, 65534)
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "refused", **settings)).start()
    message = str(err.value)
    assert (
        f"security.tls_key_file {key}: the private key is open to the users of its group (mode 0640)"
        in message
    )
    assert f"`chmod 600 {key}`" in message
    os.chown(key, 0, 0)
    daemon = start_daemon(**settings)
    assert secure_call(daemon.daemon.port, pki.channel_credentials()) == grpc.StatusCode.OK


def test_a_reload_keeps_the_certificate_in_use_when_the_new_key_is_readable_by_all(
    start_daemon, pki, tmp_path, caplog
):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server_cert, cert)
    install(pki.server_key, key)
    daemon = start_daemon(
        **{
            "security.tls_cert_file": str(cert),
            "security.tls_key_file": str(key),
            "security.tokens_reload_interval_s": "0",
        }
    )
    port = daemon.daemon.port
    install(pki.next_cert, cert)
    exposed = tmp_path / "next.key"
    shutil.copyfile(pki.next_key, exposed)
    exposed.chmod(0o644)
    install(exposed, key)
    with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
        daemon.run(daemon.daemon.reload())
    error = logged_error(caplog)
    assert f"security.tls_key_file {key}: the private key is open to every user of this host" in error
    assert f"`chmod {OWN_CHMOD} {key}`" in error
    assert served_certificate(port, pki) == der(pki.server_cert)

    key.chmod(0o600)
    daemon.run(daemon.daemon.reload())
    assert served_certificate(port, pki) == der(pki.next_cert)


def test_a_replicas_client_key_every_user_can_read_stops_the_replica(start_daemon, pki, tmp_path):
    primary = start_daemon(
        **{"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(pki.server_key)}
    )
    key = tmp_path / "client.key"
    shutil.copyfile(pki.client_key, key)
    key.chmod(0o644)
    settings = {
        "replica.primary": f"localhost:{primary.daemon.port}",
        "replica.tls_ca_file": str(pki.ca),
        "replica.tls_cert_file": str(pki.client_cert),
        "replica.tls_key_file": str(key),
    }
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "replica", **settings)).start()
    message = str(err.value)
    assert (
        f"replica.tls_key_file {key}: the private key is open to every user of this host (mode 0644)"
        in message
    )
    assert f"`chmod {OWN_CHMOD} {key}`" in message

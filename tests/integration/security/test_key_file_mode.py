"""A TLS private key file that other users of the host may read is refused, at start and on a
reload, as PostgreSQL refuses its server key: 0600 at most, or 0640 when root owns it, and one
neither root nor the daemon's user owns."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki
from tests.integration.security.test_tls import secure_call
from tests.integration.security.test_tls_rotation import der, install, logged_error, served_certificate
from tests.tmpfs import tmpfs

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
def test_a_key_another_user_owns_is_refused_naming_the_owner_and_root_may_share_it_with_its_group(
    start_daemon, pki, tmp_path
):
    key = copy_key(pki, tmp_path, 0o600)
    settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
    os.chown(key, 65534, 65534)
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "refused", **settings)).start()
    message = str(err.value)
    owner = f"{pwd.getpwuid(65534).pw_name} (uid 65534)"
    assert f"security.tls_key_file {key}: the private key is owned by {owner}, not by the user" in message
    assert f"`chown root {key}`" in message
    os.chown(key, 0, 0)
    key.chmod(0o640)
    daemon = start_daemon(**settings)
    assert secure_call(daemon.daemon.port, pki.channel_credentials()) == grpc.StatusCode.OK


@pytest.mark.skipif(os.getuid() == 0, reason="root's own keys are root's: its group may read them")
def test_a_key_its_group_can_read_is_refused_when_the_daemons_user_owns_it(tmp_path, pki):
    key = copy_key(pki, tmp_path, 0o640)
    settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "refused", **settings)).start()
    message = str(err.value)
    assert "the private key is open to the users of its group (mode 0640)" in message
    assert f"`chmod 600 {key}`" in message


@contextlib.contextmanager
def read_only_bind(source: Path, mount_point: Path) -> Iterator[Path]:
    """`source` bound read-only at `mount_point` (made), as a host's read-only NFS or bind mount;
    the test skips where mounting is not permitted."""
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-o", "ro,bind", str(source), str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip() or mounted.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_a_key_readable_by_all_on_a_read_only_tmpfs_is_fine_unless_another_user_owns_it(pki, tmp_path):
    """As a Kubernetes Secret: 0644 by default, on a tmpfs in the container alone."""
    with tmpfs(tmp_path / "secret", "size=1m") as secret:
        key = copy_key(pki, secret, 0o644)
        other = secret / "other.key"
        shutil.copyfile(pki.server_key, other)
        os.chown(other, 65534, 65534)
        subprocess.run(["mount", "-o", "remount,ro", str(secret)], check=True)
        settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
        daemon = InProcessDaemon(daemon_settings(tmp_path / "data", **settings)).start()
        try:
            assert secure_call(daemon.daemon.port, pki.channel_credentials()) == grpc.StatusCode.OK
        finally:
            daemon.stop()
        settings["security.tls_key_file"] = str(other)
        with pytest.raises(StartupError) as err:
            InProcessDaemon(daemon_settings(tmp_path / "refused", **settings)).start()
    assert f"security.tls_key_file {other}: the private key is owned by" in str(err.value)


def test_a_key_readable_by_all_on_another_read_only_mount_is_refused(pki, tmp_path):
    """A host's read-only bind or NFS mount keeps no one out: the host's other users read it too."""
    shared = tmp_path / "shared"
    shared.mkdir()
    copy_key(pki, shared, 0o644)
    with read_only_bind(shared, tmp_path / "mounted") as mounted:
        key = mounted / "server.key"
        settings = {"security.tls_cert_file": str(pki.server_cert), "security.tls_key_file": str(key)}
        with pytest.raises(StartupError) as err:
            InProcessDaemon(daemon_settings(tmp_path / "refused", **settings)).start()
    assert (
        f"security.tls_key_file {key}: the private key is open to every user of this host (mode 0644)"
        in str(err.value)
    )


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

"""Certificates outside their validity window: the daemon does not start with one, a reload
keeps the certificate in use and logs why, and one that ends within a week is served with a
warning. The same holds for the client certificate of replica.tls_cert_file."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import dated_certificate
from tests.integration.security.test_tls_rotation import der, install, logged_error, served_certificate

NOW = datetime.now(UTC)
EXPIRED = (NOW - timedelta(days=30), NOW - timedelta(days=1))
NOT_YET_VALID = (NOW + timedelta(days=1), NOW + timedelta(days=30))


def day(moment: datetime) -> str:
    """How messages write a moment, to the day (the seconds the certificate holds may differ)."""
    return moment.strftime("%Y-%m-%d")


def start_error(tmp_path: Path, **overrides: str) -> str:
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(tmp_path / "data", **overrides)).start()
    return str(err.value)


@pytest.mark.parametrize(("window", "said"), [(EXPIRED, "has expired"), (NOT_YET_VALID, "is not valid yet")])
def test_a_certificate_outside_its_window_stops_the_start_naming_the_file_and_the_window(
    tmp_path, window, said
):
    cert, key = dated_certificate(tmp_path, "server", *window)
    message = start_error(
        tmp_path, **{"security.tls_cert_file": str(cert), "security.tls_key_file": str(key)}
    )
    assert f"security.tls_cert_file {cert}" in message and said in message
    assert f"valid from {day(window[0])}" in message and f"to {day(window[1])}" in message


def test_the_daemon_exits_1_on_an_expired_certificate_as_on_other_bad_tls_files(spawn_daemon, tmp_path):
    cert, key = dated_certificate(tmp_path, "server", *EXPIRED)
    daemon = spawn_daemon(
        "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
        env={"TESSERA_SECURITY_TLS_CERT_FILE": str(cert), "TESSERA_SECURITY_TLS_KEY_FILE": str(key)},
    )  # fmt: skip
    assert daemon.process.wait(60) == 1
    assert f"security.tls_cert_file {cert}: the certificate 'CN=server' has expired" in daemon.output()


def test_sighup_keeps_serving_the_certificate_in_use_when_the_new_one_has_expired(
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
    expired_cert, expired_key = dated_certificate(tmp_path, "expired", *EXPIRED)
    install(expired_cert, cert)
    install(expired_key, key)
    with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
        daemon.run(daemon.daemon.reload())
    error = logged_error(caplog)
    assert f"security.tls_cert_file {cert}" in error and "has expired" in error
    assert f"valid from {day(EXPIRED[0])}" in error
    assert served_certificate(daemon.daemon.port, pki) == der(pki.server_cert)
    # The dashboard's listener follows the gRPC one's files only when they were applied.
    assert served_certificate(daemon.daemon.http_port, pki) == der(pki.server_cert)


def test_the_periodic_check_refuses_a_certificate_not_valid_yet(start_daemon, pki, tmp_path, caplog):
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
    future_cert, future_key = dated_certificate(tmp_path, "future", *NOT_YET_VALID)
    with caplog.at_level(logging.ERROR, logger="tesserad.api.tls"):
        install(future_key, key)
        install(future_cert, cert)
        deadline = time.monotonic() + 30
        while "is not valid yet" not in "".join(str(getattr(r, "error", "")) for r in caplog.records):
            assert time.monotonic() < deadline, "the certificate not valid yet was never reported"
            time.sleep(0.05)
    assert served_certificate(daemon.daemon.port, pki) == der(pki.server_cert)


def test_a_certificate_ending_within_a_week_is_served_with_a_warning(start_daemon, tmp_path, caplog):
    ends = NOW + timedelta(days=3)
    cert, key = dated_certificate(tmp_path, "soon", NOW - timedelta(days=1), ends)
    with caplog.at_level(logging.WARNING, logger="tesserad.api.tls"):
        start_daemon(**{"security.tls_cert_file": str(cert), "security.tls_key_file": str(key)})
    warnings = [r for r in caplog.records if r.getMessage().startswith("TLS certificate expires soon")]
    assert warnings and warnings[0].file == str(cert) and warnings[0].not_after.startswith(day(ends))


@pytest.mark.parametrize("role", ["replica", "primary"])
def test_an_expired_replica_client_certificate_stops_the_start(pki, tmp_path, role):
    # A replica presents it to its primary; a primary, to the replicas it asks for statistics.
    cert, key = dated_certificate(tmp_path, "client", *EXPIRED)
    settings = {
        "replica.tls_ca_file": str(pki.ca),
        "replica.tls_cert_file": str(cert),
        "replica.tls_key_file": str(key),
    }
    if role == "replica":
        settings["replica.primary"] = "dns:///primary.invalid"
    message = start_error(tmp_path, **settings)
    assert f"replica.tls_cert_file {cert}" in message and "has expired" in message

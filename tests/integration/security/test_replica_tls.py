"""A replica reaches a TLS primary over TLS when given the CA, and a certificate that does not
verify stops the replica at start with the setting to fix."""

from __future__ import annotations

import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
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


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"replica.tls_ca_file": "client_ca"}, "presented a certificate that does not verify"),
        (
            {"replica.tls_ca_file": "ca", "replica.tls_server_name": "elsewhere.example"},
            "for the name 'elsewhere.example'",
        ),
    ],
)
def test_a_primary_certificate_that_does_not_verify_stops_the_replica_at_start(
    tls_primary, pki, tmp_path, settings, problem
):
    overrides = {
        key: str(getattr(pki, value)) if key.endswith("_file") else value for key, value in settings.items()
    }
    with pytest.raises(StartupError) as err:
        InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{"replica.primary": f"localhost:{tls_primary.daemon.port}", **overrides},
            )
        ).start()
    assert problem in str(err.value) and "replica.tls_ca_file" in str(err.value)


def test_a_replica_set_for_tls_does_not_start_against_a_plaintext_primary(start_daemon, tmp_path):
    primary = start_daemon()
    with pytest.raises(StartupError) as err:
        InProcessDaemon(
            daemon_settings(
                tmp_path / "replica", **{"replica.primary": primary.target, "replica.tls": "true"}
            )
        ).start()
    assert "check that it serves TLS" in str(err.value)

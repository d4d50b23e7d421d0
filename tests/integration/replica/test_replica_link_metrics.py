"""A replica stays ready when its primary refuses it, serving the routing it holds: its /metrics
says so (tessera_replica_*), so that an alert can, its GetServerInfo (and `tessera info`) says
which change it routes by, and its log says once when it follows again."""

from __future__ import annotations

import io
import logging
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from serving_models import linear_model, upload
from test_replica_tokens import _Bearer, bearer, wait_for
from test_replicas import eventually, serving_status

from tessera.cli import main as cli_main
from tessera.v1 import registry_pb2, registry_pb2_grpc, system_pb2, system_pb2_grpc
from tesserad.api import follow
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.tcp_proxy import CuttableProxy


def replica_gauges(daemon: InProcessDaemon) -> dict[str, float]:
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tessera_replica_")
    }


def replication(daemon: InProcessDaemon, token: str = "") -> system_pb2.Replication:
    info = system_pb2_grpc.SystemStub(daemon.channel()).GetServerInfo(
        system_pb2.GetServerInfoRequest(), metadata=bearer(token) if token else None, timeout=10
    )
    return info.replication


def info_shown(target: str) -> str:
    screen = io.StringIO()
    console = Console(file=screen, width=400, force_terminal=False, color_system=None)
    assert cli_main(["--target", target, "info"], console=console) == 0
    return screen.getvalue()


def test_a_refused_replica_says_so_on_its_metrics_and_logs_once_that_it_follows_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admin, replica_token = new_token(), new_token()
    tokens_file = tmp_path / "tokens.toml"
    admin_entry = format_entry("admin", Role.ADMIN, hash_token(admin))
    replica_entry = format_entry("replica", Role.READER, hash_token(replica_token))
    tokens_file.write_text(admin_entry + replica_entry)
    (tmp_path / "replica-token").write_text(replica_token + "\n")
    caplog.set_level(logging.INFO, logger=follow.__name__)
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": str(tokens_file)})
    ).start()
    replica = None
    try:
        admin_channel = grpc.intercept_channel(primary.channel(), _Bearer(admin))
        upload(admin_channel, "linear", linear_model(1.0))
        replica = InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{"replica.primary": primary.target, "replica.token_file": str(tmp_path / "replica-token")},
            )
        ).start()
        channel = replica.channel()
        wait_for(health_pb2.HealthCheckResponse.SERVING, channel)
        before = time.time()
        following = replica_gauges(replica)
        assert following["tessera_replica_connected"] == 1
        assert following["tessera_replica_refused"] == 0
        applied = following["tessera_replica_applied_change"]
        assert applied > 0 and following["tessera_replica_primary_change"] == applied
        assert following["tessera_replica_last_contact_timestamp_seconds"] >= before
        at_primary = replication(primary, admin)
        assert at_primary.role == system_pb2.REPLICATION_ROLE_PRIMARY
        assert at_primary.applied_change == applied and at_primary.store_incarnation
        told = replication(replica)
        assert told.role == system_pb2.REPLICATION_ROLE_REPLICA
        assert (told.primary, told.connected, told.refused) == (primary.target, True, False)
        assert (told.applied_change, told.primary_change) == (applied, applied)
        assert told.store_incarnation == at_primary.store_incarnation
        assert told.last_contact.seconds >= int(before)

        # The operator removes the replica's token at the primary: its watch ends, refused.
        tokens_file.write_text(admin_entry)
        primary.run(primary.daemon.reload())

        def refused() -> dict[str, float]:
            gauges = replica_gauges(replica)
            assert gauges["tessera_replica_connected"] == 0 and gauges["tessera_replica_refused"] == 1
            return gauges

        cut_off = eventually(refused, timeout=60)
        upload(admin_channel, "linear", linear_model(2.0))
        # Ready still (it serves what it holds), at the change it last applied, since the stream
        # was last open: the figures an alert on staleness reads.
        assert serving_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert cut_off["tessera_replica_applied_change"] == applied
        assert 0 < cut_off["tessera_replica_last_contact_timestamp_seconds"] < time.time()
        assert replica_gauges(replica) == cut_off
        # Which change it routes by, beside the primary's: an operator can tell without a request.
        told = replication(replica)
        assert (told.connected, told.refused, told.applied_change) == (False, True, applied)
        assert "the primary refused this replica's token (replica.token_file)" in told.refusal
        assert replication(primary, admin).applied_change > applied
        shown = info_shown(replica.target)
        assert f"role replica of {primary.target}, refused by the primary: " in shown
        assert f"routes by change {applied:.0f} (the primary's newest it knows: {applied:.0f})" in shown
        assert "the primary refused this replica" in [
            r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
        ]

        # The token is given back, and the replica told at once (SIGHUP): it follows again.
        tokens_file.write_text(admin_entry + replica_entry)
        primary.run(primary.daemon.reload())
        replica.run(replica.daemon.reload())

        def followed_again() -> dict[str, float]:
            gauges = replica_gauges(replica)
            assert gauges["tessera_replica_connected"] == 1 and gauges["tessera_replica_refused"] == 0
            assert gauges["tessera_replica_applied_change"] > applied
            assert gauges["tessera_replica_primary_change"] == gauges["tessera_replica_applied_change"]
            return gauges

        again = eventually(followed_again, timeout=60)
        assert replication(replica).applied_change == again["tessera_replica_applied_change"]
        assert replication(primary, admin).applied_change == again["tessera_replica_applied_change"]
        said = [
            r.getMessage()
            for r in caplog.records
            if r.name == follow.__name__ and r.levelno == logging.INFO and r.__dict__.get("primary")
        ]
        assert said.count("the primary accepts this replica again; following it") == 1
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_a_replica_whose_applying_stalls_reads_its_stream_on_and_tells_how_far_behind_it_is(
    tmp_path: Path,
) -> None:
    # The replica's first catch-up loads what the primary deploys, downloading it on a second
    # connection, which stalls here. The change stream, on the first, is read on meanwhile: the
    # primary's newest change stays known, and the gap to the one applied is what
    # TesseradReplicaLagging watches, instead of both standing still at the catch-up.
    primary = InProcessDaemon(daemon_settings(tmp_path / "primary")).start()
    proxy = CuttableProxy(int(primary.target.rsplit(":", 1)[1]), answering=1)
    replica = None
    try:
        channel = primary.channel()
        upload(channel, "linear", linear_model(1.0), alias="production")
        registry_pb2_grpc.RegistryStub(channel).Deploy(
            registry_pb2.DeployRequest(
                model="linear", routes=[registry_pb2.Route(alias="production", weight=100)]
            )
        )
        newest = replication(primary).applied_change
        replica = InProcessDaemon(
            daemon_settings(tmp_path / "replica", **{"replica.primary": proxy.target})
        ).start()

        def caught_up() -> None:
            assert replication(replica).primary_change == newest

        eventually(caught_up, timeout=60)
        upload(channel, "linear", linear_model(2.0))
        changed = replication(primary).applied_change

        def behind() -> system_pb2.Replication:
            told = replication(replica)
            assert told.primary_change == changed
            return told

        told = eventually(behind, timeout=60)
        assert told.applied_change == newest < changed
        assert serving_status(replica.channel()) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        proxy.close()  # the download ends at once, not at its deadline
        if replica is not None:
            replica.stop()
        primary.stop()

"""A replica whose connections to its primary go silent (the primary's host gone without a word,
a NAT or load balancer forgetting the connection) finds out by its keepalive pings, connects
again, and catches up with the primary that answers now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from serving_models import linear_model, upload
from test_replicas import assert_scale, assert_serving, eventually

from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.tcp_proxy import CuttableProxy


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def start_primary(spawn: Callable[..., Any], data_dir: Path) -> tuple[Any, str]:
    primary = spawn("--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off")
    return primary, primary.wait_serving()


def test_a_replica_whose_primary_went_silent_connects_again_and_catches_up(
    spawn_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    primary, address = start_primary(spawn_daemon, tmp_path / "primary")
    with grpc.insecure_channel(address) as channel:
        upload(channel, "linear", linear_model(1.0), alias="production")
        registry_pb2_grpc.RegistryStub(channel).Deploy(
            registry_pb2.DeployRequest(
                model="linear", routes=[registry_pb2.Route(alias="production", weight=100)]
            )
        )
    proxy = CuttableProxy(port_of(address))
    replica = spawn_daemon(
        "--data-dir", str(tmp_path / "replica"), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
        "--follow", proxy.target, env={"TESSERA_REPLICA_KEEPALIVE_S": "2"},
    )  # fmt: skip
    try:
        with grpc.insecure_channel(replica.wait_serving()) as channel:
            eventually(lambda: assert_serving(channel))
            assert_scale(channel, 1.0)
            # The replica's change stream and download channel now lead nowhere, and say nothing:
            # not even that the primary is gone.
            proxy.black_hole()
            primary.kill()
            primary, address = start_primary(spawn_daemon, tmp_path / "primary")
            proxy.target_port = port_of(address)
            with grpc.insecure_channel(address) as to_primary:
                upload(to_primary, "linear", linear_model(3.0), alias="production")
            eventually(lambda: assert_scale(channel, 3.0))
    finally:
        proxy.close()
    replica.terminate()
    # The primary took the pings (gRPC's defaults answer a ping more often than every 5 minutes
    # on a quiet stream with GOAWAY, and each cuts the change stream).
    assert "too_many_pings" not in replica.output()

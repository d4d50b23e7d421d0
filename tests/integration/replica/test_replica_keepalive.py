"""A replica whose connections to its primary go silent (the primary's host gone without a word,
a NAT or load balancer forgetting the connection) finds out by its keepalive pings, connects
again, and catches up with the primary that answers now."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from serving_models import linear_model, upload
from test_replicas import assert_scale, assert_serving, eventually

from tessera.v1 import registry_pb2, registry_pb2_grpc


class SilencingProxy:
    """A TCP proxy to a daemon. `silence()` stops passing bytes on the connections open now
    without closing them, whatever either end does, as a lost peer would; connections opened
    after it go to `upstream`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._generation = 0
        # Every socket stays referenced: one collected would close, and its peer would notice.
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        self._generation += 1

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, self._generation), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
            except OSError:
                data = b""
            if generation != self._generation:
                if not data:
                    return  # silenced: the other end never hears of it
                continue
            if not data:
                source.close()
                sink.close()
                return
            try:
                sink.sendall(data)
            except OSError:
                source.close()
                return


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
    proxy = SilencingProxy(address)
    replica = spawn_daemon(
        "--data-dir", str(tmp_path / "replica"), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
        "--follow", proxy.address, env={"TESSERA_REPLICA_KEEPALIVE_S": "5"},
    )  # fmt: skip
    try:
        with grpc.insecure_channel(replica.wait_serving()) as channel:
            eventually(lambda: assert_serving(channel))
            assert_scale(channel, 1.0)
            # The replica's change stream and download channel now lead nowhere, and say nothing:
            # not even that the primary is gone.
            proxy.silence()
            primary.kill()
            primary, proxy.upstream = start_primary(spawn_daemon, tmp_path / "primary")
            with grpc.insecure_channel(proxy.upstream) as to_primary:
                upload(to_primary, "linear", linear_model(3.0), alias="production")
            eventually(lambda: assert_scale(channel, 3.0))
    finally:
        proxy.close()
    replica.terminate()
    # The primary took the pings (gRPC's defaults answer a ping more often than every 5 minutes
    # on a quiet stream with GOAWAY, and each cuts the change stream).
    assert "too_many_pings" not in replica.output()

"""A primary and two serving replicas (`tesserad serve --follow`), each its own process."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from dns_responder import DNSResponder
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from serving_models import W, linear_model, predict_request, to_array, upload

import tessera
from tessera.cli import EXIT_DAEMON
from tessera.cli import main as cli_main
from tessera.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
)
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc

T = TypeVar("T")
X = np.ones((2, 4), dtype=np.float32)


def eventually(check: Callable[[], T], timeout: float = 120) -> T:
    """check()'s result once it stops raising (the replicas apply changes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def scale_served(channel: grpc.Channel, **target: object) -> float:
    """The scale of the linear version that answered (versions differ by scale)."""
    response = inference_pb2_grpc.InferenceStub(channel).Predict(
        predict_request("linear", X, **target), timeout=30
    )
    return round(float(to_array(response.outputs[0])[0, 0] / (X[0] @ W)[0]), 3)


def serving_status(channel: grpc.Channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        .status
    )


class Cluster:
    def __init__(self, spawn: Callable[..., Any], root: Path) -> None:
        self._spawn = spawn
        self._root = root
        self.primary_port = 0
        self.primary: Any = None
        self.replicas: list[Any] = []
        self.replica_addresses: list[str] = []
        self._channels: list[grpc.Channel] = []

    def start_primary(self) -> str:
        self.primary = self._spawn(
            "--data-dir", str(self._root / "primary"), "--listen", f"127.0.0.1:{self.primary_port}",
            "--metrics-listen", "off",
        )  # fmt: skip
        address = self.primary.wait_serving()
        self.primary_port = int(address.rsplit(":", 1)[1])
        return address

    def start_replica(self, primary: str) -> str:
        """A replica on 127.0.0.1, 127.0.0.2, ... (all of 127/8 is loopback on Linux), each on
        the first one's port: one DNS name then resolves to all of them, as a headless
        Kubernetes Service does to its pods."""
        index = len(self.replicas)
        port = self.replica_addresses[0].rsplit(":", 1)[1] if self.replicas else "0"
        replica = self._spawn(
            "--data-dir", str(self._root / f"replica{index}"), "--listen", f"127.0.0.{index + 1}:{port}",
            "--metrics-listen", "off", "--follow", primary,
        )  # fmt: skip
        self.replicas.append(replica)
        address = replica.wait_serving()
        self.replica_addresses.append(address)
        return address

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture
def cluster(spawn_daemon: Callable[..., Any], tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(spawn_daemon, tmp_path)
    primary = running.start_primary()
    with grpc.insecure_channel(primary) as channel:
        upload(channel, "linear", linear_model(1.0))
        upload(channel, "linear", linear_model(2.0))
        registry = registry_pb2_grpc.RegistryStub(channel)
        registry.SetAlias(registry_pb2.SetAliasRequest(model="linear", alias="production", version=1))
        registry.Deploy(
            registry_pb2.DeployRequest(
                model="linear", routes=[registry_pb2.Route(alias="production", weight=100)]
            )
        )
    for _ in range(2):
        running.start_replica(primary)
    yield running
    running.close()


def test_replicas_serve_what_the_primary_deployed_and_refuse_registry_calls(cluster: Cluster) -> None:
    for address in cluster.replica_addresses:
        channel = cluster.channel(address)
        eventually(lambda channel=channel: assert_serving(channel))
        assert scale_served(channel) == 1.0
        assert scale_served(channel, version=2) == 2.0
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert oip.ModelReady(oip_pb.ModelReadyRequest(name="linear", version="1")).ready
        with pytest.raises(grpc.RpcError) as refused:
            registry_pb2_grpc.RegistryStub(channel).ListModels(registry_pb2.ListModelsRequest())
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"call the primary at 127.0.0.1:{cluster.primary_port}" in refused.value.details()
        # A list the version the deployment routed to refuses (float64): the registry is the
        # primary's, so the SDK reads that version's signature from the replica's loaded list, and
        # sends it again as float32; an array of another dtype gets the cast to make.
        with tessera.Client(address) as client:
            routed = client.inference.predict("linear", {"x": X.tolist()})
            assert routed.version == 1
            np.testing.assert_allclose(routed["y"], X @ W, rtol=1e-6)
            with pytest.raises(
                tessera.InvalidArgument, match=r"version 1 expects float32; .*\.astype\(np\.float32\)"
            ):
                client.inference.predict("linear", {"x": X.astype(np.float64)})
            np.testing.assert_allclose(
                client.inference.predict("linear", {"x": X}, version=2)["y"], (X @ W) * 2, rtol=1e-6
            )
        # Its facts it answers itself, with which change of the primary's registry it routes by.
        system = system_pb2_grpc.SystemStub(channel)
        replication = system.GetServerInfo(system_pb2.GetServerInfoRequest(), timeout=10).replication
        assert replication.role == system_pb2.REPLICATION_ROLE_REPLICA
        assert replication.primary == f"127.0.0.1:{cluster.primary_port}"
        with pytest.raises(grpc.RpcError) as refused:
            next(system.WatchSystem(system_pb2.WatchSystemRequest(max_samples=1), timeout=10))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def assert_serving(channel: grpc.Channel) -> None:
    assert serving_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_an_alias_moved_under_load_fails_no_request_at_either_replica(cluster: Cluster) -> None:
    channels = [cluster.channel(a) for a in cluster.replica_addresses]
    for channel in channels:
        eventually(lambda channel=channel: assert_serving(channel))
    stop = threading.Event()
    failures: list[str] = []
    scales: list[set[float]] = [set(), set()]

    def load(index: int) -> None:
        while not stop.is_set():
            try:
                scales[index].add(scale_served(channels[index]))
            except grpc.RpcError as exc:
                failures.append(f"replica {index}: {exc.code()} {exc.details()}")

    workers = [threading.Thread(target=load, args=(i,)) for i in range(2) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{cluster.primary_port}") as primary:
            registry_pb2_grpc.RegistryStub(primary).SetAlias(
                registry_pb2.SetAliasRequest(model="linear", alias="production", version=2)
            )
        for channel in channels:
            eventually(lambda channel=channel: assert_scale(channel, 2.0))
        # The load's calls may all have started before the switch; stop only once each set has 2.0.
        eventually(lambda: assert_each_saw(scales, 2.0))
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert failures == []
    assert all(2.0 in s for s in scales)


def assert_scale(channel: grpc.Channel, scale: float) -> None:
    assert scale_served(channel) == scale


def assert_each_saw(scales: list[set[float]], scale: float) -> None:
    assert all(scale in s for s in scales)


def test_a_canary_and_a_shadow_deployed_at_the_primary_are_served_at_both_replicas(
    cluster: Cluster,
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{cluster.primary_port}") as primary:
        assert upload(primary, "linear", linear_model(3.0)) == 3
        registry_pb2_grpc.RegistryStub(primary).Deploy(
            registry_pb2.DeployRequest(
                model="linear",
                routes=[registry_pb2.Route(version=1, weight=80), registry_pb2.Route(version=2, weight=20)],
                shadow=registry_pb2.Shadow(version=3, percent=100),
            )
        )
    calls = 500
    for address in cluster.replica_addresses:
        channel = cluster.channel(address)
        inference = inference_pb2_grpc.InferenceStub(channel)
        # A replica loads and warms what the new deployment routes to before it takes it on, and
        # serves the old routes (version 1 alone) meanwhile, SERVING all along; ListLoaded lists
        # the new versions from their loads' start. An answer from version 2 is the new routes'.
        eventually(lambda channel=channel: assert_scale(channel, 2.0))
        served = Counter(scale_served(channel) for _ in range(calls))
        assert set(served) == {1.0, 2.0}, served  # the shadow's answers are never returned
        assert abs(served[2.0] / calls - 0.20) < 0.07, served

        def shadow_compared(inference: Any = inference) -> list[Any]:
            request = inference_pb2.ListShadowResultsRequest(model="linear", limit=5)
            results = inference.ListShadowResults(request).results
            assert len(results) == 5
            return list(results)

        newest = eventually(shadow_compared)[0]
        assert newest.shadow_version == 3 and newest.primary_version in (1, 2)
        assert newest.status.code == 0
        np.testing.assert_allclose(to_array(newest.outputs[0]), X @ W * 3, rtol=1e-6)


def test_replicas_serve_without_the_primary_and_catch_up_when_it_returns(cluster: Cluster) -> None:
    channels = [cluster.channel(a) for a in cluster.replica_addresses]
    for channel in channels:
        eventually(lambda channel=channel: assert_serving(channel))
    cluster.primary.kill()
    for channel in channels:
        assert scale_served(channel) == 1.0
        assert serving_status(channel) == health_pb2.HealthCheckResponse.SERVING

    primary = cluster.start_primary()  # same data directory and port
    with grpc.insecure_channel(primary) as channel:
        upload(channel, "linear", linear_model(3.0), alias="production")
    for channel in channels:
        eventually(lambda channel=channel: assert_scale(channel, 3.0))


@pytest.mark.parametrize("primary_restarts", [False, True], ids=["told", "reconnected"])
def test_a_download_the_primary_answered_data_loss_is_reported_and_retried_once_repaired(
    cluster: Cluster, tmp_path: Path, primary_restarts: bool
) -> None:
    channels = [cluster.channel(a) for a in cluster.replica_addresses]
    for channel in channels:
        eventually(lambda channel=channel: assert_serving(channel))
    primary = f"127.0.0.1:{cluster.primary_port}"
    with grpc.insecure_channel(primary) as channel:
        assert upload(channel, "linear", linear_model(3.0)) == 3
        registry = registry_pb2_grpc.RegistryStub(channel)
        ref = common_pb2.VersionRef(model="linear", version=3)
        sha256 = registry.GetVersion(registry_pb2.GetVersionRequest(ref=ref)).sha256
        # The primary cannot serve version 3's artifact until the blob is back: each replica's
        # download of it fails (DATA_LOSS at the primary) once the deployment moves to it.
        blob = tmp_path / "primary" / "blobs" / "sha256" / sha256[:2] / sha256[2:]
        aside = blob.rename(tmp_path / "blob-aside")
        registry.SetAlias(registry_pb2.SetAliasRequest(model="linear", alias="production", version=3))
    for channel in channels:
        failed = eventually(lambda channel=channel: assert_failed(channel, 3))
        # A cause only a repair at the primary cures: said as such, not as a primary gone away.
        assert "the primary's copy is damaged or missing" in failed.error
        assert "tries again every 5 minutes, when it reconnects to the primary, and on SIGHUP" in failed.error
        assert scale_served(channel) == 1.0  # the deployment is held back on version 1
        with pytest.raises(grpc.RpcError) as refused:
            scale_served(channel, version=3)
        # A failed load stays failed for requests (each would fail as slowly); they say why.
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            f"cannot download version 3 of 'linear' (blob sha256 {sha256[:12]}) from the primary "
            f"{primary}: the primary's copy is damaged or missing (blob {sha256} is missing"
        ) in refused.value.details()
    with grpc.insecure_channel(primary) as channel:
        stats = inference_pb2_grpc.InferenceStub(channel).GetStats(
            inference_pb2.GetStatsRequest(scope=inference_pb2.STATS_SCOPE_CLUSTER), timeout=30
        )
    # An operator looking at the primary sees the downloads it refused, and to which replica.
    assert sorted((r.address, r.rpc, r.code) for r in stats.refused) == [
        (address, "tessera.v1.Registry/DownloadVersion", "DATA_LOSS")
        for address in sorted(cluster.replica_addresses)
    ]
    assert all(f"blob {sha256} is missing" in r.reason for r in stats.refused)
    if primary_restarts:
        cluster.primary.kill()
        aside.rename(blob)
        cluster.start_primary()  # same data directory and port
    else:
        aside.rename(blob)
        for replica in cluster.replicas:
            replica.terminate(signal.SIGHUP)  # the operator says the primary is repaired
    for channel in channels:
        eventually(lambda channel=channel: assert_scale(channel, 3.0))


def assert_failed(channel: grpc.Channel, version: int) -> inference_pb2.LoadedModel:
    request = inference_pb2.ListLoadedRequest(model="linear")
    loaded = inference_pb2_grpc.InferenceStub(channel).ListLoaded(request).models
    failed = [m for m in loaded if m.version == version and m.state == inference_pb2.LOAD_STATE_FAILED]
    assert failed
    return failed[0]


def test_a_damaged_cached_blob_is_found_and_fetched_again(cluster: Cluster, tmp_path: Path) -> None:
    channel = cluster.channel(cluster.replica_addresses[0])
    eventually(lambda: assert_serving(channel))
    blobs = [p for p in (tmp_path / "replica0" / "replica-cache" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 1  # version 1, which the deployment serves
    blobs[0].write_bytes(b"damaged" + blobs[0].read_bytes()[7:])
    # Version 1 is loaded already; unloading it makes the next request load it from the cache again.
    inference = inference_pb2_grpc.InferenceStub(channel)
    inference.UnloadModel(
        inference_pb2.UnloadModelRequest(target=common_pb2.VersionRef(model="linear", version=1))
    )
    assert scale_served(channel, version=1) == 1.0
    replica = cluster.replicas[0]
    replica.wait_for_log("cached blob damaged; fetching it again")


def test_the_sdk_spreads_calls_round_robin_over_both_replicas_named_by_dns(cluster: Cluster) -> None:
    for address in cluster.replica_addresses:
        channel = cluster.channel(address)
        eventually(lambda channel=channel: assert_serving(channel))
    hosts = [address.rsplit(":", 1)[0] for address in cluster.replica_addresses]
    [port] = {address.rsplit(":", 1)[1] for address in cluster.replica_addresses}
    assert hosts == ["127.0.0.1", "127.0.0.2"]

    def served() -> list[int]:
        counts = []
        for address in cluster.replica_addresses:
            with tessera.Client(address) as client:
                counts.append(sum(s.request_count for s in client.inference.stats("linear")))
        return counts

    def shares_since(before: list[int]) -> list[int]:
        return [after - earlier for after, earlier in zip(served(), before, strict=True)]

    with DNSResponder("replicas.tessera.test", hosts) as dns:
        # The form deploy/k8s/README.md documents is dns:///NAME:PORT (the system's name
        # server); naming the DNS server in the authority takes the same resolver path.
        with tessera.Client(f"dns://127.0.0.1:{dns.port}/replicas.tessera.test:{port}") as client:
            # Round robin picks among the connections that are up, and the second may come up
            # many calls after the first (on a loaded machine, 40 all went to one replica).
            warming = served()

            def both_answered() -> None:
                client.inference.predict("linear", {"x": X})
                assert all(share > 0 for share in shares_since(warming))

            eventually(both_answered)
            before = served()
            calls = 40
            for _ in range(calls):
                client.inference.predict("linear", {"x": X})
        assert ("replicas.tessera.test", 1) in dns.queries  # the name was resolved here, A records
    # Both up, round robin alternates: each replica answers every other call.
    shares = shares_since(before)
    assert shares == [calls // 2, calls // 2], shares
    replica = cluster.replicas[0]
    replica.terminate()
    assert "tesserad stopped" in replica.output()
    assert replica.process.returncode == 0


def test_the_primarys_cluster_statistics_merge_its_replicas_histograms(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = {}
    for index, address in enumerate(cluster.replica_addresses):
        channel = cluster.channel(address)
        eventually(lambda channel=channel: assert_serving(channel))
        for _ in range(3 + index):
            scale_served(channel)
        counts[address] = 3 + index
    primary = cluster.channel(f"127.0.0.1:{cluster.primary_port}")
    scale_served(primary)  # the primary serves too: 1 request there
    request = inference_pb2.GetStatsRequest(
        target=common_pb2.VersionRef(model="linear"), scope=inference_pb2.STATS_SCOPE_CLUSTER, histograms=True
    )
    response = inference_pb2_grpc.InferenceStub(primary).GetStats(request)
    assert sorted(response.replicas) == sorted(cluster.replica_addresses)
    assert list(response.unreachable_replicas) == []
    [merged] = response.stats
    assert (merged.model, merged.version) == ("linear", 1)
    assert merged.request_count == merged.total.count == 1 + sum(counts.values())
    assert sum(merged.total.histogram.counts.values()) == merged.total.count
    assert 0 < merged.total.p50_us <= merged.total.max_us
    # Each daemon's own figures stay its own; a replica has no cluster scope.
    local = inference_pb2_grpc.InferenceStub(primary).GetStats(
        inference_pb2.GetStatsRequest(target=request.target)
    )
    assert [s.request_count for s in local.stats] == [1]
    replica = inference_pb2_grpc.InferenceStub(cluster.channel(cluster.replica_addresses[0]))
    with pytest.raises(grpc.RpcError) as refused:
        replica.GetStats(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ask its primary" in refused.value.details()

    # The same from the SDK and the CLI.
    with tessera.Client(f"127.0.0.1:{cluster.primary_port}") as client:
        sdk = client.inference.cluster_stats("linear")
    assert sorted(sdk.replicas) == sorted(cluster.replica_addresses)
    assert [s.request_count for s in sdk.stats] == [merged.request_count]
    screen = io.StringIO()
    console = Console(file=screen, width=200, force_terminal=False, color_system=None)
    target = f"127.0.0.1:{cluster.primary_port}"
    assert cli_main(["--target", target, "stats", "linear", "--cluster"], console=console) == 0
    shown = screen.getvalue()
    assert f"linear v1: {merged.request_count} requests" in shown
    assert f"merged: this daemon and 2 replicas ({', '.join(sorted(cluster.replica_addresses))})" in shown
    capsys.readouterr()
    assert (
        cli_main(["--target", cluster.replica_addresses[0], "stats", "--cluster"], console=console)
        == EXIT_DAEMON
    )
    assert capsys.readouterr().err.startswith(
        "tessera: FAILED_PRECONDITION: this tesserad is a serving replica; ask its primary"
    )


def test_a_version_the_primary_cannot_send_fails_saying_what_and_why(cluster: Cluster) -> None:
    channel = cluster.channel(cluster.replica_addresses[0])
    eventually(lambda: assert_serving(channel))
    with grpc.insecure_channel(f"127.0.0.1:{cluster.primary_port}") as primary:
        sha256 = (
            registry_pb2_grpc.RegistryStub(primary)
            .GetVersion(registry_pb2.GetVersionRequest(ref=common_pb2.VersionRef(model="linear", version=2)))
            .sha256
        )
    cluster.primary.kill()
    where = f"from the primary 127.0.0.1:{cluster.primary_port}: "
    # A connection open when the primary died is cut; a new one is refused.
    causes = ("the connection was cut", "nothing listens there (connection refused)")
    # Version 2 is latest, so the feed told the replica about it; its artifact was never needed.
    with pytest.raises(grpc.RpcError) as failed:
        scale_served(channel, version=2)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    details = failed.value.details()
    what = f"cannot download version 2 of 'linear' (blob sha256 {sha256[:12]}) {where}"
    assert details.startswith(what)
    assert details.removeprefix(what).split(";")[0] in causes
    assert "fetches the rest when the primary is back" in details
    assert "ipv4:" not in details and "backends" not in details  # gRPC's own words stay in the log
    # Version 7 is in no change: its record is asked for first.
    with pytest.raises(grpc.RpcError) as failed:
        scale_served(channel, version=7)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    what = f"cannot look up version 7 of 'linear' {where}"
    assert failed.value.details().startswith(what)
    assert failed.value.details().removeprefix(what).split(";")[0] in causes
    assert scale_served(channel) == 1.0  # what it holds is still served


def test_a_replica_says_what_the_primary_s_deployment_warns_of(cluster: Cluster) -> None:
    primary = cluster.channel(f"127.0.0.1:{cluster.primary_port}")
    registry = registry_pb2_grpc.RegistryStub(primary)
    registry.SetAlias(registry_pb2.SetAliasRequest(model="linear", alias="canary", version=2))
    routes = [
        registry_pb2.Route(alias="production", weight=90),
        registry_pb2.Route(alias="canary", weight=10),
    ]
    registry.Deploy(registry_pb2.DeployRequest(model="linear", routes=routes))
    # A promotion moves the canary's alias onto the version production serves.
    registry.SetAlias(registry_pb2.SetAliasRequest(model="linear", alias="canary", version=1))
    warnings = list(registry.GetDeployment(registry_pb2.GetDeploymentRequest(model="linear")).warnings)
    assert warnings

    said = cluster.replicas[0].wait_for_log("the primary's deployment of a model warns of what it routes to")
    assert (said["model"], said["warnings"]) == ("linear", warnings)

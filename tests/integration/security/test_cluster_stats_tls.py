"""A TLS primary asks its replicas for cluster statistics over TLS (replica.tls_* settings: the CA
that signed their certificates, and the client certificate when they ask for one), checking
each replica's certificate against the address it announced; a replica that answers only in
plaintext gets no call, and so no token, unless it said so and is on this host's loopback."""

from __future__ import annotations

import socket
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tessera.v1 import inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.security import Role
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, Tokens, bearer
from tests.integration.security.test_tls import tls_settings

CLUSTER = inference_pb2.GetStatsRequest(scope=inference_pb2.STATS_SCOPE_CLUSTER)


def replica_tls(pki: Pki, mutual: bool) -> dict[str, str]:
    """The replica.tls_* settings a primary and its replicas share."""
    settings = {"replica.tls_ca_file": str(pki.ca)}
    if mutual:
        settings["replica.tls_cert_file"] = str(pki.client_cert)
        settings["replica.tls_key_file"] = str(pki.client_key)
    return settings


@pytest.mark.parametrize("mutual", [False, True], ids=["tokens", "mutual-tls"])
def test_a_tls_primary_reaches_its_tls_replicas_for_cluster_statistics(
    start_daemon, pki, tokens: Tokens, tmp_path: Path, mutual: bool
):
    # With tokens the replica admits the primary by the token it follows with; with mutual TLS,
    # by the client certificate of replica.tls_cert_file.
    security = tls_settings(pki, mutual=mutual)
    if not mutual:
        security["security.tokens_file"] = str(tokens.file)
    primary = start_daemon(**security, **replica_tls(pki, mutual))
    follow = {"replica.primary": f"localhost:{primary.daemon.port}", **replica_tls(pki, mutual)}
    if not mutual:
        token_file = tmp_path / "replica-token"
        token_file.write_text(tokens.token[Role.READER] + "\n")
        follow["replica.token_file"] = str(token_file)
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **security, **follow)).start()
    metadata = None if mutual else bearer(tokens.token[Role.READER])
    try:
        with grpc.secure_channel(
            f"localhost:{primary.daemon.port}", pki.channel_credentials("client" if mutual else None)
        ) as channel:
            stats = inference_pb2_grpc.InferenceStub(channel)
            deadline = time.monotonic() + 60
            while not (response := stats.GetStats(CLUSTER, metadata=metadata, timeout=30)).replicas:
                assert not response.unreachable_replicas, "the primary could not reach its replica"
                assert time.monotonic() < deadline, "the replica never announced itself"
                time.sleep(0.05)
        assert list(response.replicas) == [replica.target]
        assert not response.unreachable_replicas
    finally:
        replica.stop()


class _PlaintextReplica(inference_pb2_grpc.InferenceServicer):
    """An announced address that answers in plaintext: it keeps each authorization it gets."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def GetStats(self, request, context):
        self.authorizations += [v for k, v in context.invocation_metadata() if k == "authorization"]
        return inference_pb2.GetStatsResponse()


@pytest.mark.parametrize("configured", ["primary serves TLS", "replica.tls_ca_file"])
def test_no_token_goes_in_plaintext_to_a_replica_when_tls_is_configured(
    start_daemon, pki, tokens: Tokens, configured: str
):
    recorder = _PlaintextReplica()
    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServicer_to_server(recorder, fake)
    address = f"127.0.0.1:{fake.add_insecure_port('127.0.0.1:0')}"
    fake.start()
    settings = {"security.tokens_file": str(tokens.file)}
    if configured == "primary serves TLS":
        settings.update(tls_settings(pki))
    else:
        settings["replica.tls_ca_file"] = str(pki.ca)
    primary = start_daemon(**settings)
    reader = bearer(tokens.token[Role.READER])
    channel = (
        grpc.secure_channel(f"localhost:{primary.daemon.port}", pki.channel_credentials())
        if configured == "primary serves TLS"
        else grpc.insecure_channel(primary.target)
    )
    try:
        announced = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
            registry_pb2.WatchChangesRequest(replica_address=address), metadata=reader, timeout=60
        )
        next(announced)  # caught up: the address is announced
        response = inference_pb2_grpc.InferenceStub(channel).GetStats(CLUSTER, metadata=reader, timeout=30)
        assert list(response.unreachable_replicas) == [address] and not response.replicas
        # It did not say how it serves (as replicas before the field did not): TLS, as configured.
        assert response.unreachable[0].reason.startswith("the TLS handshake failed")
        assert recorder.authorizations == []
        announced.cancel()
    finally:
        channel.close()
        fake.stop(None)


def test_a_tls_primary_asks_a_plaintext_replica_on_loopback_in_plaintext(
    start_daemon, pki, tokens: Tokens, tmp_path: Path
):
    # The primary serves TLS to its clients; a replica on the same host follows it over TLS but
    # serves plaintext on 127.0.0.1 (a sidecar, a test box): it says so when it follows, and the
    # primary asks it in plaintext, since nothing leaves the host.
    primary = start_daemon(**tls_settings(pki), **{"security.tokens_file": str(tokens.file)})
    token_file = tmp_path / "replica-token"
    token_file.write_text(tokens.token[Role.READER] + "\n")
    follow = {
        "replica.primary": f"localhost:{primary.daemon.port}",
        "replica.tls_ca_file": str(pki.ca),
        "replica.token_file": str(token_file),
        "security.tokens_file": str(tokens.file),
    }
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **follow)).start()
    try:
        with grpc.secure_channel(f"localhost:{primary.daemon.port}", pki.channel_credentials()) as channel:
            response = cluster_stats_once_announced(channel, bearer(tokens.token[Role.READER]))
        assert list(response.replicas) == [replica.target]
        assert not response.unreachable_replicas and not response.unreachable
    finally:
        replica.stop()


def cluster_stats_once_announced(channel: grpc.Channel, metadata) -> inference_pb2.GetStatsResponse:
    """The primary's cluster statistics once a replica is announced (reached or not)."""
    stats = inference_pb2_grpc.InferenceStub(channel)
    deadline = time.monotonic() + 60
    while True:
        response = stats.GetStats(CLUSTER, metadata=metadata, timeout=30)
        if response.replicas or response.unreachable_replicas:
            return response
        assert time.monotonic() < deadline, "the replica never announced itself"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("announced", "transport", "reason"),
    [
        # Off this host a token goes only over TLS: no call is made at all.
        (
            "192.0.2.1:50051",
            registry_pb2.REPLICA_TRANSPORT_PLAINTEXT,
            "not asked: it serves plaintext at an address off this host, and this primary sends "
            "tokens off the host only over TLS; serve TLS on the replica (security.tls_cert_file) "
            "or announce a loopback address (replica.advertise)",
        ),
        ("fake", registry_pb2.REPLICA_TRANSPORT_TLS, "the TLS handshake failed"),
        ("closed", registry_pb2.REPLICA_TRANSPORT_PLAINTEXT, "nothing listens there (connection refused)"),
    ],
    ids=["plaintext-off-loopback", "tls-to-plaintext", "refused"],
)
def test_an_unreachable_replica_is_listed_with_the_reason(
    start_daemon, pki, tokens: Tokens, announced: str, transport: int, reason: str
):
    recorder = _PlaintextReplica()
    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServicer_to_server(recorder, fake)
    fake_address = f"127.0.0.1:{fake.add_insecure_port('127.0.0.1:0')}"
    fake.start()
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed_address = f"127.0.0.1:{unused.getsockname()[1]}"
    address = {"fake": fake_address, "closed": closed_address}.get(announced, announced)
    primary = start_daemon(**tls_settings(pki), **{"security.tokens_file": str(tokens.file)})
    reader = bearer(tokens.token[Role.READER])
    channel = grpc.secure_channel(f"localhost:{primary.daemon.port}", pki.channel_credentials())
    try:
        announcing = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
            registry_pb2.WatchChangesRequest(replica_address=address, replica_transport=transport),
            metadata=reader,
            timeout=60,
        )
        next(announcing)  # caught up: the address is announced
        response = inference_pb2_grpc.InferenceStub(channel).GetStats(CLUSTER, metadata=reader, timeout=30)
        assert list(response.unreachable_replicas) == [address] and not response.replicas
        (unreachable,) = response.unreachable
        assert unreachable.address == address
        assert unreachable.reason.startswith(reason), unreachable.reason
        assert recorder.authorizations == []
        announcing.cancel()
    finally:
        channel.close()
        fake.stop(None)

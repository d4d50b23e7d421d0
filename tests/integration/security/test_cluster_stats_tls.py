"""A TLS primary asks its replicas for cluster statistics over TLS (replica.tls_* settings: the CA
that signed their certificates, and the client certificate when they ask for one), checking
each replica's certificate against the address it announced; a replica that answers only in
plaintext gets no call, and so no token."""

from __future__ import annotations

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
        assert recorder.authorizations == []
        announced.cancel()
    finally:
        channel.close()
        fake.stop(None)

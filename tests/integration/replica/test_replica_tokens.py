"""A replica of a primary that requires tokens: it follows with its own token (replica.token_file)
and admits its callers by the primary's tokens file; the primary presents each replica's own token
back to it when it gathers cluster statistics."""

from __future__ import annotations

import datetime
import logging
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import linear_model, predict_request, upload

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.api.health import LIVENESS_SERVICE
from tesserad.oip import grpc_service_pb2, grpc_service_pb2_grpc
from tesserad.replica.refusals import REPLICA_HEADER
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def wait_for(status: int, channel: grpc.Channel, timeout: float = 120) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status != status:
        assert time.monotonic() < deadline, "the replica's health never changed"
        time.sleep(0.1)


@pytest.fixture
def tokens(tmp_path: Path) -> dict[Role, str]:
    clear = {role: new_token() for role in Role}
    (tmp_path / "tokens.toml").write_text(
        "".join(format_entry(f"{role.label}-holder", role, hash_token(t)) for role, t in clear.items())
    )
    (tmp_path / "replica-token").write_text(clear[Role.READER] + "\n")
    return clear


def test_a_replica_follows_with_its_token_and_serves_token_holders(
    tmp_path: Path, tokens: dict[Role, str]
) -> None:
    tokens_file = str(tmp_path / "tokens.toml")
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": tokens_file})
    ).start()
    replica = None
    try:
        admin = grpc.intercept_channel(primary.channel(), _Bearer(tokens[Role.ADMIN]))
        upload(admin, "linear", linear_model(1.0))
        replica = InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{
                    "security.tokens_file": tokens_file,
                    "replica.primary": primary.target,
                    "replica.token_file": str(tmp_path / "replica-token"),
                },
            )
        ).start()
        channel = replica.channel()
        wait_for(health_pb2.HealthCheckResponse.SERVING, channel)
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert oip.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=10).ready
        inference = inference_pb2_grpc.InferenceStub(channel)
        x = np.ones((1, 4), dtype=np.float32)
        with pytest.raises(grpc.RpcError) as refused:
            inference.Predict(predict_request("linear", x))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        inference.Predict(predict_request("linear", x), metadata=bearer(tokens[Role.READER]))

        stats = inference_pb2_grpc.InferenceStub(primary.channel()).GetStats(
            inference_pb2.GetStatsRequest(
                target=common_pb2.VersionRef(model="linear"), scope=inference_pb2.STATS_SCOPE_CLUSTER
            ),
            metadata=bearer(tokens[Role.READER]),
        )
        assert list(stats.replicas) == [replica.target]
        assert [s.request_count for s in stats.stats] == [1]
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_a_replica_without_a_token_is_never_ready(tmp_path: Path, tokens: dict[Role, str]) -> None:
    tokens_file = str(tmp_path / "tokens.toml")
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": tokens_file})
    ).start()
    replica = None
    try:
        replica = InProcessDaemon(
            daemon_settings(tmp_path / "replica", **{"replica.primary": primary.target})
        ).start()
        channel = replica.channel()
        # It keeps trying (and logging why); it reports NOT_SERVING all along.
        for _ in range(10):
            assert (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            time.sleep(0.1)
        # The primary's answer lasts until a token is given: a caller is told so, not that the
        # primary has no such model.
        refused = refusal_of_predict(channel)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.details().startswith(
            f"cannot follow the registry's changes from the primary {primary.target}: the primary "
            "refused this replica's token (replica.token_file): "
        )
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_a_refused_replica_takes_a_new_token_on_sighup(
    tmp_path: Path, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    tokens_file = str(tmp_path / "tokens.toml")
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": tokens_file})
    ).start()
    replica = None
    token_file = tmp_path / "replica-token"
    token_file.write_text(new_token() + "\n")  # one the primary does not know
    try:
        admin = grpc.intercept_channel(primary.channel(), _Bearer(tokens[Role.ADMIN]))
        upload(admin, "linear", linear_model(1.0))
        replica = InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{"replica.primary": primary.target, "replica.token_file": str(token_file)},
            )
        ).start()
        channel = replica.channel()
        refused = refusal_of_predict(channel)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "the primary refused this replica's token (replica.token_file)" in refused.details()
        # The operator fixes the token and says so: no restart, no wait for the next try.
        token_file.write_text(tokens[Role.READER] + "\n")
        caplog.set_level(logging.INFO, logger="tesserad.server")
        replica.run(replica.daemon.reload())
        # One line says what SIGHUP read again, the replica's token among it, and what it did.
        said = [r for r in caplog.records if r.name == "tesserad.server" and "SIGHUP" in r.getMessage()]
        assert [r.getMessage() for r in said] == [
            "SIGHUP read replica.token_file again and tries the primary again now, with every load "
            "that failed there; every other setting (the --config file, TESSERA_* variables, flags) "
            "is read at start: restart tesserad to change one"
        ]
        assert said[0].read_again == ["replica.token_file"]
        wait_for(health_pb2.HealthCheckResponse.SERVING, channel)
        inference_pb2_grpc.InferenceStub(channel).Predict(
            predict_request("linear", np.ones((1, 4), dtype=np.float32)), timeout=30
        )
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_the_primary_lists_a_replica_it_refused_until_it_follows(
    tmp_path: Path, tokens: dict[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Refused its watch, the replica never follows: the primary's cluster statistics are where an
    # operator looking at the primary learns of it, without the token it presented.
    lapsed = new_token()
    expired = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    with (tmp_path / "tokens.toml").open("a") as file:
        file.write(format_entry("lapsed-replica", Role.READER, hash_token(lapsed), expires=expired))
    tokens_file = str(tmp_path / "tokens.toml")
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": tokens_file})
    ).start()
    replica = None
    token_file = tmp_path / "replica-token"
    token_file.write_text(lapsed + "\n")
    try:
        replica = InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{"replica.primary": primary.target, "replica.token_file": str(token_file)},
            )
        ).start()
        channel = replica.channel()
        assert refusal_of_predict(channel).code() == grpc.StatusCode.FAILED_PRECONDITION
        stats = cluster_stats(primary.channel(), tokens[Role.READER])
        assert not stats.replicas and not stats.unreachable
        (refused,) = stats.refused
        assert (refused.address, refused.rpc, refused.code) == (
            replica.target,
            "tessera.v1.Registry/WatchChanges",
            "UNAUTHENTICATED",
        )
        assert refused.peer.startswith("ipv4:127.0.0.1:") and refused.time.seconds > 0
        assert refused.reason.startswith("the token 'lapsed-replica' expired at 2026-01-01")
        assert lapsed.encode() not in stats.SerializeToString()
        # The primary's log says so too, naming the token and the replica, never the token itself.
        said = [r for r in caplog.records if r.name == "tesserad.audit" and r.getMessage() == "call refused"]
        assert said and said[0].levelno == logging.WARNING
        assert (said[0].__dict__["reason"], said[0].__dict__["caller"], said[0].__dict__["replica"]) == (
            "expired token",
            "lapsed-replica",
            replica.target,
        )
        assert lapsed not in caplog.text
        # Given a token the primary knows, it follows, and is listed as following only.
        token_file.write_text(tokens[Role.READER] + "\n")
        replica.run(replica.daemon.reload())
        wait_for(health_pb2.HealthCheckResponse.SERVING, channel)
        stats = cluster_stats(primary.channel(), tokens[Role.READER])
        assert list(stats.replicas) == [replica.target] and not stats.refused
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_the_primary_lists_no_refusal_of_a_caller_it_does_not_know(
    tmp_path: Path, tokens: dict[Role, str]
) -> None:
    # Without a token, or with one the tokens file lacks, a caller could be anyone: one that
    # says it is a replica at an address made up its entries, and pushed real ones out.
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": str(tmp_path / "tokens.toml")})
    ).start()
    try:
        registry = registry_pb2_grpc.RegistryStub(primary.channel())
        watch = registry_pb2.WatchChangesRequest(from_seq=-1)
        for i, presented in enumerate([[], bearer(new_token())]):
            with pytest.raises(grpc.RpcError) as refused:
                list(registry.WatchChanges(watch, metadata=[*presented, (REPLICA_HEADER, f"made-up:{i}")]))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not cluster_stats(primary.channel(), tokens[Role.READER]).refused
        # A caller with a token of the file could be a replica: its refusal is listed.
        with pytest.raises(grpc.RpcError) as refused:
            list(
                registry.WatchChanges(
                    watch, metadata=[*bearer(tokens[Role.READER]), (REPLICA_HEADER, "reader-host:1")]
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = cluster_stats(primary.channel(), tokens[Role.READER]).refused
        assert [(r.address, r.code) for r in listed] == [("reader-host:1", "INVALID_ARGUMENT")]
    finally:
        primary.stop()


def cluster_stats(channel: grpc.Channel, token: str) -> inference_pb2.GetStatsResponse:
    return inference_pb2_grpc.InferenceStub(channel).GetStats(
        inference_pb2.GetStatsRequest(scope=inference_pb2.STATS_SCOPE_CLUSTER),
        metadata=bearer(token),
        timeout=30,
    )


def refusal_of_predict(channel: grpc.Channel, timeout: float = 60) -> grpc.RpcError:
    """A Predict's error once the replica has heard from its primary (NOT_FOUND before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            inference_pb2_grpc.InferenceStub(channel).Predict(
                predict_request("linear", np.ones((1, 4), dtype=np.float32)), timeout=10
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                return exc
        else:
            raise AssertionError("a replica refused by its primary served a prediction")
        time.sleep(0.1)


def test_a_replica_not_caught_up_is_not_ready_over_the_open_inference_protocol(
    tmp_path: Path, tokens: dict[Role, str]
) -> None:
    """Triton's clients and KServe's probes ask ServerReady (gRPC) or /v2/health/ready (HTTP):
    they must see what gRPC health says, or a new replica takes traffic it cannot answer."""
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": str(tmp_path / "tokens.toml")})
    ).start()
    replica = None
    try:
        replica = InProcessDaemon(
            daemon_settings(
                tmp_path / "replica",
                **{"replica.primary": primary.target, "serving.oip_http_listen": "127.0.0.1:0"},
            )
        ).start()
        channel = replica.channel()
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        base = f"http://127.0.0.1:{replica.daemon.oip_http_port}"
        assert (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert not oip.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=10).ready
        assert oip.ServerLive(grpc_service_pb2.ServerLiveRequest(), timeout=10).live
        # The probes' liveness name stays SERVING while the whole server is not ready, and needs
        # no token (health_open) though the replica admits its callers by the primary's tokens.
        assert (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE), timeout=10)
            .status
            == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10)
        # The protocol's answer (Triton's too): 4xx is false, with no body.
        assert not_ready.value.code == 400 and not_ready.value.read() == b""
        with urllib.request.urlopen(f"{base}/v2/health/live", timeout=10) as live:
            assert live.status == 200
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


class _RecordingReplica(inference_pb2_grpc.InferenceServicer):
    """An address anyone could announce: it keeps the authorization of each call it gets."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def GetStats(self, request, context):
        self.authorizations += [v for k, v in context.invocation_metadata() if k == "authorization"]
        return inference_pb2.GetStatsResponse()


def test_cluster_statistics_never_send_the_callers_token_to_an_announced_address(
    tmp_path: Path, tokens: dict[Role, str]
) -> None:
    # A reader may announce any address as a replica's; an admin's token sent there would
    # hand the reader the admin role. The primary presents each replica its own token back.
    recorder = _RecordingReplica()
    pool = futures.ThreadPoolExecutor(max_workers=2)
    fake = grpc.server(pool)
    inference_pb2_grpc.add_InferenceServicer_to_server(recorder, fake)
    address = f"127.0.0.1:{fake.add_insecure_port('127.0.0.1:0')}"
    fake.start()
    primary = InProcessDaemon(
        daemon_settings(tmp_path / "primary", **{"security.tokens_file": str(tmp_path / "tokens.toml")})
    ).start()
    try:
        channel = primary.channel()
        announced = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
            registry_pb2.WatchChangesRequest(replica_address=address),
            metadata=bearer(tokens[Role.READER]),
            timeout=60,
        )
        next(announced)  # caught up: the address is announced
        stats = inference_pb2_grpc.InferenceStub(channel).GetStats(
            inference_pb2.GetStatsRequest(scope=inference_pb2.STATS_SCOPE_CLUSTER),
            metadata=bearer(tokens[Role.ADMIN]),
            timeout=30,
        )
        assert list(stats.replicas) == [address]
        assert recorder.authorizations == [f"Bearer {tokens[Role.READER]}"]
        announced.cancel()
    finally:
        # The fake's threads are the test's own: ended first, the primary's stop checks its own.
        fake.stop(None)
        pool.shutdown()
        primary.stop()


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _with_token(self, details):
        return details._replace(metadata=[*(details.metadata or []), *self._metadata])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

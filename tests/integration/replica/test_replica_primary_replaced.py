"""A primary started again on another registry at the address a replica follows (restored from an
older backup, or on an empty data directory): the replica follows it from the start and ends
with exactly its models, aliases and deployments; what the primary no longer has is not served.
A registry restored from a backup is another store though its change numbers have reached the
replica's: the replica tells it by the store's incarnation."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import grpc
import pytest
from serving_models import W, linear_model, predict_request, to_array, upload
from test_replicas import X, assert_serving, eventually

from tessera.cli import main as tessera_main
from tessera.v1 import inference_pb2_grpc, registry_pb2_grpc
from tessera.v1 import registry_pb2 as pb
from tesserad.api import follow
from tesserad.cli import main as tesserad_main
from tesserad.oip import grpc_service_pb2 as oip_pb
from tesserad.oip import grpc_service_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _newest_change(channel: grpc.Channel) -> int:
    stream = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
        pb.WatchChangesRequest(from_seq=0), timeout=60
    )
    for response in stream:
        if response.HasField("caught_up"):
            stream.cancel()
            return response.caught_up.seq
    raise AssertionError("the watch ended before it caught up")


def scale_served(channel: grpc.Channel, model: str = "linear", **target: object) -> float:
    """The scale of the linear version of `model` that answered (versions differ by scale)."""
    response = inference_pb2_grpc.InferenceStub(channel).Predict(
        predict_request(model, X, **target), timeout=30
    )
    return round(float(to_array(response.outputs[0])[0, 0] / (X[0] @ W)[0]), 3)


def answer(channel: grpc.Channel, model: str = "linear", **target: object) -> grpc.StatusCode:
    """The status a prediction of `model` got."""
    try:
        scale_served(channel, model, **target)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def assert_scale(channel: grpc.Channel, scale: float) -> None:
    assert scale_served(channel) == scale


def test_a_replica_of_a_primary_started_on_another_registry_serves_only_what_that_one_has(
    tmp_path: Path,
) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    # The older registry, made first (a backup of the primary from before its last changes).
    older = InProcessDaemon(daemon_settings(tmp_path / "older")).start()
    try:
        assert upload(older.channel(), "linear", linear_model(3.0)) == 1
        assert _newest_change(older.channel()) == 1
    finally:
        older.stop()

    primary = InProcessDaemon(daemon_settings(tmp_path / "primary", listen=listen)).start()
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **{"replica.primary": listen}))
    try:
        registry = registry_pb2_grpc.RegistryStub(primary.channel())
        upload(primary.channel(), "linear", linear_model(1.0))
        upload(primary.channel(), "linear", linear_model(2.0))
        registry.SetAlias(pb.SetAliasRequest(model="linear", alias="production", version=2))
        upload(primary.channel(), "other", linear_model(5.0))
        registry.Deploy(pb.DeployRequest(model="other", routes=[pb.Route(version=1, weight=100)]))
        assert _newest_change(primary.channel()) >= 3  # past the older registry's newest + 1
        replica.start()
        channel = replica.channel()
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        eventually(lambda: assert_serving(channel))
        assert scale_served(channel) == 2.0
        assert scale_served(channel, "other") == 5.0
        assert oip.ModelReady(oip_pb.ModelReadyRequest(name="other")).ready

        primary.stop()
        primary = InProcessDaemon(daemon_settings(tmp_path / "older", listen=listen)).start()

        def follows_the_older_registry() -> None:
            assert scale_served(channel) == 3.0
            assert answer(channel, version=2) == grpc.StatusCode.NOT_FOUND
            assert answer(channel, alias="production") == grpc.StatusCode.NOT_FOUND
            assert answer(channel, "other") == grpc.StatusCode.NOT_FOUND
            assert not oip.ModelReady(oip_pb.ModelReadyRequest(name="other")).ready

        eventually(follows_the_older_registry)

        primary.stop()
        primary = InProcessDaemon(daemon_settings(tmp_path / "empty", listen=listen)).start()

        def follows_the_empty_registry() -> None:
            assert answer(channel) == grpc.StatusCode.NOT_FOUND
            assert not oip.ModelReady(oip_pb.ModelReadyRequest(name="linear")).ready

        eventually(follows_the_empty_registry)
        # What the primary registers now is served as on any replica.
        upload(primary.channel(), "linear", linear_model(4.0))
        eventually(lambda: assert_scale(channel, 4.0))
    finally:
        replica.stop()
        primary.stop()


def test_a_primary_restored_from_a_backup_past_the_replicas_change_is_followed_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=follow.__name__)
    listen = f"127.0.0.1:{_free_port()}"
    archive = tmp_path / "backup.tar"
    primary = InProcessDaemon(daemon_settings(tmp_path / "primary", listen=listen)).start()
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **{"replica.primary": listen}))
    try:
        upload(primary.channel(), "linear", linear_model(1.0))
        code = tessera_main(["--target", primary.target, "--json", "admin", "backup", "-o", str(archive)])
        assert code == 0
        upload(primary.channel(), "linear", linear_model(2.0))
        upload(primary.channel(), "gone", linear_model(5.0))
        registry_pb2_grpc.RegistryStub(primary.channel()).Deploy(
            pb.DeployRequest(model="gone", routes=[pb.Route(version=1, weight=100)])
        )
        replica.start()
        channel = replica.channel()
        oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        eventually(lambda: assert_serving(channel))
        assert scale_served(channel) == 2.0
        assert scale_served(channel, "gone") == 5.0
        held = _newest_change(primary.channel())
        primary.stop()

        # The backup restored, then changed past the replica's change while the replica cannot
        # reach it: its change numbers alone would take it for the registry the replica followed.
        assert tesserad_main(["restore", str(archive), "--data-dir", str(tmp_path / "restored")]) == 0
        restored = InProcessDaemon(daemon_settings(tmp_path / "restored")).start()
        try:
            scale = 7.0
            upload(restored.channel(), "fresh", linear_model(scale))
            while _newest_change(restored.channel()) <= held:
                scale += 1.0
                upload(restored.channel(), "fresh", linear_model(scale))
        finally:
            restored.stop()
        primary = InProcessDaemon(daemon_settings(tmp_path / "restored", listen=listen)).start()

        def follows_the_restored_registry() -> None:
            assert scale_served(channel) == 1.0
            assert answer(channel, version=2) == grpc.StatusCode.NOT_FOUND
            assert answer(channel, "gone") == grpc.StatusCode.NOT_FOUND
            assert not oip.ModelReady(oip_pb.ModelReadyRequest(name="gone")).ready
            assert scale_served(channel, "fresh") == scale

        eventually(follows_the_restored_registry)
        replaced = [
            r.getMessage()
            for r in caplog.records
            if r.name == follow.__name__ and "registry was replaced" in r.getMessage()
        ]
        assert replaced == [
            "the primary's registry was replaced (another store: a backup restored, another data "
            "directory); following it from the start"
        ]
        upload(primary.channel(), "linear", linear_model(4.0))
        eventually(lambda: assert_scale(channel, 4.0))
    finally:
        replica.stop()
        primary.stop()
